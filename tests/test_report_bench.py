"""A small run of the report benchmark, so it keeps working (no timing is asserted)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from csms.bench import ocpp_throughput, reports

pytestmark = pytest.mark.integration


async def test_report_benchmark_runs_every_report_on_generated_history(empty_db_url: str) -> None:
    result = await reports.run(database_url=empty_db_url, ports=6, months=4)
    assert {r["status"] for r in result["reports"]} == {200}, result["reports"]
    assert len(result["reports"]) >= 15
    rows = result["generated"]["rows"]
    # 6 ports × 120 days × 6 sessions, four statuses each, plus a fault (two rows) a month per port.
    assert rows["transactions"] == 6 * 120 * 6
    assert rows["connector_status"] == 6 * 120 * 6 * 4 + 6 * 4 * 2
    assert result["rollup"]["buckets"] > 0
    assert result["rollup"]["spans"] == 6 * 120 * 6
    assert all(r["bytes"] > 0 for r in result["reports"])
    assert "| uptime per station (NEVI, all ports) |" in reports.render(result)
    # The roll-up agrees with the raw rows: every session occupies its port 30–90 minutes.
    conn = await asyncpg.connect(empty_db_url)
    try:
        occupied = await conn.fetchval("SELECT sum(occupied_s) FROM port_state_15m")
        spans = await conn.fetchval("SELECT sum(extract(epoch FROM ended_at - started_at)) FROM port_occupancy_spans")
    finally:
        await conn.close()
    assert occupied == pytest.approx(float(spans))


async def test_the_throughput_benchmark_rolls_up_what_is_stored_before_a_csms_server_starts(
        db_url: str, db: asyncpg.Connection) -> None:
    # A status an hour ago: the roll-up's first refresh starts at its quarter hour (ingest/rollup.py).
    await db.execute("INSERT INTO charge_points (id) VALUES ('CP1')")
    await db.execute("INSERT INTO connector_status (time, charge_point_id, evse_id, connector_id, status, received_at)"
                     " VALUES (now() - interval '1 hour', 'CP1', 1, 1, 'Available', now())")
    assert await db.fetchval("SELECT rolled_until FROM port_state_watermark") is None
    await asyncio.to_thread(ocpp_throughput._settle_rollup, db_url)
    # Up to the last whole quarter hour, so a csms server's own refresh at start has nothing to catch up.
    assert await db.fetchval(
        "SELECT rolled_until >= date_bin('15 minutes', now() - interval '15 minutes', timestamptz '2000-01-01') "
        "FROM port_state_watermark")
