"""The bulk session exports streamed from COPY (issue 11, item 12): rows in start order across the
slices a window is cut into, the same bytes as the EV-ChART module 2 endpoint, CSV quoting as
Python's csv module writes it, and a client that goes away mid-export frees its connection."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import websockets

from csms.reporting import evchart
from csms.store import csv_stream
from csms.store.evchart_sessions import stream_module_2
from csms.store.registry import ChargePointSpec, EvseSpec, LocationSpec, add_charge_point, upsert_location
from tests.central import PASSWORD, running_central
from tests.chargers import basic_auth, iso

pytestmark = pytest.mark.integration

DAY = datetime(2026, 5, 12, tzinfo=UTC)


async def _sessions(ws_base: str) -> None:
    """Sessions at 00:10, 00:40 (first slice, the first hour), 03:00, 10:00 and 30:00, one still open."""
    async with websockets.connect(f"{ws_base}/ST16", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                  additional_headers=basic_auth("ST16", PASSWORD)) as ws:
        n = 0

        async def call(action: str, payload: dict[str, Any]) -> dict[str, Any]:
            nonlocal n
            n += 1
            await ws.send(json.dumps([2, f"x{n}", action, payload]))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 15))
            assert reply[0] == 3, (action, reply)
            return dict(reply[2])

        await call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
        meter = 0
        for connector, start_h, hours, wh, kw in ((1, 0.17, 0.5, 12_346, 11), (2, 0.67, 0.25, 400, 3),
                                                  (1, 3, 1, 22_500, 18), (2, 10, 2, 7_005, 4.5), (1, 30, 1, 1_000, 2)):
            start = DAY + timedelta(hours=start_h)
            tx = (await call("StartTransaction", {"connectorId": connector, "idTag": "ST-TAG", "meterStart": meter,
                                                  "timestamp": iso(start)}))["transactionId"]
            await call("MeterValues", {"connectorId": connector, "transactionId": tx, "meterValue": [{
                "timestamp": iso(start + timedelta(hours=hours / 2)),
                "sampledValue": [{"value": str(kw * 1000), "measurand": "Power.Active.Import", "unit": "W"}]}]})
            if start_h != 10:   # the 10:00 session stays open
                await call("StopTransaction", {"transactionId": tx, "meterStop": meter + wh,
                                               "timestamp": iso(start + timedelta(hours=hours))})
            meter += wh


async def test_streamed_exports(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        async with running_central(db_url) as central:
            await upsert_location(pool, LocationSpec(id="LOC-ST", name="Stream", time_zone="UTC"))
            await add_charge_point(pool, ChargePointSpec(id="ST16", location_id="LOC-ST", password=PASSWORD,
                                                         evses=(EvseSpec(1), EvseSpec(2))))
            await central.add_token("ST-TAG")
            await _sessions(central.ws_base)
            async with central.api() as api:
                generic = await api.get("/api/v1/reporting/exports/sessions.csv",
                                        params={"from": iso(DAY), "to": iso(DAY + timedelta(days=2))})
                module_2 = await api.get("/api/v1/reporting/exports/ev-chart/module-2.csv",
                                         params={"year": 2026, "quarter": 2})
        single = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
        try:
            streamed = b"".join([chunk async for chunk in stream_module_2(
                single, evchart.quarter_bounds(2026, 2), "other")])
            # A client that reads the header and one slice, then goes away: the connection is free again.
            stream = stream_module_2(single, evchart.quarter_bounds(2026, 2), "other")
            first = [await anext(stream), await anext(stream)]
            await stream.aclose()
            assert await asyncio.wait_for(single.fetchval("SELECT count(*) FROM transactions"), 10) == 5
        finally:
            await single.close()
    finally:
        await pool.close()
    assert generic.status_code == 200
    text = generic.content.decode("utf-8-sig")
    assert "\r\n" in text
    assert "\n" not in text.replace("\r\n", "")
    rows = list(csv.DictReader(io.StringIO(text)))
    starts = [iso(DAY + timedelta(hours=h))[:19] + "Z" for h in (0.17, 0.67, 3, 10, 30)]
    assert [r["started_at"] for r in rows] == starts
    assert [r["energy_kwh"] for r in rows] == ["12.346", "0.400", "22.500", "", "1.000"]
    assert [r["peak_kw"] for r in rows] == ["11.000", "3.000", "18.000", "", "2.000"]   # open: no peak yet
    assert rows[3]["stopped_at"] == ""
    assert rows[3]["duration_s"] == ""
    # The module 2 function gives the endpoint's bytes (BOM, header, CRLF, 2 decimals, NoEnergyDelivered).
    assert module_2.status_code == 200
    assert streamed == module_2.content
    m2 = list(csv.DictReader(io.StringIO(streamed.decode("utf-8-sig"))))
    assert [(r["energy_kwh"], r["power_kw"], r["session_error"]) for r in m2] == [
        ("12.35", "11.00", ""), ("0.40", "3.00", "NoEnergyDelivered"), ("22.50", "18.00", ""), ("", "4.50", ""),
        ("1.00", "2.00", "")]
    assert first[0].startswith(b"\xef\xbb\xbf" + ",".join(evchart.MODULE_2).encode() + b"\r\n")


def test_csv_quoting_and_header_match_pythons_csv_module() -> None:
    assert csv_stream.header(("a", "b,c")) == b'\xef\xbb\xbfa,"b,c"\r\n'
    assert csv_stream.text("x") == "NULLIF(translate(x, E'\\r\\n', '  '), '')"
