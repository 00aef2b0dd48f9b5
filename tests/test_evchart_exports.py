"""EV-ChART exports: byte-identical headers, UTC ISO-8601 times, EV-ChART precision."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime

import pytest

from csms.reporting import evchart
from tests.central import PASSWORD, running_central
from tests.traffic import drive_fleet

pytestmark = pytest.mark.integration

EVCHART_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z?$")  # EV-ChART's datetime regex
HEADERS = {
    2: "station_id,port_id,network_provider,charger_id,session_id,connector_id,session_start,session_end,"
       "session_error,error_other,energy_kwh,power_kw,payment_method,payment_other",
    3: "station_id,port_id,network_provider,uptime_reporting_start,uptime_reporting_end,uptime,total_outage,"
       "total_outage_excl",
    4: "station_id,port_id,network_provider,outage_id,outage_duration",
}


def _rows(body: bytes) -> list[dict[str, str]]:
    assert body.startswith(b"\xef\xbb\xbf")  # UTF-8 with a BOM, like EV-ChART's sample files
    return list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))


def test_quarter_bounds_and_formats() -> None:
    assert evchart.quarter_bounds(2026, 4) == (datetime(2026, 10, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert evchart.decimal2(12.345) == "12.35" or evchart.decimal2(12.345) == "12.34"
    assert evchart.decimal2(-1.0) == "0.00"
    assert evchart.session_error("PowerLoss", 10.0) == "PowerLoss"
    assert evchart.session_error("Local", 0.1) == "NoEnergyDelivered"


async def test_module_2_3_4_from_real_traffic(db_url: str) -> None:
    now = datetime.now(UTC)
    year, quarter = now.year, (now.month - 1) // 3 + 1
    async with running_central(db_url) as central:
        for cp in ("EV16", "EV201"):
            await central.register(cp)
        await central.add_token("TRAFFIC-TAG")
        await drive_fleet(central.ws_base, PASSWORD, ["EV16"], ["EV201"])
        # The chargers disconnect when the traffic ends: a 10-minute grace keeps that out of the outages.
        params: dict[str, str | int] = {"year": year, "quarter": quarter, "network_provider": "csms_test",
                                        "offline_grace_s": 600}
        async with central.api() as api:
            bodies = {m: (await api.get(f"/api/v1/reporting/exports/ev-chart/module-{m}.csv", params=params)).content
                      for m in (2, 3, 4)}
    for module, header in HEADERS.items():
        assert bodies[module].decode("utf-8-sig").split("\r\n", 1)[0] == header, module
        assert ",".join(getattr(evchart, f"MODULE_{module}")) == header
    sessions = _rows(bodies[2])
    assert len(sessions) == 2
    for row in sessions:
        assert EVCHART_TIME.match(row["session_start"])
        assert EVCHART_TIME.match(row["session_end"])
        assert re.match(r"^\d+\.\d{2}$", row["energy_kwh"])
        assert float(row["energy_kwh"]) > 0
        assert row["network_provider"] == "csms_test"
        assert row["payment_method"] == "rfid_membership"
    assert {r["power_kw"] for r in sessions} == {"11.00", "22.00"}   # peak Power.Active.Import of each session
    uptime_rows = _rows(bodies[3])
    # 2 chargers × 2 ports × the months of the quarter that have ended (a month in progress has no final figure)
    ended = sum(1 for m in range(3 * quarter - 2, 3 * quarter + 1)
                if (datetime(year + 1, 1, 1, tzinfo=UTC) if m == 12 else datetime(year, m + 1, 1, tzinfo=UTC)) <= now)
    assert len(uptime_rows) == 2 * 2 * ended
    assert {r["uptime_reporting_end"] for r in uptime_rows} == {
        (datetime(year + 1, 1, 1, tzinfo=UTC) if m == 12 else datetime(year, m + 1, 1, tzinfo=UTC)
         ).strftime("%Y-%m-%dT%H:%M:%SZ") for m in range(3 * quarter - 2, 3 * quarter - 2 + ended)}
    assert all(EVCHART_TIME.match(r["uptime_reporting_start"]) for r in uptime_rows)
    outages = _rows(bodies[4])
    assert {r["port_id"] for r in outages} == {"EV16*2", "EV201*2"}  # the faulted port of each charger
    assert all(float(r["outage_duration"]) >= 0.01 for r in outages)
