"""A simulation run: in this process or fanned out over worker processes; progress; summary.

A process may hold at most as many sockets as its open-files limit (20,000 here), and one
Python process is one core: ``--processes`` splits the fleet by charger index (charger i runs
in process i mod P). Workers report a snapshot of their counters every second over a pipe;
the parent merges them for the progress line and the final summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import multiprocessing
import multiprocessing.connection
import resource
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from csms.simulate import stats as stats_mod
from csms.simulate.config import Behaviour, FleetShape, LinkOptions, SimulationConfigError
from csms.simulate.fleet import plan_fleet, token_pool
from csms.simulate.runner import FleetRunner
from csms.simulate.stats import Stats

logger = logging.getLogger("csms.simulate")

FDS_RESERVED = 64          # descriptors a worker needs besides its chargers' sockets
PROGRESS_LOG_EVERY_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSpec:
    """Everything a worker needs (picklable)."""

    shape: FleetShape
    behaviour: Behaviour
    options: LinkOptions
    duration_s: float
    max_messages: int = 0
    processes: int = 1
    start_at: float = 0.0      # epoch; 0 = now
    initial_registers: dict[str, dict[int, float]] = dataclasses.field(default_factory=dict)
    log_level: str = "INFO"


def open_files_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def check_capacity(spec: RunSpec) -> None:
    """Every process must fit its chargers' sockets under its open-files limit, and every
    (source address → server) pair its connections in the ephemeral port range."""
    per_process = math.ceil(spec.shape.count / spec.processes)
    limit = open_files_limit() - FDS_RESERVED
    if per_process > limit:
        need = math.ceil(spec.shape.count / limit)
        raise SimulationConfigError(f"{per_process} chargers per process exceed the open-files limit "
                                    f"({limit + FDS_RESERVED}); use --processes {need} or more")
    with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
        low, high = (int(x) for x in fh.read().split())
    per_address = math.ceil(spec.shape.count / max(1, len(spec.options.source_addresses)))
    if per_address > (high - low + 1) * 0.9:
        raise SimulationConfigError(f"{per_address} connections per source address exceed the ephemeral port "
                                    f"range ({high - low + 1} ports); use more --source-addresses")


def default_processes(count: int) -> int:
    return max(1, math.ceil(count / 10_000))


class Progress:
    """One line rewritten every second on a terminal; a log line every 10 s otherwise."""

    def __init__(self, *, total: int, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.peak = 0
        self._last: tuple[float, int] | None = None
        self._last_log = float("-inf")
        self._width = 0

    def update(self, snapshot: dict[str, Any], elapsed_s: float) -> None:
        t = stats_mod.totals(snapshot)
        self.peak = max(self.peak, snapshot["connected"])
        rate = 0.0
        if self._last is not None and elapsed_s > self._last[0]:
            rate = (t["sent"] - self._last[1]) / (elapsed_s - self._last[0])
        self._last = (elapsed_s, t["sent"])
        line = (f"{elapsed_s:6.0f} s  connected {snapshot['connected']:,}/{self.total:,} (peak {self.peak:,})  "
                f"sessions {t['sessions_active']:,} active, {t['sessions_started']:,} started  "
                f"{rate:,.0f} msg/s  {t['sent']:,} sent  errors {t['errors']:,}")
        if self.tty:
            self.stream.write("\r" + line.ljust(self._width))
            self.stream.flush()
            self._width = len(line)
        elif elapsed_s - self._last_log >= PROGRESS_LOG_EVERY_S:
            self._last_log = elapsed_s
            logger.info("%s", line)

    def finish(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()


def _info(spec: RunSpec, profiles_versions: dict[str, int]) -> dict[str, Any]:
    return {"url": spec.options.url, "chargers": spec.shape.count, "versions": profiles_versions,
            "processes": spec.processes, "seed": spec.shape.seed,
            "source_addresses": len(spec.options.source_addresses),
            "connect_rate_per_s": spec.options.connect_rate_per_s,
            "meter_interval_s": spec.behaviour.meter_interval_s}


def run(spec: RunSpec, *, progress: Progress | None = None) -> dict[str, Any]:
    """Run the simulation to its end; return the summary (blocking; owns SIGINT/SIGTERM)."""
    check_capacity(spec)
    profiles = plan_fleet(spec.shape)
    versions: dict[str, int] = {}
    for p in profiles:
        versions[p.version] = versions.get(p.version, 0) + 1
    progress = progress or Progress(total=spec.shape.count)
    spec = dataclasses.replace(spec, start_at=spec.start_at or time.time())
    started = time.monotonic()
    if spec.processes == 1:
        snapshot, peak = asyncio.run(_run_here(spec, progress))
    else:
        snapshot, peak = _run_fanned_out(spec, progress)
    progress.finish()
    return stats_mod.summary(snapshot, duration_s=time.monotonic() - started, connected_peak=peak,
                             info=_info(spec, versions))


async def run_partition(spec: RunSpec, index: int, stop: asyncio.Event, stats: Stats) -> None:
    profiles = [p for p in plan_fleet(spec.shape) if p.index % spec.processes == index]
    runner = FleetRunner(profiles=profiles, behaviour=spec.behaviour, options=spec.options,
                         tokens=token_pool(spec.shape), seed=spec.shape.seed, start=spec.start_at,
                         processes=spec.processes, process_index=index, stats=stats,
                         initial_registers=spec.initial_registers)
    budget = math.ceil(spec.max_messages / spec.processes) if spec.max_messages else 0
    await runner.run_until(deadline=time.monotonic() + spec.duration_s, max_messages=budget, stop=stop,
                           stop_timeout_s=min(10.0, spec.options.call_timeout_s))


async def _run_here(spec: RunSpec, progress: Progress) -> tuple[dict[str, Any], int]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stats = Stats()
    began = time.monotonic()

    async def report() -> None:
        while True:
            await asyncio.sleep(1.0)
            progress.update(stats.snapshot(), time.monotonic() - began)

    reporter = asyncio.create_task(report(), name="sim-progress")
    try:
        await run_partition(spec, 0, stop, stats)
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return stats.snapshot(), stats.connected_peak


def _worker_main(spec: RunSpec, index: int, conn: multiprocessing.connection.Connection) -> None:
    from csms.run.logging_setup import configure_logging

    configure_logging(spec.log_level)
    asyncio.run(_worker(spec, index, conn))
    conn.close()


async def _worker(spec: RunSpec, index: int, conn: multiprocessing.connection.Connection) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stats = Stats()

    async def report() -> None:
        while True:
            await asyncio.sleep(1.0)
            conn.send(("snapshot", stats.snapshot()))
            if conn.poll() and conn.recv() == "stop":
                stop.set()

    reporter = asyncio.create_task(report(), name="sim-worker-report")
    try:
        await run_partition(spec, index, stop, stats)
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
    conn.send(("done", stats.snapshot()))


def _run_fanned_out(spec: RunSpec, progress: Progress) -> tuple[dict[str, Any], int]:
    ctx = multiprocessing.get_context("spawn")
    pipes = [ctx.Pipe() for _ in range(spec.processes)]
    workers = [ctx.Process(target=_worker_main, args=(spec, k, child), name=f"csms-simulate-{k}", daemon=True)
               for k, (_, child) in enumerate(pipes)]
    stop_requested = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    latest: dict[int, dict[str, Any]] = {}
    done: set[int] = set()
    began = time.monotonic()
    # Workers end by themselves at the deadline; this bound only covers a worker that hangs.
    hard_deadline = began + spec.duration_s + 60.0 + spec.options.call_timeout_s
    try:
        for w in workers:
            w.start()
        for _, child in pipes:
            child.close()
        sent_stop = False
        conns: dict[int, tuple[int, multiprocessing.connection.Connection]] = {
            id(parent): (k, parent) for k, (parent, _) in enumerate(pipes)}
        while len(done) < len(workers) and time.monotonic() < hard_deadline:
            live = [parent for k, (parent, _) in enumerate(pipes) if k not in done]
            for ready in multiprocessing.connection.wait(live, timeout=1.0):
                k, conn = conns[id(ready)]
                try:
                    kind, snap = conn.recv()
                except (EOFError, OSError):
                    done.add(k)
                    continue
                latest[k] = snap
                if kind == "done":
                    done.add(k)
            if stop_requested and not sent_stop:
                sent_stop = True
                for k, (parent, _) in enumerate(pipes):
                    if k not in done:
                        with contextlib.suppress(OSError):
                            parent.send("stop")
            if latest:
                progress.update(stats_mod.merge(list(latest.values())), time.monotonic() - began)
        missing = [k for k in range(len(workers)) if k not in done]
        if missing:
            logger.error("worker processes %s did not finish; their last figures are used", missing)
    finally:
        for w in workers:
            w.join(timeout=15)
            if w.is_alive():
                w.terminate()
                w.join(timeout=5)
        for parent, _ in pipes:
            parent.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    merged = stats_mod.merge(list(latest.values())) if latest else Stats().snapshot()
    return merged, max(progress.peak, merged["connected"])
