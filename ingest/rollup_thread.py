"""The roll-up loop on an event loop of its own, in a thread of its own, with a pool of its own.

Why: a refresh after each quarter hour reads that quarter hour's rows of every port (status,
transactions, register readings) and recomputes its buckets in Python (``ingest.rollup_rows``).
On the event loop that serves the chargers (``csms serve`` on the in-process bus, ``csms run``)
that held every charger's answer until it was done: in the throughput benchmark a refresh after
a quarter hour made 40 of 50 chargers wait more than 6 s for a MeterValues answer (issue 15
note, 2026-12-08). In its own thread the refresh still takes CPU, but the GIL goes back to the
chargers' loop at every I/O wait and at least every ``sys.getswitchinterval()`` (5 ms), or when
asyncpg has decoded a result: the caller's largest loop lag during a refresh of 1.3 million
samples' quarter hour was 302-320 ms on the loop, 31-33 ms from this thread (same data, two
runs each). One refresher runs at a time across all processes anyway (the roll-up's advisory
lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

import asyncpg
from prometheus_client import Counter

from ingest.rollup import rollup_loop

logger = logging.getLogger(__name__)

ROLLUP_POOL_MAX = 2   # the refresh and its read-ahead (ingest/rollup.py _Prefetch)


class RollupThread:
    """``rollup_loop`` every ``interval_s`` in a thread, until :meth:`close`."""

    def __init__(self, *, database_url: str, interval_s: float, connect_timeout_s: float,
                 port_failures: Counter | None = None) -> None:
        self._database_url = database_url
        self._interval_s = interval_s
        self._connect_timeout_s = connect_timeout_s
        self._port_failures = port_failures
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._done: asyncio.Future[None] | None = None

    def start(self) -> None:
        caller = asyncio.get_running_loop()
        done: asyncio.Future[None] = caller.create_future()
        self._done = done

        def finish() -> None:
            if not done.done():
                done.set_result(None)

        def run() -> None:
            try:
                asyncio.run(self._main())
            except Exception:  # rollup_loop keeps its own errors: this is a bug, logged
                logger.exception("roll-up thread ended unexpectedly")
            finally:
                with contextlib.suppress(RuntimeError):   # the caller's loop has ended: nobody waits
                    caller.call_soon_threadsafe(finish)

        # A daemon: a process that ends without close() (a crash) is not kept alive by its roll-up.
        self._thread = threading.Thread(target=run, name="ingest-rollup", daemon=True)
        self._thread.start()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self._stopping.is_set():   # close() ran before this loop existed
            return
        pool = None
        while pool is None and not self._stop.is_set():
            try:
                pool = await asyncpg.create_pool(self._database_url, min_size=1, max_size=ROLLUP_POOL_MAX,
                                                 timeout=self._connect_timeout_s)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                logger.warning("roll-up could not connect, will retry: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self._interval_s)
        if pool is None:
            return
        try:
            await rollup_loop(pool, interval_s=self._interval_s, stop=self._stop, port_failures=self._port_failures)
        finally:
            await pool.close()

    @property
    def ended(self) -> bool:
        """The thread has finished (after :meth:`close`, or if it ended on its own)."""
        return self._done is not None and self._done.done()

    async def close(self) -> None:
        """Stop after the refresh under way (if any) and wait for the thread."""
        self._stopping.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):   # its loop has ended already
                loop.call_soon_threadsafe(stop.set)
        if self._done is not None:
            await asyncio.shield(self._done)
