"""The command line of a generated file: print it, ``--write`` it, or ``--check`` it is up to date."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def generated_file_main(argv: list[str] | None, *, prog: str, description: str | None, target: Path,
                        generate: Callable[[], str]) -> int:
    """Run ``prog`` [--write | --check] for ``target``, whose text ``generate`` returns; the exit status."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {target.name}")
    group.add_argument("--check", action="store_true", help=f"exit 1 when {target.name} is out of date")
    args = parser.parse_args(argv)
    text = generate()
    if args.write:
        target.write_text(text, encoding="utf-8")
    elif args.check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            print(f"{target} is out of date: run {prog} --write", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0
