"""Uptime, outages and exclusions from a charger history built through the real OCPP interface."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import websockets

from tests.central import PASSWORD, running_central
from tests.chargers import basic_auth, iso

pytestmark = pytest.mark.integration


async def _send(ws: websockets.ClientConnection, action: str, payload: dict[str, object], n: list[int]) -> None:
    n[0] += 1
    await ws.send(json.dumps([2, f"r{n[0]}", action, payload]))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert reply[0] == 3, reply


async def test_port_uptime_outages_and_append_only_exclusions(db_url: str, db: asyncpg.Connection) -> None:
    t0 = (datetime.now(UTC) - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    async with running_central(db_url) as central:
        await central.register("UP1", evses=1)
        n = [0]
        async with websockets.connect(f"{central.ws_base}/UP1", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                      additional_headers=basic_auth("UP1", PASSWORD)) as ws:
            await _send(ws, "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}, n)
            # The charger's own timestamps build the history (it reports after the fact, e.g. offline).
            for at, state, code in ((t0 - timedelta(hours=1), "Available", "NoError"),
                                    (t0 + timedelta(hours=10), "Faulted", "GroundFailure"),
                                    (t0 + timedelta(hours=12), "Available", "NoError"),
                                    (t0 + timedelta(hours=30), "Unavailable", "NoError"),
                                    (t0 + timedelta(hours=30, minutes=30), "Available", "NoError")):
                await _send(ws, "StatusNotification", {"connectorId": 1, "status": state, "errorCode": code,
                                                       "timestamp": iso(at)}, n)
        day = {"method": "generic", "from": iso(t0), "to": iso(t0 + timedelta(days=1))}
        async with central.api() as api:
            base = "/api/v1/reporting/ports/UP1/1"
            first = (await api.get(f"{base}/uptime", params=day)).json()
            assert first["t_outage_min"] == 120
            assert first["uptime_pct"] == 91.67                     # (1440 − 120) / 1440
            assert first["data_completeness"] == 1.0
            assert first["formula_version"]
            assert first["generated_at"].endswith("Z")
            # A window that cuts the second outage (Unavailable 30 min from hour 30).
            cut = {"method": "generic", "from": iso(t0 + timedelta(hours=30, minutes=10)),
                   "to": iso(t0 + timedelta(hours=31))}
            assert (await api.get(f"{base}/uptime", params=cut)).json()["t_outage_min"] == 20
            added = await api.post(f"{base}/exclusions", json={
                "starts_at": iso(t0 + timedelta(hours=10)), "ends_at": iso(t0 + timedelta(hours=11)),
                "reason": "vandalism", "notes": "cable cut", "evidence_urls": ["https://tickets.example/123"],
                "claimed_by": "ops@example"})
            assert added.status_code == 201
            excluded = (await api.get(f"{base}/uptime", params=day)).json()
            assert excluded["t_excluded_min"] == 60
            assert excluded["excluded_by_reason"] == {"vandalism": 60}
            assert excluded["uptime_pct"] == 95.83                  # (1440 − (120 − 60)) / 1440
            outages = (await api.get(f"{base}/outages", params={"from": day["from"], "to": iso(t0 + timedelta(days=2))}
                                     )).json()["outages"]
            assert [(o["duration_min"], o["excluded"], o["exclusion_reason_code_evchart"]) for o in outages] == [
                (120.0, True, 4), (30.0, False, None)]
            assert outages[0]["cause"] == "Faulted GroundFailure"
            # Withdrawn by a later entry: the trail keeps both, the figure goes back.
            await api.post(f"{base}/exclusions", json={
                "starts_at": iso(t0 + timedelta(hours=10)), "ends_at": iso(t0 + timedelta(hours=11)),
                "reason": "withdrawn", "claimed_by": "auditor@example"})
            assert (await api.get(f"{base}/uptime", params=day)).json()["uptime_pct"] == 91.67
            trail = (await api.get(f"{base}/exclusions")).json()
            assert [t["reason"] for t in trail] == ["vandalism", "withdrawn"]
            # NEVI: a port registered today is not eligible; its pro-rata value is still given.
            nevi = (await api.get(f"{base}/uptime", params={"method": "nevi",
                                                              "report_month": t0.strftime("%Y-%m")})).json()
            assert nevi["eligible"] is False
            assert nevi["uptime_pct"] is None
            assert nevi["denominator_minutes"] == 525600
            bad = await api.get(f"{base}/uptime", params={"method": "nevi"})
            assert bad.status_code == 400
            assert (await api.get("/api/v1/reporting/ports/NOPE/1/uptime", params=day)).status_code == 404
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("UPDATE outage_exclusions SET reason = 'vandalism'")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("DELETE FROM outage_exclusions")
