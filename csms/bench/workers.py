"""Servers of several processes for the benchmarks: ``csms serve --workers N`` and N raw echo processes.

Both share one OCPP port with SO_REUSEPORT (the kernel spreads new connections over the processes).
What the fleet and storm benchmarks read from them: the worker processes (children of the
supervisor, from /proc), their summed resident memory, CPU time and open files, and a way to kill
every worker at once (the supervisor restarts them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from csms.bench.common import cpu_seconds, csms_serve, raw_server, rss_bytes, stop_process
from csms.run.ports import bindable


def free_port_range(count: int, start: int = 21000, stop: int = 32000) -> int:
    """The first of ``count`` consecutive free loopback ports (the workers' metrics ports)."""
    for base in range(start + os.getpid() % 97 * 50, stop, count + 1):
        if all(bindable("127.0.0.1", port) for port in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports in {start}…{stop}")


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return sorted(out)


def open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def mem_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def machine_cpu_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot, from /proc/stat (every process counts)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)   # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of the machine's CPU time that was busy between two ``machine_cpu_ticks`` readings."""
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total, 3) if total > 0 else 0.0


def _sum(pids: list[int], read: Any) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += read(pid)
        except (OSError, RuntimeError, IndexError, ValueError):
            continue   # a process that just exited
    return total


class ServerGroup:
    """N processes on one OCPP port: csms workers under their supervisor, or raw echo servers."""

    def __init__(self, kind: str, port: int, workers: int, *, database_url: str | None = None,
                 mqtt_url: str | None = None, data_dir: Path | None = None, log: IO[bytes] | None = None,
                 extra: tuple[str, ...] = (), deflate: str = "none") -> None:
        self.kind, self.port, self.count = kind, port, workers
        self.database_url, self.mqtt_url, self.data_dir, self.log = database_url, mqtt_url, data_dir, log
        self.extra, self.deflate = extra, deflate
        self.metrics_base = free_port_range(workers) if kind == "csms" else 0
        self.supervisor: subprocess.Popen[bytes] | None = None
        self.raw: list[subprocess.Popen[bytes]] = []

    def start(self, timeout_s: float = 120.0) -> None:
        if self.kind == "csms":
            assert self.database_url is not None
            assert self.data_dir is not None
            self.supervisor = csms_serve(
                database_url=self.database_url, port=self.port, data_dir=self.data_dir, log=self.log,
                mqtt_url=self.mqtt_url, extra=["--workers", str(self.count), "--metrics-port-base",
                                               str(self.metrics_base), *self.extra])
        else:
            self.raw = [raw_server("echo", self.port, deflate=self.deflate, reuse_port=True)
                        for _ in range(self.count)]
        self.wait_ready(timeout_s)

    def pids(self) -> list[int]:
        if self.supervisor is not None:
            return children(self.supervisor.pid)
        return [p.pid for p in self.raw if p.poll() is None]

    def wait_ready(self, timeout_s: float) -> None:
        """Every process accepts: each csms worker answers /healthz on its metrics port."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.supervisor is not None and self.supervisor.poll() is not None:
                raise RuntimeError(f"csms --workers exited with {self.supervisor.returncode}")
            if self._all_up():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} × {self.count} not ready on port {self.port} within {timeout_s:.0f} s")

    def _all_up(self) -> bool:
        if self.kind == "csms":
            for i in range(self.count):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_base + i}/healthz", timeout=2):
                        pass
                except (urllib.error.URLError, OSError):
                    return False
            return len(self.pids()) >= self.count
        if len(self.pids()) < self.count:
            return False
        # SO_REUSEPORT: a connection lands on one random listener; all of them listen once every
        # process has its socket, which the kernel shows as that many listeners on the port.
        listening = Path("/proc/net/tcp").read_text().count(f":{self.port:04X} 00000000:0000 0A")
        return listening >= self.count

    def rss_bytes(self) -> int:
        return int(_sum(self.pids(), rss_bytes))

    def cpu_seconds(self) -> float:
        return _sum(self.pids(), cpu_seconds)

    def max_open_files(self) -> int:
        return max((open_files(p) for p in self.pids()), default=0)

    def kill_all(self) -> list[int]:
        """SIGKILL every worker at once (a supervisor restarts its workers); the pids killed."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        for proc in self.raw:
            proc.wait(10)
        return pids

    def restart_raw(self) -> None:
        """Raw servers have no supervisor: start them again, as the supervisor would."""
        self.raw = [raw_server("echo", self.port, deflate=self.deflate, reuse_port=True) for _ in range(self.count)]

    def stop(self) -> None:
        if self.supervisor is not None:
            stop_process(self.supervisor, timeout_s=120)
        for proc in self.raw:
            stop_process(proc)
