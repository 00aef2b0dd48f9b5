#!/usr/bin/env python3
"""Fail when a module of the pure core (csms/ocpp) or the writer (ingest/writer.py) is not covered.

Reads the JSON report that ``pytest --cov --cov-report=json:FILE`` writes (branch coverage, the
modules listed in pyproject's [tool.coverage.run] source) and checks every module on its own:
an overall figure would let a dead module hide behind well-tested ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MIN_PERCENT = 90.0   # statements and branches together (coverage's "percent_covered"), per module


def main(argv: list[str]) -> int:
    report = json.loads(Path(argv[1]).read_text("utf-8"))
    short = []
    for name, data in sorted(report["files"].items()):
        summary = data["summary"]
        percent = summary["percent_covered"]
        branches = f"{summary.get('covered_branches', 0)}/{summary.get('num_branches', 0)} branches"
        status = "ok" if percent >= MIN_PERCENT else "SHORT"
        print(f"[coverage] {status:5} {percent:5.1f} %  {branches:18} {name}")
        if percent < MIN_PERCENT:
            short.append(name)
    if not report["files"]:
        print("[coverage] no measured module: is [tool.coverage.run] source right?")
        return 1
    if short:
        print(f"[coverage] below {MIN_PERCENT:.0f} %: {', '.join(short)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
