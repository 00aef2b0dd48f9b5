"""The shared traffic driver itself produces what the dashboards read."""

from __future__ import annotations

import asyncpg
import pytest

from tests.central import PASSWORD, running_central
from tests.traffic import drive_fleet

pytestmark = pytest.mark.integration


async def test_traffic_fills_every_table(db_url: str, db: asyncpg.Connection) -> None:
    async with running_central(db_url) as central:
        for cp in ("TR16-1", "TR16-2", "TR201-1"):
            await central.register(cp)
        await central.add_token("TRAFFIC-TAG")
        await drive_fleet(central.ws_base, PASSWORD, ["TR16-1", "TR16-2"], ["TR201-1"])
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE stopped_at IS NOT NULL") == 3
    assert await db.fetchval("SELECT count(*) FROM meter_samples") == 3 * 12 * 3 + 2 * 3
    assert await db.fetchval("SELECT count(*) FROM connector_status WHERE status = 'Faulted'") == 3
    assert await db.fetchval("SELECT count(DISTINCT event) FROM connection_events") == 3
