"""India's quarterly site energy statement: the pure split arithmetic, then the endpoint on a
history built through the real OCPP interface (charger-side timestamps), every figure by hand."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
import websockets

from csms.reporting.energy_statement import (
    LOOKBACK,
    Split,
    in_solar_window,
    kwh,
    land_share,
    period_label,
    quarter_bounds,
    solar_edges,
    split,
)
from csms.store.registry import ChargePointSpec, EvseSpec, LocationSpec, add_charge_point, upsert_location
from csms.store.report_exports import site_energy
from ingest.rollup import refresh
from schemas.port_state import LOOKBACK as ENERGY_LOOKBACK
from tests.central import PASSWORD, running_central
from tests.chargers import basic_auth, iso

UTC_ZONE = ZoneInfo("UTC")
KOLKATA = ZoneInfo("Asia/Kolkata")
NEW_YORK = ZoneInfo("America/New_York")
EVER = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
STATEMENT_HEADER = ("location_id,location_name,time_zone,period,period_start_utc,period_end_utc,period_start_local,"
                    "period_end_local,period_complete,energy_kwh,solar_kwh,non_solar_kwh,sessions,sessions_carried_in,"
                    "land_share_rate_per_kwh,land_share_amount,currency,formula_version,generated_at")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def ist(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=KOLKATA).astimezone(UTC)


def approx(part: Split, solar: float, other: float) -> None:
    assert part.solar_wh == pytest.approx(solar, abs=1e-6)
    assert part.other_wh == pytest.approx(other, abs=1e-6)


# --- pure arithmetic -------------------------------------------------------------------------------


def test_a_step_crossing_09_00_and_16_00_is_cut_at_both() -> None:
    # 08:00–17:00 at 1 kWh/h: 09:00–16:00 is solar (7 kWh), 08–09 and 16–17 are not (2 kWh).
    approx(split(utc(2026, 8, 10, 8), utc(2026, 8, 10, 17), 9000, zone=UTC_ZONE, period=EVER), 7000, 2000)
    # Ending exactly at 09:00, or starting exactly at 16:00: nothing solar.
    approx(split(utc(2026, 8, 10, 8), utc(2026, 8, 10, 9), 500, zone=UTC_ZONE, period=EVER), 0, 500)
    approx(split(utc(2026, 8, 10, 16), utc(2026, 8, 10, 17), 500, zone=UTC_ZONE, period=EVER), 0, 500)


def test_a_session_crossing_midnight_and_one_spanning_two_days() -> None:
    approx(split(utc(2026, 8, 10, 22), utc(2026, 8, 11, 2), 4000, zone=UTC_ZONE, period=EVER), 0, 4000)
    # 08:00 day 1 → 10:00 day 2 (26 h, 2.6 kWh): 7 solar hours on day 1, 1 on day 2.
    approx(split(utc(2026, 8, 10, 8), utc(2026, 8, 11, 10), 2600, zone=UTC_ZONE, period=EVER), 800, 1800)


def test_only_the_part_inside_the_quarter_counts() -> None:
    q3 = quarter_bounds(2026, 3, UTC_ZONE)
    assert q3 == (utc(2026, 7, 1), utc(2026, 10, 1))
    # 22:00 on 30 June → 02:00 on 1 July, 8 kWh uniformly: half of it flowed in Q3, none solar.
    approx(split(utc(2026, 6, 30, 22), utc(2026, 7, 1, 2), 8000, zone=UTC_ZONE, period=q3), 0, 4000)
    # The other end: 15:00 on 30 September → 15:00 on 1 October (24 kWh), Q3 keeps 15:00–24:00.
    approx(split(utc(2026, 9, 30, 15), utc(2026, 10, 1, 15), 24000, zone=UTC_ZONE, period=q3), 1000, 8000)
    approx(split(utc(2026, 5, 1), utc(2026, 6, 1), 1000, zone=UTC_ZONE, period=q3), 0, 0)


def test_asia_kolkata_plus_05_30() -> None:
    q3 = quarter_bounds(2026, 3, KOLKATA)
    assert q3 == (utc(2026, 6, 30, 18, 30), utc(2026, 9, 30, 18, 30))
    # 03:00–04:00 UTC is 08:30–09:30 IST: half solar.
    approx(split(utc(2026, 8, 10, 3), utc(2026, 8, 10, 4), 1000, zone=KOLKATA, period=q3), 500, 500)
    # 10:00–11:00 UTC is 15:30–16:30 IST: half solar; in UTC terms this would be all non-solar.
    approx(split(utc(2026, 8, 10, 10), utc(2026, 8, 10, 11), 1000, zone=KOLKATA, period=q3), 500, 500)
    # The quarter starts at local midnight: 30 June 18:00–19:00 UTC keeps its last 30 minutes.
    approx(split(utc(2026, 6, 30, 18), utc(2026, 6, 30, 19), 1000, zone=KOLKATA, period=q3), 0, 500)


def test_dst_days_keep_wall_clock_solar_hours() -> None:
    # New York, 8 March 2026: 00:00–12:00 local is 11 real hours; 09:00–12:00 is 3 of them.
    start = datetime(2026, 3, 8, 0, tzinfo=NEW_YORK)
    end = datetime(2026, 3, 8, 12, tzinfo=NEW_YORK)
    assert end.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=11)
    approx(split(start.astimezone(UTC), end.astimezone(UTC), 11_000, zone=NEW_YORK, period=EVER), 3000, 8000)
    # 1 November 2026: 00:00–12:00 local is 13 real hours.
    start, end = datetime(2026, 11, 1, 0, tzinfo=NEW_YORK), datetime(2026, 11, 1, 12, tzinfo=NEW_YORK)
    approx(split(start.astimezone(UTC), end.astimezone(UTC), 13_000, zone=NEW_YORK, period=EVER), 3000, 10_000)
    # The quarter around a DST change still starts and ends at local midnight.
    assert quarter_bounds(2026, 2, NEW_YORK) == (utc(2026, 4, 1, 4), utc(2026, 7, 1, 4))
    assert quarter_bounds(2026, 1, NEW_YORK) == (utc(2026, 1, 1, 5), utc(2026, 4, 1, 4))


def test_solar_edges_name_the_class_of_a_moment() -> None:
    edges = solar_edges(NEW_YORK, utc(2026, 3, 8, 12), utc(2026, 3, 9, 12))
    assert edges[0] == datetime(2026, 3, 7, 9, tzinfo=NEW_YORK)                 # the local day before
    assert edges[-1] == datetime(2026, 3, 10, 16, tzinfo=NEW_YORK)              # the local day after
    assert edges[2:4] == [utc(2026, 3, 8, 13), utc(2026, 3, 8, 20)]              # 09:00/16:00 EDT on the DST day
    assert edges == sorted(edges)

    def count(moment: datetime) -> int:
        return sum(e <= moment for e in edges)

    for moment in (utc(2026, 3, 8, 13), utc(2026, 3, 8, 19, 59), utc(2026, 3, 8, 20), utc(2026, 3, 9, 3)):
        assert (count(moment) % 2 == 1) is in_solar_window(moment, NEW_YORK)


def test_an_instantaneous_step_belongs_to_its_instant() -> None:
    at = utc(2026, 8, 10, 12)
    approx(split(at, at, 100, zone=UTC_ZONE, period=EVER), 100, 0)
    approx(split(at, at, 100, zone=KOLKATA, period=EVER), 0, 100)  # 17:30 IST
    approx(split(at, at, 100, zone=UTC_ZONE, period=(at + timedelta(seconds=1), EVER[1])), 0, 0)
    with pytest.raises(ValueError, match="before"):
        split(at, at - timedelta(seconds=1), 1, zone=UTC_ZONE, period=EVER)


def test_quarter_conventions_and_rounding() -> None:
    assert quarter_bounds(2026, 4, UTC_ZONE) == (utc(2026, 10, 1), utc(2027, 1, 1))
    assert quarter_bounds(2026, 1, UTC_ZONE, "fiscal_in") == (utc(2026, 4, 1), utc(2026, 7, 1))
    assert quarter_bounds(2026, 4, UTC_ZONE, "fiscal_in") == (utc(2027, 1, 1), utc(2027, 4, 1))
    assert quarter_bounds(2026, 3, KOLKATA, "fiscal_in") == (utc(2026, 9, 30, 18, 30), utc(2026, 12, 31, 18, 30))
    assert period_label(2026, 3, "calendar") == "2026-Q3"
    assert period_label(2026, 4, "fiscal_in") == "FY2026-27 Q4"
    with pytest.raises(ValueError, match="quarter"):
        quarter_bounds(2026, 5, UTC_ZONE)
    assert kwh(12_345.5) == Decimal("12.346")  # half up to the watt-hour
    assert land_share(Decimal("12.345"), Decimal("1")) == Decimal("12.35")
    assert land_share(Decimal("45.000"), Decimal("1.5")) == Decimal("67.50")
    assert (Split(1, 2) + Split(3, 4)).total_wh == 10


# --- through OCPP and the API -----------------------------------------------------------------------


class Wire:
    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws, self.n = ws, 0

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.n += 1
        await self.ws.send(json.dumps([2, f"x{self.n}", action, payload]))
        reply = json.loads(await asyncio.wait_for(self.ws.recv(), 15))
        assert reply[0] == 3, (action, reply)
        return dict(reply[2])


def _register(wh: float) -> list[dict[str, Any]]:
    return [{"value": f"{wh:.0f}", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]


async def _session_16(w: Wire, start: datetime, stop: datetime, meter_start: int, meter_stop: int,
                      samples: list[tuple[datetime, float]]) -> None:
    tx = (await w.call("StartTransaction", {"connectorId": 1, "idTag": "IN-TAG", "meterStart": meter_start,
                                            "timestamp": iso(start)}))["transactionId"]
    for at, wh in samples:
        await w.call("MeterValues", {"connectorId": 1, "transactionId": tx,
                                     "meterValue": [{"timestamp": iso(at), "sampledValue": _register(wh)}]})
    await w.call("StopTransaction", {"transactionId": tx, "meterStop": meter_stop, "timestamp": iso(stop),
                                     "reason": "EVDisconnected"})


async def _india_history(ws_base: str) -> None:
    """Charger IN1 at an Asia/Kolkata site, in time order (the register only goes up)."""
    async with websockets.connect(f"{ws_base}/IN1", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                  additional_headers=basic_auth("IN1", PASSWORD)) as ws:
        w = Wire(ws)
        await w.call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
        # S2: 30 June 22:00 → 1 July 02:00 IST, 8 kWh, no samples: 4 kWh (00:00–02:00) in Q3, non-solar.
        await _session_16(w, ist(2026, 6, 30, 22), ist(2026, 7, 1, 2), 50_000, 58_000, [])
        # S1: 10 August 08:00–10:00 IST at 11 kWh/h, samples every 15 min: 11 kWh solar, 11 kWh not.
        await _session_16(w, ist(2026, 8, 10, 8), ist(2026, 8, 10, 10), 100_000, 122_000,
                          [(ist(2026, 8, 10, 8) + timedelta(minutes=15 * k), 100_000 + 2_750 * k) for k in range(1, 8)])
        # S4: 11 August 15:50–16:20 IST, one sample at 16:05: 15:50–16:05 (3 kWh) is 10/15 solar → 2 + 1 + 3.
        await _session_16(w, ist(2026, 8, 11, 15, 50), ist(2026, 8, 11, 16, 20), 122_000, 128_000,
                          [(ist(2026, 8, 11, 16, 5), 125_000)])
        # S5: 12 August 11:00–12:00 IST, 7 kWh, no samples: all solar.
        await _session_16(w, ist(2026, 8, 12, 11), ist(2026, 8, 12, 12), 128_000, 135_000, [])
        # S3: 30 September 23:00 → 1 October 01:00 IST at 6 kWh/h, samples every 30 min: 6 kWh in Q3.
        await _session_16(w, ist(2026, 9, 30, 23), ist(2026, 10, 1, 1), 135_000, 147_000,
                          [(ist(2026, 9, 30, 23) + timedelta(minutes=30 * k), 135_000 + 3_000 * k) for k in (1, 2, 3)])


async def _berlin_history(ws_base: str) -> None:
    """Charger DE1 (OCPP 2.0.1) in Europe/Berlin. 29 March 2026, the day clocks go forward: 00:00–12:00
    local is 11 real hours, 11 kWh with no samples, so 3 kWh (09:00–12:00) solar. 10 August 08:00–10:00
    CEST at 11 kWh/h, samples every 15 min: 11 kWh solar, 11 kWh not."""
    berlin = ZoneInfo("Europe/Berlin")
    start = datetime(2026, 8, 10, 8, tzinfo=berlin).astimezone(UTC)

    def mv(at: datetime, wh: float, context: str) -> list[dict[str, Any]]:
        return [{"timestamp": iso(at), "sampledValue": [{"value": wh, "context": context,
                                                         "unitOfMeasure": {"unit": "Wh"},
                                                         "measurand": "Energy.Active.Import.Register"}]}]

    async with websockets.connect(f"{ws_base}/DE1", subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                                  additional_headers=basic_auth("DE1", PASSWORD)) as ws:
        w = Wire(ws)
        await w.call("BootNotification", {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"})
        dst_start = datetime(2026, 3, 29, 0, tzinfo=berlin).astimezone(UTC)
        dst_end = datetime(2026, 3, 29, 12, tzinfo=berlin).astimezone(UTC)
        assert dst_end - dst_start == timedelta(hours=11)
        await w.call("TransactionEvent", {
            "eventType": "Started", "timestamp": iso(dst_start), "triggerReason": "Authorized", "seqNo": 0,
            "transactionInfo": {"transactionId": "DE1-DST"}, "evse": {"id": 1, "connectorId": 1},
            "idToken": {"idToken": "IN-TAG", "type": "ISO14443"}, "meterValue": mv(dst_start, 0, "Transaction.Begin")})
        await w.call("TransactionEvent", {
            "eventType": "Ended", "timestamp": iso(dst_end), "triggerReason": "EVDeparted", "seqNo": 1,
            "transactionInfo": {"transactionId": "DE1-DST", "stoppedReason": "EVDisconnected"},
            "meterValue": mv(dst_end, 11_000, "Transaction.End")})
        await w.call("TransactionEvent", {
            "eventType": "Started", "timestamp": iso(start), "triggerReason": "Authorized", "seqNo": 0,
            "transactionInfo": {"transactionId": "DE1-TX", "chargingState": "Charging"},
            "evse": {"id": 1, "connectorId": 1}, "idToken": {"idToken": "IN-TAG", "type": "ISO14443"},
            "meterValue": mv(start, 11_000, "Transaction.Begin")})
        for k in range(1, 8):
            at = start + timedelta(minutes=15 * k)
            await w.call("TransactionEvent", {
                "eventType": "Updated", "timestamp": iso(at), "triggerReason": "MeterValuePeriodic", "seqNo": k,
                "transactionInfo": {"transactionId": "DE1-TX"},
                "meterValue": mv(at, 11_000 + 2_750 * k, "Sample.Periodic")})
        end = start + timedelta(hours=2)
        await w.call("TransactionEvent", {
            "eventType": "Ended", "timestamp": iso(end), "triggerReason": "EVDeparted", "seqNo": 8,
            "transactionInfo": {"transactionId": "DE1-TX", "stoppedReason": "EVDisconnected"},
            "meterValue": mv(end, 33_000, "Transaction.End")})


@pytest.mark.integration
async def test_site_energy_statement_through_ocpp(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        async with running_central(db_url) as central:
            for loc, zone in (("IN-SOLAR", "Asia/Kolkata"), ("IN-EMPTY", "Asia/Kolkata"), ("DE-BER", "Europe/Berlin")):
                await upsert_location(pool, LocationSpec(id=loc, name=f"Site {loc}", time_zone=zone, country="IND"))
            for cp, loc in (("IN1", "IN-SOLAR"), ("DE1", "DE-BER")):
                await add_charge_point(pool, ChargePointSpec(id=cp, location_id=loc, password=PASSWORD,
                                                             evses=(EvseSpec(1),)))
            await central.add_token("IN-TAG")
            await _india_history(central.ws_base)
            await _berlin_history(central.ws_base)
            base = "/api/v1/reporting/exports/india/site-energy-statement"
            async with central.api() as api:
                q3 = {"year": 2026, "quarter": 3}
                default = (await api.get(base, params=q3)).json()
                custom = await api.get(base, params={**q3, "location_id": ["IN-SOLAR", "DE-BER"],
                                                     "land_share_rate_per_kwh": 1.5})
                as_csv = await api.get(base, params={**q3, "location_id": "IN-SOLAR", "format": "csv",
                                                     "land_share_rate_per_kwh": 1.5})
                fiscal = (await api.get(base, params={"year": 2026, "quarter": 2, "quarter_convention": "fiscal_in",
                                                      "location_id": "IN-SOLAR"})).json()
                q4 = (await api.get(base, params={"year": 2026, "quarter": 4, "location_id": "IN-SOLAR"})).json()
                q1_berlin = (await api.get(base, params={"year": 2026, "quarter": 1, "location_id": "DE-BER"})).json()
                bad: tuple[tuple[str, dict[str, Any]], ...] = (
                    ("year", {"year": 1999, "quarter": 1}), ("quarter", {"year": 2026, "quarter": 5}),
                    ("rate", {**q3, "land_share_rate_per_kwh": -1}), ("nan", {**q3, "land_share_rate_per_kwh": "nan"}),
                    ("future", {"year": 2099, "quarter": 1}), ("unknown", {**q3, "location_id": "NOPE"}))
                errors = {name: await api.get(base, params=params) for name, params in bad}
                # A location whose time zone is not an IANA name (the registry takes any text) is named.
                await upsert_location(pool, LocationSpec(id="BAD-TZ", name="?", time_zone="Mars/Olympus_Mons"))
                broken = await api.get(base, params=q3)
    finally:
        await pool.close()

    sites = {s["location_id"]: s for s in default["sites"]}
    assert list(sites) == ["DE-BER", "IN-EMPTY", "IN-SOLAR"]
    india = sites["IN-SOLAR"]
    # S1 11 + S4 2 + S5 7 solar; S2 4 + S1 11 + S4 4 + S3 6 non-solar.
    assert (india["solar_kwh"], india["non_solar_kwh"], india["energy_kwh"]) == (20.0, 25.0, 45.0)
    assert (india["sessions"], india["sessions_carried_in"]) == (4, 1)
    assert india["land_share_amount"] == 45.0                                   # ₹1/kWh by default
    assert india["period_start_utc"] == "2026-06-30T18:30:00Z"
    assert india["period_end_local"] == "2026-10-01T00:00:00+05:30"
    assert india["period_complete"] is True
    berlin = sites["DE-BER"]                                                    # 08:00–10:00 CEST at 11 kWh/h
    assert (berlin["solar_kwh"], berlin["non_solar_kwh"], berlin["sessions"]) == (11.0, 11.0, 1)
    assert berlin["period_start_local"] == "2026-07-01T00:00:00+02:00"
    assert sites["IN-EMPTY"]["energy_kwh"] == 0
    assert sites["IN-EMPTY"]["sessions"] == 0
    assert default["totals"] == {"energy_kwh": 67.0, "solar_kwh": 31.0, "non_solar_kwh": 36.0, "sessions": 5,
                                 "sessions_carried_in": 1, "land_share_amount": 67.0}
    assert default["currency"] == "INR"
    assert default["land_share_rate_per_kwh"] == 1.0
    assert default["period"] == "2026-Q3"
    assert default["quarter_convention"] == "calendar"
    assert default["solar_window_local"] == {"start": "09:00", "end": "16:00"}
    assert default["formula_version"]
    assert default["generated_at"].endswith("Z")
    assert "uniformly" in default["energy_attribution"]

    assert custom.status_code == 200
    body = custom.json()
    assert [s["land_share_amount"] for s in body["sites"]] == [33.0, 67.5]       # 22 × 1.5, 45 × 1.5
    assert body["totals"]["land_share_amount"] == 100.5

    assert as_csv.content.startswith(b"\xef\xbb\xbf")
    text = as_csv.content.decode("utf-8-sig")
    assert text.split("\r\n", 1)[0] == STATEMENT_HEADER
    (row,) = list(csv.DictReader(io.StringIO(text)))
    assert row["energy_kwh"] == "45.000"
    assert row["solar_kwh"] == "20.000"
    assert row["non_solar_kwh"] == "25.000"
    assert row["land_share_amount"] == "67.50"
    assert row["land_share_rate_per_kwh"] == "1.5"
    assert row["currency"] == "INR"
    assert row["period"] == "2026-Q3"
    assert row["sessions_carried_in"] == "1"

    # FY 2026-27 Q2 is July–September 2026: the same figures under another label.
    assert fiscal["period"] == "FY2026-27 Q2"
    assert fiscal["sites"][0]["energy_kwh"] == 45.0
    # Q4 2026 (under way) holds S3's last hour (6 kWh, 00:00–01:00 IST), not its start.
    assert (q4["sites"][0]["energy_kwh"], q4["sites"][0]["sessions"], q4["sites"][0]["sessions_carried_in"]) == (
        6.0, 0, 1)
    assert q4["sites"][0]["period_complete"] is False

    # The DST day: 11 kWh over 11 real hours, 3 of them (09:00–12:00 CEST) solar.
    assert (q1_berlin["sites"][0]["solar_kwh"], q1_berlin["sites"][0]["non_solar_kwh"]) == (3.0, 8.0)
    assert q1_berlin["sites"][0]["period_start_local"] == "2026-01-01T00:00:00+01:00"
    assert q1_berlin["sites"][0]["period_end_local"] == "2026-04-01T00:00:00+02:00"

    for name, reply in errors.items():
        assert reply.status_code == (404 if name == "unknown" else 400), (name, reply.text)
    assert "quarter must be" in errors["quarter"].json()["detail"]
    assert "land_share_rate_per_kwh" in errors["nan"].json()["detail"]
    assert "has not begun" in errors["future"].json()["detail"]
    assert broken.status_code == 409
    assert "BAD-TZ" in broken.json()["detail"]


# --- the SQL shortcuts agree with the pure arithmetic ---------------------------------------------------


def _reference(sessions: list[dict[str, Any]], zone: ZoneInfo,
               period: tuple[datetime, datetime]) -> tuple[Split, int, int]:
    """Every register step of every session through split(), with no shortcut: the one rule of every
    report (a session's energy counts in its first ENERGY_LOOKBACK; an open one up to its last sample)."""
    total, started, carried = Split(), 0, 0
    for s in sessions:
        start, stop, w0, w1 = s["start"], s["stop"], s["w0"], s["w1"]
        if period[0] - LOOKBACK <= start < period[1] and (start >= period[0] or stop is None or stop > period[0]):
            started, carried = (started + 1, carried) if start >= period[0] else (started, carried + 1)
        points = [(start, w0)] + [(t, v) for t, v in s["samples"] if start <= t and (stop is None or t <= stop)
                                  and w0 <= v and (w1 is None or v <= w1)]
        if stop is not None and w1 is not None:
            points.append((stop, w1))
        points.sort()
        highest = [(t, max(v for _, v in points[: i + 1])) for i, (t, _) in enumerate(points)]
        inside = (max(period[0], start), min(period[1], start + ENERGY_LOOKBACK))
        for (t0, a), (t1, b) in itertools.pairwise(highest):
            if b > a and inside[0] < inside[1]:
                total = total + split(t0, t1, b - a, zone=zone, period=inside)
    return total, started, carried


def _random_sessions(rnd: random.Random, anchors: list[datetime], count: int) -> list[dict[str, Any]]:
    out = []
    for n in range(count):
        start = rnd.choice(anchors) + timedelta(minutes=rnd.randint(-36 * 60, 36 * 60))
        length = timedelta(minutes=rnd.choice((0, rnd.randint(1, 600), rnd.randint(600, 2400))))
        w0 = float(rnd.randint(0, 10_000))
        stop = None if n % 17 == 0 else start + length                       # some never ended
        w1 = None if stop is None else w0 + rnd.randint(0, 40_000)
        times = sorted(start + timedelta(seconds=rnd.randint(0, int(length.total_seconds()) + 3600))
                       for _ in range(rnd.choice((0, 0, 1, 3, 12))))
        values = sorted(rnd.uniform(w0 - 500, (w1 if w1 is not None else w0 + 40_000) + 500) for _ in times)
        if len(values) > 2:
            values[1], values[2] = values[2], values[1]                      # a register that goes backwards
        out.append({"uid": f"T{n}", "start": start, "stop": stop, "w0": w0, "w1": w1,
                    "samples": list(zip(times, values, strict=True))})
    return out


@pytest.mark.integration
async def test_sql_attribution_matches_the_pure_split_across_dst_and_quarter_edges(db_url: str) -> None:
    """Random sessions written straight into the tables (no OCPP: this compares two computations of the same
    figures): the quarter-hour attribution, from raw rows and from the roll-up, must not change a watt-hour
    against the pure split() of every register step."""
    rnd = random.Random(20261125)
    zones = {"NY": ZoneInfo("America/New_York"), "KOL": KOLKATA}
    periods = {k: quarter_bounds(2026, 1, z) for k, z in zones.items()}  # New York's clocks go forward 8 March
    anchors = [*periods["NY"], *periods["KOL"], utc(2026, 3, 8, 7), utc(2026, 2, 10, 3, 30), utc(2026, 2, 10, 14),
               utc(2026, 3, 8, 13), utc(2026, 3, 8, 20)]
    sessions = {k: _random_sessions(rnd, anchors, 120) for k in zones}
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    try:
        await pool.executemany("INSERT INTO locations (id, name, time_zone) VALUES ($1, $1, $2)",
                               [(k, z.key) for k, z in zones.items()])
        await pool.executemany("INSERT INTO charge_points (id, location_id) VALUES ($1, $1)", [(k,) for k in zones])
        await pool.executemany("INSERT INTO evses (charge_point_id, evse_id, uid) VALUES ($1, 1, $1)",
                               [(k,) for k in zones])
        for cp, items in sessions.items():
            await pool.executemany(
                "INSERT INTO transactions (charge_point_id, transaction_uid, evse_id, started_at, stopped_at, "
                "meter_start_wh, meter_stop_wh) VALUES ($1, $2, 1, $3, $4, $5, $6)",
                [(cp, s["uid"], s["start"], s["stop"], s["w0"], s["w1"]) for s in items])
            await pool.executemany(
                "INSERT INTO meter_samples (time, charge_point_id, transaction_uid, measurand, location, value, unit, "
                "raw_value, received_at) VALUES ($1, $2, $3, 'Energy.Active.Import.Register', 'Outlet', $4, 'Wh', "
                "'', $1)", [(t, cp, s["uid"], v) for s in items for t, v in s["samples"]])
        sites = {k: (z.key, periods[k]) for k, z in zones.items()}
        raw = await site_energy(pool, sites)
        assert (await refresh(pool)).ran
        rolled = await site_energy(pool, sites)
    finally:
        await pool.close()
    for got in (raw, rolled):
        for k, zone in zones.items():
            want = _reference(sessions[k], zone, periods[k])
            assert got[k][1:] == want[1:], k
            assert got[k][0].solar_wh == pytest.approx(want[0].solar_wh, abs=1e-6), k
            assert got[k][0].other_wh == pytest.approx(want[0].other_wh, abs=1e-6), k
            assert want[0].solar_wh > 1000                                       # the data exercises both classes
            assert want[0].other_wh > 1000
