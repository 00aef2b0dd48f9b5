"""The benchmark's side of the load generator: several ``fleet_client`` processes as one fleet.

Each process drives at most ``per_process`` chargers from its own source address
(127.0.0.2, 127.0.0.3, …): a process may hold at most 20,000 open files here, and one
source address reaches one server port through at most ~28,000 ephemeral ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from csms.bench.common import percentile
from csms.bench.fleet_client import Config

MAX_SOURCES = 250


class ClientProcess:
    def __init__(self, proc: asyncio.subprocess.Process, cfg: Config) -> None:
        self.proc = proc
        self.cfg = cfg

    @classmethod
    async def start(cls, cfg: Config, log: Path) -> ClientProcess:
        with log.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "csms.bench.fleet_client", json.dumps(asdict(cfg)),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err, limit=2**26)
        return cls(proc, cfg)

    async def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()

    async def expect(self, event: str, timeout_s: float) -> dict[str, Any]:
        """The next line with this event (others are skipped), within the timeout."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"fleet process {self.cfg.prefix}{self.cfg.first} exited "
                                       f"({await self.proc.wait()}) before {event!r}")
                data: dict[str, Any] = json.loads(line)
                if data.get("event") == event:
                    return data

    async def close(self, timeout_s: float = 30.0) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(OSError, ConnectionError):
                await self.send({"cmd": "close"})
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class ClientFleet:
    """Chargers PREFIX0 … PREFIX<n-1>, added in steps, spread over client processes."""

    def __init__(self, *, url: str, prefix: str, log_dir: Path, password: str | None = None, deflate: bool = False,
                 session: bool = False, per_process: int = 5000, ready_timeout_s: float = 300.0,
                 call_timeout_s: float = 30.0, source_offset: int = 0) -> None:
        self.url = url
        self.prefix = prefix
        self.log = log_dir / f"fleet-{prefix}.log"
        self.password = password
        self.deflate = deflate
        self.session = session
        self.per_process = per_process
        self.ready_timeout_s = ready_timeout_s
        self.call_timeout_s = call_timeout_s
        self.source_offset = source_offset
        self.processes: list[ClientProcess] = []
        self.total = 0

    async def grow(self, count: int) -> dict[str, Any]:
        """Add ``count`` chargers at once; return when every new one has booted (or the timeout)."""
        new: list[ClientProcess] = []
        first = self.total
        while first < self.total + count:
            n = min(self.per_process, self.total + count - first)
            k = (self.source_offset + len(self.processes) + len(new)) % MAX_SOURCES
            cfg = Config(url=self.url, prefix=self.prefix, first=first, count=n, password=self.password,
                         source=f"127.0.0.{2 + k}", deflate=self.deflate, session=self.session,
                         call_timeout_s=self.call_timeout_s, ready_timeout_s=self.ready_timeout_s,
                         seed=first + 1)
            new.append(await ClientProcess.start(cfg, self.log))
            first += n
        self.processes += new
        self.total += count
        ready = await asyncio.gather(*(p.expect("ready", self.ready_timeout_s + 60) for p in new))
        return {"booted": sum(r["booted"] for r in ready), "missing": sum(r["missing"] for r in ready),
                "deflate_negotiated": sum(r["deflate_negotiated"] for r in ready),
                "connect_s": max(r["connect_s"] for r in ready),
                "connect_failures": sum(r["connect_failures"] for r in ready),
                "errors": [r["last_error"] for r in ready if r["missing"]][:3]}

    async def _all(self, cmd: dict[str, Any], event: str, timeout_s: float) -> list[dict[str, Any]]:
        await asyncio.gather(*(p.send(cmd) for p in self.processes))
        return list(await asyncio.gather(*(p.expect(event, timeout_s) for p in self.processes)))

    async def steady(self, *, start_at: float, duration_s: float, interval_s: float) -> dict[str, Any]:
        """Every charger sends MeterValues every ``interval_s`` (at its own phase) for ``duration_s``."""
        out = await self._all({"cmd": "steady", "start_at": start_at, "duration_s": duration_s,
                               "interval_s": interval_s}, "steady",
                              start_at - time.time() + duration_s + self.call_timeout_s + 30)
        latencies = sorted(x for r in out for x in r["latencies_ms"])
        return {"sent": sum(r["sent"] for r in out), "ok": sum(r["ok"] for r in out),
                "errors": sum(r["errors"] for r in out), "unanswered": sum(r["unanswered"] for r in out),
                "latencies_ms": latencies}

    async def drop(self) -> float:
        """Abort every charger's TCP connection (no closing handshake); the time of the first abort."""
        out = await self._all({"cmd": "drop"}, "dropped", 30)
        return float(min(r["at"] for r in out))

    async def wait_booted(self, since: float, timeout_s: float) -> dict[str, Any]:
        """Seconds from ``since`` until each charger's next accepted boot; how many never booted.

        ``connect_failures`` counts failed connection attempts since the processes started.
        """
        out = await self._all({"cmd": "wait_booted", "since": since, "timeout_s": timeout_s}, "booted",
                              timeout_s + 30)
        after = sorted(x for r in out for x in r["after_s"])
        return {"booted": len(after), "missing": sum(r["missing"] for r in out),
                "p50_s": round(percentile(after, 0.5), 3), "all_s": round(after[-1], 3) if after else None,
                "connect_failures": sum(r["connect_failures"] for r in out),
                "errors": [r["last_error"] for r in out if r["missing"]][:3]}

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.processes))
        self.processes = []
