"""Energy in a report bucket is the energy that flowed in it (issue 11, item 5): one rule for the
utilization reports (port, station, network, every bucket width, the hour-of-week profile) and the
India statement, through a real charger (OCPP 1.6 over a websocket) and the real HTTP API, before
and after the roll-up has run. Pure arithmetic of the rule: schemas/port_state.py, checked first.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

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
from ingest.rollup import refresh
from schemas.events import FLAG_IMPLAUSIBLE_UNIT, FLAG_REGISTER_DECREASED
from schemas.port_state import LOOKBACK, MeteredSession, register_steps, session_energy
from tests.central import PASSWORD, RunningCentral, running_central
from tests.chargers import basic_auth, iso

KOLKATA = ZoneInfo("Asia/Kolkata")


def ist(day: int, hour: int, minute: int = 0) -> datetime:
    """A time of the test history: August 2025, India time."""
    return datetime(2025, 8, day, hour, minute, tzinfo=KOLKATA).astimezone(UTC)


# --- the rule, pure ---------------------------------------------------------------------------------


def test_steps_hold_a_backwards_reading_and_use_meter_start_and_stop() -> None:
    s = MeteredSession(ist(10, 22), ist(11, 1, 30), 10_000, 40_000,
                       [(ist(10, 23), 20_000), (ist(11, 0, 30), 32_000), (ist(11, 0, 45), 25_000)])
    assert register_steps(s) == [(ist(10, 22), ist(10, 23), 10_000), (ist(10, 23), ist(11, 0, 30), 12_000),
                                 (ist(11, 0, 45), ist(11, 1, 30), 8_000)]   # 25 000 is held at 32 000
    # meterStop below meterStart: no energy, never negative
    assert register_steps(MeteredSession(ist(10, 1), ist(10, 2), 5_000, 4_000, [(ist(10, 1, 30), 4_500)])) == []


def test_energy_is_spread_over_quarter_hours_and_split_at_midnight() -> None:
    s = MeteredSession(ist(10, 22), ist(11, 1, 30), 10_000, 40_000, [(ist(10, 23), 20_000), (ist(11, 0, 30), 32_000)])
    day1 = sum(session_energy([s], (ist(10, 0), ist(11, 0))).values())
    day2 = sum(session_energy([s], (ist(11, 0), ist(12, 0))).values())
    assert (day1, day2) == (18_000, 12_000)          # 10 000 + 12 000 × 60/90; 4 000 + 8 000
    buckets = session_energy([s], (ist(10, 0), ist(12, 0)))
    assert buckets[ist(10, 22)] == 2_500              # 10 000 over four quarter hours
    assert buckets[ist(10, 23, 45)] == 2_000          # 12 000 over six
    # Without samples, meterStop − meterStart is spread over the session.
    plain = MeteredSession(ist(11, 15, 30), ist(11, 16, 30), 40_000, 46_000)
    assert session_energy([plain], (ist(11, 15, 30), ist(11, 16))) == {ist(11, 15, 30): 1_500, ist(11, 15, 45): 1_500}
    # An open session counts up to its latest reading; a session's energy counts in its first LOOKBACK.
    running = MeteredSession(ist(11, 10), None, 0, None, [(ist(11, 11), 3_000)])
    assert sum(session_energy([running], (ist(11, 0), ist(12, 0))).values()) == 3_000
    ghost = MeteredSession(ist(1, 0), ist(1, 0) + 2 * LOOKBACK, 0, 20_000)
    assert sum(session_energy([ghost], (ist(1, 0), ist(1, 0) + 3 * LOOKBACK)).values()) == pytest.approx(10_000)


# --- through OCPP and the API -----------------------------------------------------------------------


async def _history(central: RunningCentral) -> None:
    """Charger EN16 at an Asia/Kolkata site; S1 crosses local midnight with register samples (one in an
    implausible unit, one going backwards), S2 has none and crosses 16:00."""
    n = 0
    async with websockets.connect(f"{central.ws_base}/EN16", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                  additional_headers=basic_auth("EN16", PASSWORD)) as ws:
        async def call(action: str, payload: dict[str, Any]) -> dict[str, Any]:
            nonlocal n
            n += 1
            await ws.send(json.dumps([2, f"e{n}", action, payload]))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 15))
            assert reply[0] == 3, (action, reply)
            return dict(reply[2])

        async def status(at: datetime, state: str) -> None:
            await call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": state,
                                              "timestamp": iso(at)})

        async def register(tx: int, at: datetime, value: str, unit: str = "Wh") -> None:
            await call("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [
                {"timestamp": iso(at), "sampledValue": [
                    {"value": value, "measurand": "Energy.Active.Import.Register", "unit": unit}]}]})

        await call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
        await status(ist(10, 0), "Available")
        await status(ist(10, 22), "Preparing")
        tx = (await call("StartTransaction", {"connectorId": 1, "idTag": "EN-TAG", "meterStart": 10_000,
                                              "timestamp": iso(ist(10, 22))}))["transactionId"]
        await status(ist(10, 22, 5), "Charging")
        await register(tx, ist(10, 23), "20000")
        await register(tx, ist(11, 0), "35", "kW")        # not an energy unit: flagged, does not count
        await register(tx, ist(11, 0, 30), "32000")
        await register(tx, ist(11, 0, 45), "25000")       # the register went backwards: flagged
        await call("StopTransaction", {"transactionId": tx, "meterStop": 40_000, "timestamp": iso(ist(11, 1, 30)),
                                       "reason": "EVDisconnected"})
        await status(ist(11, 1, 30), "Finishing")
        await status(ist(11, 1, 40), "Available")
        await status(ist(11, 15, 30), "Charging")
        tx = (await call("StartTransaction", {"connectorId": 1, "idTag": "EN-TAG", "meterStart": 40_000,
                                              "timestamp": iso(ist(11, 15, 30))}))["transactionId"]
        await call("StopTransaction", {"transactionId": tx, "meterStop": 46_000, "timestamp": iso(ist(11, 16, 30)),
                                       "reason": "EVDisconnected"})
        await status(ist(11, 16, 30), "Available")


async def _reports(central: RunningCentral) -> dict[str, Any]:
    days = {"from": "2025-08-10T00:00:00+05:30", "to": "2025-08-13T00:00:00+05:30", "bucket": "day"}
    out = {}
    async with central.api() as api:
        for name, path, params in (
                ("station", "/api/v1/reporting/stations/LOC-EN/utilization", days),
                ("port", "/api/v1/reporting/ports/EN16/1/utilization", days),
                ("network", "/api/v1/reporting/network/utilization", days),
                ("network_hours", "/api/v1/reporting/network/utilization",
                 {"from": "2025-08-10T18:00:00Z", "to": "2025-08-10T21:00:00Z", "bucket": "hour", "tz": "UTC"}),
                ("station_week", "/api/v1/reporting/stations/LOC-EN/utilization", {**days, "bucket": "week"}),
                ("profile", "/api/v1/reporting/stations/LOC-EN/utilization/profile",
                 {"from": days["from"], "to": days["to"]}),
                ("india", "/api/v1/reporting/exports/india/site-energy-statement", {"year": 2025, "quarter": 3})):
            reply = await api.get(path, params=params)
            assert reply.status_code == 200, (name, reply.text)
            body = reply.json()
            body.pop("generated_at")
            out[name] = body
    return out


@pytest.mark.integration
async def test_a_session_across_midnight_splits_its_energy_between_the_days(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        # The embedded roll-up runs once at start (no data yet), then not again during the test.
        async with running_central(db_url, rollup_interval_s=3600.0) as central:
            await upsert_location(pool, LocationSpec(id="LOC-EN", name="Pune", country="IND", time_zone="Asia/Kolkata",
                                                     latitude=18.5, longitude=73.8))
            await add_charge_point(pool, ChargePointSpec(
                id="EN16", location_id="LOC-EN", password=PASSWORD,
                evses=(EvseSpec(1, (ConnectorSpec(power_type="AC_3_PHASE", rated_power_w=22_000),)),)))
            await central.add_token("EN-TAG")
            await _history(central)
            raw = await _reports(central)
            result = await refresh(pool)
            assert result.ran
            assert result.failed_ports == 0
            assert await pool.fetchval("SELECT count(*) FROM port_state_dirty") == 0
            days = [(r["day"].isoformat(), r["energy_wh"], r["energy_solar_wh"]) for r in await pool.fetch(
                "SELECT day, energy_wh, energy_solar_wh FROM port_state_day WHERE charge_point_id = 'EN16' "
                "AND energy_wh > 0 ORDER BY day")]
            rolled = await _reports(central)
            flags = {r["raw_value"]: r["quality_flags"] for r in await pool.fetch(
                "SELECT raw_value, quality_flags FROM meter_samples WHERE charge_point_id = 'EN16'")}
    finally:
        await pool.close()
    assert flags["35"] & FLAG_IMPLAUSIBLE_UNIT
    assert flags["25000"] & FLAG_REGISTER_DECREASED
    assert flags["32000"] == 0
    # Roll-up, per station-local day: S1 18 + 12 kWh; S2 6 kWh, 3 of them before 16:00 (solar).
    assert days == [("2025-08-10", 18_000, 0), ("2025-08-11", 18_000, 3_000)]
    assert rolled == raw                                         # identical before and after the roll-up
    for name in ("station", "port", "network"):
        buckets = raw[name]["buckets"]
        assert [b["bucket_start_local"][:10] for b in buckets] == ["2025-08-10", "2025-08-11", "2025-08-12"], name
        assert [b["energy_kwh"] for b in buckets] == [18.0, 18.0, 0.0], name
        assert [b["sessions"] for b in buckets] == [1, 1, 0], name            # sessions count on their start day
        assert [b["capacity_factor_pct"] for b in buckets] == [3.41, 3.41, 0.0], name   # 18 / (22 × 24)
        assert buckets[0]["charging_min"] > 0
        assert buckets[1]["charging_min"] > 0
        assert raw[name]["energy_kwh"] == 36.0
    assert raw["station_week"]["energy_kwh"] == 36.0
    # 22:00–01:00 IST in UTC hours: 16:30–19:30; the window 18:00–21:00 UTC holds 23:30 IST onwards.
    hours = {b["bucket_start"][11:13]: b["energy_kwh"] for b in raw["network_hours"]["buckets"]}
    # 23:30–00:30 IST: 12 kWh over 23:00–00:30 (the flagged 00:00 and 00:45 samples do not count) → 8;
    # 00:30–01:30 IST: 32 → 40 kWh → 8.
    assert hours == {"18": 8.0, "19": 8.0, "20": 0.0}
    profile = {(s["weekday"], s["hour"]): s["energy_kwh"] for s in raw["profile"]["slots"]}
    assert profile[(7, 22)] == 10.0                              # Sunday 10 August 22:00–23:00 IST
    assert profile[(1, 0)] == 8.0                                # Monday 00:00–01:00: 4 + 4
    assert sum(profile.values()) == 36.0
    (site,) = raw["india"]["sites"]
    assert (site["energy_kwh"], site["solar_kwh"], site["non_solar_kwh"], site["sessions"]) == (36.0, 3.0, 33.0, 2)
