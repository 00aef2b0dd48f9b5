"""``python -m csms.bench``: the whole benchmark suite (see csms.bench.suite)."""

from csms.bench.suite import main

raise SystemExit(main())
