"""Graceful drain for rolling restarts (issue 13 item 7).

On SIGTERM a real ``csms serve`` closes its chargers with 1001 at most ``--drain-rate-per-s`` per
second, so that they reconnect to the other nodes without a herd; the whole drain stays within the
shutdown timeout (what is left then is closed at once, and every disconnect is still recorded). The
closes are timed on the client side. And the simulator backs off with jitter after a 1001, as OCPP
chargers do (2.0.1 B10 RetryBackOff*; OCPP-J 1.6 errata 3.4).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Sequence

import asyncpg
import pytest
from websockets.asyncio.server import ServerConnection, serve

from csms.run.ports import free_port
from csms.simulate.config import Behaviour, FleetShape, LinkOptions
from csms.simulate.fleet import plan_fleet
from csms.simulate.runner import FleetRunner
from tests.harness import make_shared_tmpdir
from tests.pipeline import prepare
from tests.processes import start_csms
from tests.test_workers import AnsweringCharger, wait_until

pytestmark = pytest.mark.integration


def densest_window(times: Sequence[float], window_s: float) -> int:
    """Most closes seen within any ``window_s`` (each window starting at a close)."""
    ordered = sorted(times)
    return max(sum(1 for t in ordered[i:] if t < start + window_s) for i, start in enumerate(ordered))


async def _drained(db_url: str, ids: list[str], *, rate: float, shutdown_s: float) -> list[AnsweringCharger]:
    """``csms serve`` with ``ids`` connected, SIGTERMed; the chargers once every one saw its close."""
    workdir = make_shared_tmpdir("csms-drain-")
    proc = start_csms(["serve", "--database-url", db_url, "--data-dir", str(workdir / ".csms"),
                       "--drain-rate-per-s", str(rate), "--shutdown-timeout-s", str(shutdown_s),
                       "--ping-interval-s", "0", "--handshake-burst-per-source", "100000",
                       "--handshake-rate-per-source-per-s", "100000",
                       "--kdf-queue-max-per-source", "128", "--kdf-queue-max", "256"], workdir=workdir)
    fleet = [AnsweringCharger(proc.ws, cp) for cp in ids]
    try:
        await asyncio.to_thread(proc.wait_healthy)
        await asyncio.gather(*(c.connect() for c in fleet))
        stopping = asyncio.create_task(asyncio.to_thread(proc.stop, signal.SIGTERM, 120))
        await wait_until(lambda: all(c.closed for c in fleet), "every charger closed", 120, every_s=0.05)
        assert await stopping == 0, proc.log()[-4000:]
    finally:
        await asyncio.gather(*(c.close() for c in fleet))
        proc.stop(signal.SIGKILL)
    return fleet


async def _disconnect_reasons(db_url: str, ids: list[str]) -> dict[str, str]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT charge_point_id, reason FROM connection_events WHERE event = 'disconnected' "
                                "AND charge_point_id = ANY($1)", ids)
    finally:
        await conn.close()
    return {r["charge_point_id"]: r["reason"] for r in rows}


async def test_sigterm_closes_the_chargers_with_1001_at_the_drain_rate(db_url: str) -> None:
    ids = [f"DR-{i:02d}" for i in range(24)]
    await prepare(db_url, ids)
    rate = 6.0
    fleet = await _drained(db_url, ids, rate=rate, shutdown_s=60)
    assert [c.close_code for c in fleet] == [1001] * len(fleet)
    times = [c.closed_at for c in fleet if c.closed_at is not None]
    # At 6 per second a 1 s window holds 7 closes at most (sleeps only stretch the spacing); a generous
    # bound for a busy client loop that reads late closes together. All 24 at once (the old behaviour,
    # or a drain that ignored its rate) would put 24 into one window.
    assert densest_window(times, 1.0) <= 2 * rate + 2, sorted(t - min(times) for t in times)
    assert await _disconnect_reasons(db_url, ids) == dict.fromkeys(ids, "server_shutdown")


async def test_a_drain_longer_than_the_shutdown_timeout_closes_the_rest_at_once(db_url: str) -> None:
    ids = [f"DT-{i:02d}" for i in range(20)]
    await prepare(db_url, ids)
    # 1 per second over half of 4 s closes 2 or 3; the other 17 or so are closed at once, and every
    # disconnect is recorded before the process stops (exit status 0, within its timeout).
    fleet = await _drained(db_url, ids, rate=1.0, shutdown_s=4)
    assert [c.close_code for c in fleet] == [1001] * len(fleet)
    times = [c.closed_at for c in fleet if c.closed_at is not None]
    assert densest_window(times, 1.0) >= len(ids) // 2  # the remainder went together
    assert await _disconnect_reasons(db_url, ids) == dict.fromkeys(ids, "server_shutdown")


async def test_the_simulator_backs_off_with_jitter_after_a_1001() -> None:
    """A server that closes every first connection with 1001 at the same moment: the simulated chargers
    come back no sooner than their minimum back-off, and not all at the same moment (the random part)."""
    count, minimum_s, random_range_s = 10, 0.5, 2.0
    seen: dict[str, list[float]] = {}
    closed_at: dict[str, float] = {}
    everyone = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        cp_id = ws.request.path.rsplit("/", 1)[-1] if ws.request else "?"
        seen.setdefault(cp_id, []).append(time.monotonic())
        if len(seen[cp_id]) > 1:
            await ws.close(1000)
            return
        if len(seen) == count:
            everyone.set()
        await everyone.wait()
        closed_at[cp_id] = time.monotonic()
        await ws.close(1001, "going away")

    port = free_port()
    async with serve(handler, "127.0.0.1", port, subprotocols=["ocpp1.6"]):  # type: ignore[list-item]
        shape = FleetShape(count=count, mix=(("1.6", 1.0),), evses=(1, 1), dc_share=0.0, id_prefix="BO-", seed=3)
        options = LinkOptions(url=f"ws://127.0.0.1:{port}/ocpp", password="backoff-test-password-01",
                              backoff_min_s=minimum_s, backoff_max_s=30.0, backoff_random_range_s=random_range_s,
                              connect_rate_per_s=1000.0, open_timeout_s=10.0, call_timeout_s=30.0)
        runner = FleetRunner(profiles=plan_fleet(shape), behaviour=Behaviour(), options=options, tokens=("T",),
                             seed=random.randrange(1000), start=time.time())
        runner.start()
        try:
            await wait_until(lambda: len(seen) == count and all(len(v) >= 2 for v in seen.values()),
                             "every charger reconnected", 60, every_s=0.05)
        finally:
            await runner.stop(timeout_s=10)
    delays = [seen[cp][1] - closed_at[cp] for cp in seen]
    assert min(delays) >= minimum_s * 0.9, delays  # never sooner than RetryBackOffWaitMinimum
    # Ten draws of 0…2 s all within 0.2 s of each other: probability about 10·0.1^9.
    assert max(delays) - min(delays) > 0.2, delays
