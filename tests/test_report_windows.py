"""Report windows (issue 11 items 6, 9, 10), through OCPP and the real HTTP API.

* A window that reaches past now is computed up to now and says so (``complete: false``,
  ``computed_until``); minutes that have not happened are never counted as up; NEVI and UK
  verdicts only for complete periods, with the reason when null.
* Minutes before a port's first data are unknown: in no denominator, and ``data_completeness``
  = known minutes ÷ the window's minutes — the same for port, fleet and utilization answers.
* Station-local ``local_date`` / ``month`` / ``year`` windows (DST-correct, no offsets to compute).
* UK reliability applies recorded exclusions only as PCPR 2023 reg. 7 allows (outside access
  hours); other reasons are reported, not applied.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import websockets

from csms.store.registry import (
    ChargePointSpec,
    ConnectorSpec,
    EvseSpec,
    LocationSpec,
    add_charge_point,
    upsert_location,
)
from tests.central import PASSWORD, RunningCentral, running_central
from tests.chargers import basic_auth, iso

pytestmark = pytest.mark.integration

Call = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
NO_OFFLINE = {"offline_grace_s": 86400}   # the test chargers disconnect when their history is sent


@asynccontextmanager
async def charger(central: RunningCentral, cp_id: str) -> AsyncIterator[Call]:
    count = 0
    async with websockets.connect(f"{central.ws_base}/{cp_id}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                  additional_headers=basic_auth(cp_id, PASSWORD)) as ws:
        async def call(action: str, payload: dict[str, Any]) -> dict[str, Any]:
            nonlocal count
            count += 1
            await ws.send(json.dumps([2, f"w{count}", action, payload]))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply[0] == 3, reply
            return reply[2]  # type: ignore[no-any-return]

        await call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
        yield call


async def status(call: Call, when: datetime, state: str, error: str = "NoError") -> None:
    await call("StatusNotification", {"connectorId": 1, "errorCode": error, "status": state, "timestamp": iso(when)})


async def add_port(pool: asyncpg.Pool, cp: str, location: str | None, kw: int = 50) -> None:
    await add_charge_point(pool, ChargePointSpec(
        id=cp, location_id=location, password=PASSWORD,
        evses=(EvseSpec(1, (ConnectorSpec(power_type="DC", rated_power_w=kw * 1000),)),)))


async def wait_stored(pool: asyncpg.Pool, cp: str, rows: int) -> None:
    """The writer stores asynchronously: wait (bounded) until the charger's statuses are in."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while await pool.fetchval("SELECT count(*) FROM connector_status WHERE charge_point_id = $1", cp) < rows:
        assert loop.time() < deadline, f"{cp}: statuses not stored"
        await asyncio.sleep(0.05)


async def test_windows_past_now_unknown_minutes_and_null_reasons(db_url: str) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    first = now - 2 * DAY              # the ports' first data
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        async with running_central(db_url) as central:
            await upsert_location(pool, LocationSpec(id="LOC-W", name="W", latitude=1.0, longitude=1.0,
                                                     operational_since=now - 3 * 365 * DAY))
            await add_port(pool, "W16", "LOC-W")
            await add_port(pool, "WNEW", None)            # registered with the CLI: no operational_since
            for cp in ("W16", "WNEW"):
                async with charger(central, cp) as call:
                    await status(call, first, "Available")
                    await status(call, now - DAY, "Faulted", "GroundFailure")    # a 60-minute outage
                    await status(call, now - DAY + HOUR, "Available")
                await wait_stored(pool, cp, 3)
            window = {"from": iso(now - 3 * DAY), "to": iso(now + DAY), **NO_OFFLINE}
            async with central.api() as api:
                async def get(path: str, **params: Any) -> dict[str, Any]:
                    reply = await api.get(f"/api/v1/reporting{path}", params=params)
                    assert reply.status_code == 200, reply.text
                    return reply.json()  # type: ignore[no-any-return]

                generic = await get("/ports/W16/1/uptime", method="generic", **window)
                year = await get("/ports/W16/1/uptime", method="uk", year=str(now.year), **NO_OFFLINE)
                future_month = (now + 62 * DAY).strftime("%Y-%m")
                nevi = await get("/ports/W16/1/uptime", method="nevi", report_month=future_month, **NO_OFFLINE)
                nevi_new = await get("/ports/WNEW/1/uptime", method="nevi", report_month=future_month, **NO_OFFLINE)
                # a month that has ended: the first data's month if it has, else the one before
                first_month_ended = first.strftime("%Y-%m") != now.strftime("%Y-%m")
                past = first.strftime("%Y-%m") if first_month_ended else (first.replace(day=1) - DAY).strftime("%Y-%m")
                nevi_past = await get("/ports/W16/1/uptime", method="nevi", report_month=past, **NO_OFFLINE)
                fleet = await get("/uptime", method="generic", group_by="port", **window)
                network = await get("/uptime", method="generic", group_by="network", **window)
                util = await get("/ports/W16/1/utilization", bucket="day", basis="calendar",
                                 **{k: window[k] for k in ("from", "to")})
    finally:
        await pool.close()

    # Generic: computed over the 2 days known (of 3 elapsed, of 4 asked), not over 4 days as up.
    assert generic["complete"] is False
    computed_until = datetime.fromisoformat(generic["computed_until"])
    assert now <= computed_until < now + HOUR
    assert generic["minutes_in_period"] == 4 * 1440
    assert 2 * 1440 <= generic["minutes_known"] < 2 * 1440 + 60
    assert generic["t_outage_min"] == 60
    assert generic["uptime_pct"] == round((2 * 1440 - 60) / (2 * 1440) * 100, 2)          # 97.92
    assert generic["data_completeness"] == pytest.approx(0.5, abs=0.01)
    assert generic["known_since"] == iso(first).replace(".000", "")
    assert generic["meets_requirement"] is None
    assert [r["code"] for r in generic["meets_requirement_null_reasons"]] == ["period_incomplete"]
    # UK year in progress: no verdict, and the completeness says how little of the year is known.
    assert year["complete"] is False
    assert year["meets_requirement"] is None
    assert "period_incomplete" in {r["code"] for r in year["meets_requirement_null_reasons"]}
    assert year["data_completeness"] < 0.05
    assert year["uptime_pct"] == round((1 - 60 / year["denominator_minutes"]) * 100, 2)
    # NEVI for a month that has not ended: no figure and no verdict, with the reasons.
    assert nevi["uptime_pct"] is None
    assert nevi["meets_requirement"] is None
    assert nevi["complete"] is False
    assert {r["code"] for r in nevi["uptime_pct_null_reasons"]} == {"period_incomplete", "state_unknown"}
    assert nevi["eligible"] is True                    # operational for three years (the location's date)
    assert nevi["operational_since_source"] == "location"
    assert nevi["pro_rata_uptime_pct"] == generic["uptime_pct"]
    # A port without operational_since: its registration time stands in, and the answer says so.
    reasons = {r["code"]: r["message"] for r in nevi_new["uptime_pct_null_reasons"]}
    assert "operated_less_than_12_months" in reasons
    assert "registration" in reasons["operated_less_than_12_months"]
    assert nevi_new["operational_since_source"] == "registration"
    # A past month: complete, but the state is unknown before the first data two days ago.
    assert nevi_past["complete"] is True
    assert [r["code"] for r in nevi_past["uptime_pct_null_reasons"]] == [
        "state_unknown" if first_month_ended else "no_data"]
    # Fleet: the same minutes; no verdicts over a period in progress.
    groups = {g["group"]: g for g in fleet["groups"]}
    assert groups["W16/1"]["uptime_pct"] == generic["uptime_pct"]
    assert groups["W16/1"]["complete"] is False
    assert groups["W16/1"]["ports_meeting_requirement"] is None
    assert groups["W16/1"]["data_completeness"] == generic["data_completeness"]
    [net] = network["groups"]
    assert net["ports"] == 2
    assert net["complete"] is False
    assert net["uptime_pct"] == round((2 * 2 * 1440 - 120) / (2 * 2 * 1440) * 100, 2)
    assert net["data_completeness"] == pytest.approx(0.5, abs=0.01)
    # Utilization: available minutes are the known, elapsed ones; the day in progress is marked.
    assert util["complete"] is False
    assert util["data_completeness"] == pytest.approx(0.5, abs=0.01)
    assert 2 * 1440 <= util["avail_min"] < 2 * 1440 + 60          # the known minutes
    assert util["buckets"][-1]["complete"] is False
    assert all(b["complete"] for b in util["buckets"][:-1])
    assert datetime.fromisoformat(util["buckets"][-1]["bucket_end"]) <= now + HOUR
    assert util["buckets"][0]["avail_min"] == 0
    assert util["buckets"][0]["data_completeness"] == 0


async def test_station_local_days_and_months(db_url: str) -> None:
    """local_date / month in the station's zone: the fall-back day in Los Angeles is 25 hours."""
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        async with running_central(db_url) as central:
            await upsert_location(pool, LocationSpec(id="LOC-LA", name="LA", time_zone="America/Los_Angeles",
                                                     latitude=34.0, longitude=-118.2))
            await add_port(pool, "LAW", "LOC-LA")
            async with charger(central, "LAW") as call:
                await status(call, datetime(2025, 10, 1, tzinfo=UTC), "Available")
                await status(call, datetime(2025, 11, 2, 8, tzinfo=UTC), "Faulted", "GroundFailure")  # 00:00 PDT
                await status(call, datetime(2025, 11, 2, 9, tzinfo=UTC), "Available")
            await wait_stored(pool, "LAW", 3)
            async with central.api() as api:
                async def get(path: str, **params: Any) -> dict[str, Any]:
                    reply = await api.get(f"/api/v1/reporting{path}", params=params)
                    assert reply.status_code == 200, reply.text
                    return reply.json()  # type: ignore[no-any-return]

                day = await get("/ports/LAW/1/uptime", method="generic", local_date="2025-11-02")
                explicit = await get("/ports/LAW/1/uptime", method="generic", **{
                    "from": "2025-11-02T00:00:00-07:00", "to": "2025-11-03T00:00:00-08:00"})
                month = await get("/ports/LAW/1/uptime", method="generic", month="2025-11")
                fleet = await get("/uptime", method="generic", local_date="2025-11-02", group_by="port")
                outages = await get("/ports/LAW/1/outages", local_date="2025-11-02")
                util = await get("/stations/LOC-LA/utilization", local_date="2025-11-02", basis="calendar")
    finally:
        await pool.close()
    assert (day["period_start"], day["period_end"]) == ("2025-11-02T07:00:00Z", "2025-11-03T08:00:00Z")
    assert day["minutes_in_period"] == 1500
    assert day["uptime_pct"] == round((1500 - 60) / 1500 * 100, 2)          # 96.0
    assert day["complete"] is True
    assert day["data_completeness"] == 1.0
    assert day["meets_requirement"] is False
    assert day["meets_requirement_null_reasons"] == []
    assert day["window"] == "local_date=2025-11-02"
    for key in ("period_start", "period_end", "t_outage_min", "uptime_pct", "data_completeness"):
        assert explicit[key] == day[key], key
    assert month["minutes_in_period"] == 30 * 1440 + 60                     # November has the extra hour
    assert month["period_start"] == "2025-11-01T07:00:00Z"
    assert fleet["groups"][0]["uptime_pct"] == day["uptime_pct"]
    assert [o["outage_id"] for o in outages["outages"]] == ["2025-11-02T08:00:00Z"]
    assert util["avail_min"] == 1500


async def test_uk_reliability_applies_only_the_exclusions_reg_7_allows(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        async with running_central(db_url) as central:
            await upsert_location(pool, LocationSpec(id="LOC-UK", name="M1", country="GBR", time_zone="Europe/London",
                                                     latitude=52.0, longitude=-1.0))
            await add_port(pool, "UKR", "LOC-UK", kw=150)
            async with charger(central, "UKR") as call:
                await status(call, datetime(2025, 5, 1, tzinfo=UTC), "Available")
                await status(call, datetime(2025, 6, 10, 9, tzinfo=UTC), "Faulted", "OtherError")  # 10:00 BST
                await status(call, datetime(2025, 6, 10, 11, tzinfo=UTC), "Available")
            await wait_stored(pool, "UKR", 3)
            async with central.api() as api:
                base = "/api/v1/reporting/ports/UKR/1"
                for begin, end, reason in (("09:00", "10:00", "vandalism"), ("10:30", "11:00", "outside_hours")):
                    added = await api.post(f"{base}/exclusions", json={
                        "starts_at": f"2025-06-10T{begin}:00Z", "ends_at": f"2025-06-10T{end}:00Z",
                        "reason": reason, "notes": f"{reason} ticket", "claimed_by": "ops@example"})
                    assert added.status_code == 201, added.text
                uk = (await api.get(f"{base}/uptime", params={"method": "uk", "local_date": "2025-06-10"})).json()
                generic = (await api.get(f"{base}/uptime", params={"method": "generic",
                                                                    "local_date": "2025-06-10"})).json()
                network = (await api.get("/api/v1/reporting/uptime", params={
                    "method": "uk", "local_date": "2025-06-10", "group_by": "network"})).json()
    finally:
        await pool.close()
    # Reg. 7(5): the recorded closure (outside_hours) leaves the access hours; reg. 7 allows no
    # other exclusion, so the vandalism hour stays "not working" (reported, not applied).
    assert uk["denominator_minutes"] == 1440 - 30
    assert uk["t_outage_min"] == 90
    assert uk["uptime_pct"] == round((1 - 90 / 1410) * 100, 2)             # 93.62
    assert uk["exclusions_not_applied_min"] == {"vandalism": 60}
    assert uk["meets_requirement"] is False
    [group] = network["groups"]
    assert (group["uptime_pct"], group["meets_requirement"]) == (uk["uptime_pct"], False)
    # NEVI-style generic uptime applies both.
    assert generic["t_excluded_min"] == 90
    assert generic["excluded_by_reason"] == {"outside_hours": 30, "vandalism": 60}
    assert generic["uptime_pct"] == round((1440 - 30) / 1440 * 100, 2)
