"""A small run of the report benchmark, so it keeps working (no timing is asserted)."""

from __future__ import annotations

import asyncpg
import pytest

from csms.bench import reports

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
