"""The ``csms`` command: one entry point, one subcommand per role.

    csms run        embedded PostgreSQL+TimescaleDB, gateway, ingest and API in one process
    csms serve      OCPP gateway + HTTP API (production role; needs --database-url)
    csms ingest     ingest worker, MQTT → TimescaleDB (production role)
    csms migrate    apply the SQL migrations and exit
    csms db-url     print the URL of the database in use (embedded or configured)
    csms simulate   simulated OCPP chargers against any OCPP-J URL (load, demos)
    csms run --demo the embedded system with a small simulated fleet in the same process
    csms charge-points|locations|id-tokens …   registry administration
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import asyncpg

from csms import __version__
from csms.common.errors import CsmsError
from csms.run.admin import ADMIN_COMMANDS, add_admin_commands, run_admin
from csms.run.central import CentralSystem, migrate, run_until_stopped
from csms.run.embedded_pg import EmbeddedPostgres
from csms.run.event_loop import run as event_loop_run
from csms.run.ingest import run_ingest
from csms.run.logging_setup import configure_logging
from csms.run.supervisor import Supervisor
from csms.run.workers import WorkerSlot, raise_open_files_limit
from schemas.settings import SETTINGS_FIELDS, Settings, SettingsError, add_setting_flags, load_settings

logger = logging.getLogger("csms")

# Young-generation collections after this many new container objects (CPython default: 700), and
# a middle-generation one after this many young ones (default 10). A middle-generation pause walks
# every object that survived the young collections since the last one, ~0.8 µs each in a gateway
# holding 10,000 chargers: (50,000, 20) let one reach 870,000 objects and 715 ms, which became the
# steady fleet's p99 at 10,000 chargers (880 ms); with (20,000, 2) the longest in the same run was
# 220 ms and the p99 290 ms (issue 15: a rerun of the steady-fleet step; docs/benchmarks.md predates it).
GC_GEN0_THRESHOLD = 20_000
GC_GEN1_THRESHOLD = 2

ROLES = {
    "run": "run everything in one process on an embedded database (development, demos, small sites)",
    "serve": "run the OCPP gateway and the HTTP API",
    "ingest": "run the ingest worker (MQTT bus → TimescaleDB)",
    "migrate": "apply database migrations and exit",
    "db-url": "print the URL of the database in use",
}


# Tools (the simulator, the benchmarks) are imported only when asked for: no server role loads them.
TOOL_COMMANDS = {"simulate": "run a simulated charger fleet against a central system (csms simulate --help)"}


def build_parser(*, tool: str | None = None) -> argparse.ArgumentParser:
    """The command line; ``tool``: the tool command being run, whose options are loaded (lazily)."""
    parser = argparse.ArgumentParser(prog="csms", description="OCPP fleet telemetry backend")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in ROLES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_setting_flags(p, role=name)
        if name == "run":
            p.add_argument("--demo", action="store_true",
                           help="also run a small simulated fleet (3 locations, 15 chargers) in this process")
            p.add_argument("--demo-history-days", type=float, default=2.0,
                           help="days of history the demo fleet writes first, in fast-forward (default 2; "
                                "only when the demo chargers have no data yet)")
        if name == "serve":
            # Set by the supervisor of `--workers N` for the processes it starts, not by people.
            p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
            p.add_argument("--worker-node", default=None, help=argparse.SUPPRESS)
            p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    add_admin_commands(sub)
    if tool == "simulate":
        from csms.simulate.command import add_simulate_command

        add_simulate_command(sub)
    else:
        for name, help_text in TOOL_COMMANDS.items():
            sub.add_parser(name, help=help_text, add_help=False).add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    names = {f.name for f in SETTINGS_FIELDS}
    cli = {k: v for k, v in vars(args).items() if k in names and isinstance(v, str)}
    return load_settings(environ=environ, cli=cli)


def _tune_gc() -> None:
    """Long-running roles hold many long-lived objects (a connection each): a full collection
    walks them all and stalls the event loop (the raw echo server's p99 at 10,000 chargers: 540 ms
    with default collection, 2 ms without; docs/benchmarks.md). What exists after start-up is
    frozen out of collection, young collections run less often and middle ones stay short; cycles
    are still collected."""
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, GC_GEN1_THRESHOLD, 50)


def _run_async(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]], event_loop: str = "asyncio") -> None:
    """Run ``main`` with SIGINT/SIGTERM setting its stop event (the one owner of signals), on the
    setting's event loop (csms/run/event_loop.py)."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    event_loop_run(runner(), event_loop)


def _tool_of(argv: Sequence[str]) -> str | None:
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in TOOL_COMMANDS else None


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(tool=_tool_of(argv)).parse_args(argv)
    try:
        settings = settings_from(args, os.environ if environ is None else environ)
    except SettingsError as exc:
        print(f"csms: {exc}", file=sys.stderr)
        return 2
    command: str = args.command
    if command == "db-url":
        return _db_url(settings)
    if command == "simulate":
        from csms.simulate.command import run_simulate

        configure_logging(settings.log_level)
        return run_simulate(args, settings)
    if command in ADMIN_COMMANDS:
        configure_logging("WARNING")
        try:
            return asyncio.run(run_admin(args, settings))
        except (CsmsError, ValueError, OSError, asyncpg.PostgresError) as exc:
            print(f"csms: {exc}", file=sys.stderr)
            return 1
    configure_logging(settings.log_level)
    worker = _worker_slot(args, settings)
    if command in ("run", "serve") and settings.workers > 1 and worker is None:
        if command == "run" and args.demo:
            print("csms: --demo runs in one process: leave out --workers", file=sys.stderr)
            return 2
        return Supervisor(settings, command=command).run()
    if command in ("run", "serve"):
        raise_open_files_limit()
    _tune_gc()
    try:
        if command in ("run", "serve"):
            def central(stop: asyncio.Event) -> Coroutine[Any, Any, None]:
                system = CentralSystem(settings, embedded=command == "run", worker=worker)
                if command == "run" and args.demo:
                    from csms.simulate.demo import DemoFleet

                    demo = DemoFleet(system, history_days=args.demo_history_days)
                    # The fleet starts after the system and stops before it (before chargers are closed).
                    return run_until_stopped(demo.start_all, demo.stop_all, stop)
                start = system.start if worker is None else _reporting_ready(system.start, args.ready_fd)
                return run_until_stopped(start, system.stop, stop)
            _run_async(central, settings.event_loop)
        elif command == "ingest":
            _run_async(lambda stop: run_ingest(settings, stop), settings.event_loop)
        elif command == "migrate":
            if not settings.database_url:
                print("csms: migrate needs --database-url (CSMS_DATABASE_URL)", file=sys.stderr)
                return 2
            applied = asyncio.run(migrate(settings.database_url, timeout_s=settings.db_connect_timeout_s))
            print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    except (CsmsError, SettingsError, ValueError, OSError) as exc:
        logger.error("%s", exc)
        return 1
    return 0


def _worker_slot(args: argparse.Namespace, settings: Settings) -> WorkerSlot | None:
    """A worker of ``--workers N`` (started by the supervisor): its place, and its log lines tagged."""
    index = getattr(args, "worker_index", None)
    if index is None:
        return None
    slot = WorkerSlot(index=index, node=args.worker_node or settings.node_id,
                      metrics_port=settings.metrics_port_base + index)
    tag = f"[{settings.node_id}] "
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_TaggedFormatter(tag, handler.formatter or logging.Formatter()))
    return slot


class _TaggedFormatter(logging.Formatter):
    """The workers share the supervisor's stderr: each line says which worker wrote it."""

    def __init__(self, tag: str, inner: logging.Formatter) -> None:
        super().__init__()
        self._tag = tag
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return self._tag + self._inner.format(record)


def _reporting_ready(start: Callable[[], Coroutine[Any, Any, None]], ready_fd: int | None
                     ) -> Callable[[], Coroutine[Any, Any, None]]:
    """``start``, then one byte on the supervisor's pipe: this worker listens on every port."""

    async def started() -> None:
        await start()
        if ready_fd is not None:
            os.write(ready_fd, b"R")
            os.close(ready_fd)

    return started


def _db_url(settings: Settings) -> int:
    if settings.database_url:
        print(settings.database_url)
        return 0
    state = EmbeddedPostgres.read_state_of(settings.data_dir)
    if state is None:
        print(f"csms: no embedded database in {settings.data_dir} yet; start it with `csms run`",
              file=sys.stderr)
        return 1
    print(state.url())
    return 0
