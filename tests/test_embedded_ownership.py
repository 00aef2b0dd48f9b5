"""The process that runs the embedded PostgreSQL owns it, adopted or not: real ``csms run`` processes.

A SIGKILLed ``csms run`` leaves its server running; the next ``csms run`` on the same data directory
adopts it and, on a clean Ctrl-C, stops it. A second live ``csms run`` on that directory is refused
with a clear message instead of both "owning" one cluster."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from csms.run.embedded_pg import OWNER_FILE, EmbeddedPostgres
from tests.harness import make_shared_tmpdir
from tests.processes import CsmsProcess, csms_command, start_csms

pytestmark = pytest.mark.integration


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = make_shared_tmpdir("csms-own-")
    try:
        yield path
    finally:
        cluster = EmbeddedPostgres(data_dir=path / ".csms")
        if cluster.is_running():   # a failed test must not leave its server behind
            cluster.start()        # adopt it (nobody else owns it any more) ...
            cluster.stop()         # ... and stop it
        shutil.rmtree(path, ignore_errors=True)


def _wait_for(what: str, condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout_s} s")
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"   # a zombie whose parent has not reaped it yet has exited


def _exits(proc: CsmsProcess, timeout_s: float = 90.0) -> int:
    try:
        return proc.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.proc.kill()
        proc.proc.wait(10)
        raise


async def test_a_restarted_run_adopts_the_orphaned_server_and_stops_it_on_ctrl_c(workdir: Path) -> None:
    data_dir = workdir / ".csms"
    cluster = EmbeddedPostgres(data_dir=data_dir)
    started: list[CsmsProcess] = []
    try:
        first = start_csms(["run"], workdir=workdir)
        started.append(first)
        await asyncio.to_thread(first.wait_healthy)
        postmaster = cluster.postmaster_pid()
        assert postmaster is not None
        owner = json.loads((data_dir / OWNER_FILE).read_text())
        assert (owner["pid"], owner["role"], owner["postmaster_pid"]) == (first.proc.pid, "csms run", postmaster)

        first.proc.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(_exits, first) == -signal.SIGKILL
        assert _alive(postmaster)   # the server outlives the killed process
        assert await asyncio.to_thread(cluster.is_running)

        second = start_csms(["run"], workdir=workdir)
        started.append(second)
        await asyncio.to_thread(second.wait_healthy)
        assert cluster.postmaster_pid() == postmaster   # adopted, not restarted
        assert "owns it now" in second.log()
        owner = json.loads((data_dir / OWNER_FILE).read_text())
        assert (owner["pid"], owner["postmaster_pid"]) == (second.proc.pid, postmaster)

        # A second live `csms run` on the same data directory is refused, and changes nothing.
        third = start_csms(["run"], workdir=workdir)
        started.append(third)
        assert await asyncio.to_thread(_exits, third) == 1, third.log()
        assert f"belongs to csms run (pid {second.proc.pid}), which is running" in third.log()
        assert "Traceback" not in third.log()
        await asyncio.to_thread(second.wait_healthy, 10)
        assert cluster.postmaster_pid() == postmaster

        # Ctrl-C: the owner stops the server it adopted.
        assert await asyncio.to_thread(second.stop, signal.SIGINT, 90) == 0, second.log()
        await asyncio.to_thread(_wait_for, "stopped", lambda: not cluster.is_running() and not _alive(postmaster))
        assert not (data_dir / "pg" / "postmaster.pid").exists()
    finally:
        for proc in started:
            if proc.proc.poll() is None:
                await asyncio.to_thread(proc.stop)


async def test_a_registry_command_next_to_run_uses_its_server_without_owning_it(workdir: Path) -> None:
    run = start_csms(["run"], workdir=workdir)
    try:
        await asyncio.to_thread(run.wait_healthy)
        cluster = EmbeddedPostgres(data_dir=workdir / ".csms")
        postmaster = cluster.postmaster_pid()
        out = await asyncio.to_thread(csms_command, ["charge-points", "add", "CP-NEXT", "--password",
                                                     "correct-horse-battery-staple", "--data-dir",
                                                     str(workdir / ".csms")])
        assert "registered" in out
        assert postmaster is not None
        assert cluster.postmaster_pid() == postmaster   # left running, by the same server
        assert _alive(postmaster)
        await asyncio.to_thread(run.wait_healthy, 10)
    finally:
        assert await asyncio.to_thread(run.stop, signal.SIGINT, 90) == 0, run.log()
    await asyncio.to_thread(_wait_for, "stopped", lambda: not EmbeddedPostgres(
        data_dir=workdir / ".csms").is_running())
