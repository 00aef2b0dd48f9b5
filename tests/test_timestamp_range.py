"""Implausible timestamps (issue 11, item 16): a status, sample, transaction or event whose timestamp
is before 2010, in the future or beyond what UTC can represent is stored at its receive time, flagged
and counted, its text kept; the roll-up and the reports keep working. And one port's data can never
stop the roll-up for the others: it is isolated, logged once, counted, and retried.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import websockets

from csms.ocpp.normalise import event_time
from csms.store.registry import ChargePointSpec, EvseSpec, LocationSpec, add_charge_point, upsert_location
from ingest.rollup import RefreshResult, refresh
from schemas.events import FLAG_ANCIENT_TIMESTAMP, FLAG_FUTURE_TIMESTAMP, FLAG_UNPARSEABLE_VALUE
from tests.central import PASSWORD, RunningCentral, running_central
from tests.chargers import basic_auth, iso

FAR_FUTURE = "9999-12-31T23:59:59.999999+14:00"
FAR_PAST = "0001-01-01T00:00:00-12:00"
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)

Call = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


async def _refresh(pool: asyncpg.Pool) -> RefreshResult:
    """One refresh of our own (the central system's roll-up loop may hold the lock for a moment)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        result = await refresh(pool)
        if result.ran or loop.time() > deadline:
            return result
        await asyncio.sleep(0.05)


def test_the_rule_for_every_timestamp() -> None:
    assert event_time("2026-06-01T11:00:00Z", NOW).time == datetime(2026, 6, 1, 11, tzinfo=UTC)
    assert event_time("2026-06-01T12:05:00Z", NOW).flags == 0                   # within the 5-minute tolerance
    for raw, flag in ((FAR_FUTURE, FLAG_FUTURE_TIMESTAMP), (FAR_PAST, FLAG_ANCIENT_TIMESTAMP),
                      ("2026-06-01T12:06:00Z", FLAG_FUTURE_TIMESTAMP), ("1970-01-01T00:00:00Z", FLAG_ANCIENT_TIMESTAMP),
                      ("0001-01-01T00:00:00+01:00", FLAG_ANCIENT_TIMESTAMP),   # before year 1 in UTC
                      ("9999-12-31T23:59:59-01:00", FLAG_FUTURE_TIMESTAMP),    # after 9999 in UTC
                      ("yesterday", FLAG_UNPARSEABLE_VALUE)):
        at = event_time(raw, NOW)
        assert (at.time, at.flags, at.raw) == (NOW, flag, raw), raw
    assert event_time(FAR_PAST, NOW, index=2).time == NOW + timedelta(microseconds=2)
    assert event_time(None, NOW) == event_time(None, NOW)
    assert (event_time(None, NOW).time, event_time(None, NOW).flags) == (NOW, 0)  # absent: the receive time


@asynccontextmanager
async def _charger(central: RunningCentral, cp_id: str, version: str) -> AsyncIterator[Call]:
    n = 0
    async with websockets.connect(f"{central.ws_base}/{cp_id}", subprotocols=[version],  # type: ignore[list-item]
                                  additional_headers=basic_auth(cp_id, PASSWORD)) as ws:
        async def call(action: str, payload: dict[str, Any]) -> dict[str, Any]:
            nonlocal n
            n += 1
            await ws.send(json.dumps([2, f"t{n}", action, payload]))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 15))
            assert reply[0] == 3, (action, reply)
            return dict(reply[2])

        if version == "ocpp1.6":
            await call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
        else:
            await call("BootNotification", {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"})
        yield call


async def _send_bad_timestamps(central: RunningCentral) -> None:
    async with _charger(central, "TS16", "ocpp1.6") as call:
        for raw in (FAR_FUTURE, FAR_PAST):
            await call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available",
                                              "timestamp": raw})
        tx = (await call("StartTransaction", {"connectorId": 1, "idTag": "TS-TAG", "meterStart": 100,
                                              "timestamp": FAR_FUTURE}))["transactionId"]
        await call("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [
            {"timestamp": raw, "sampledValue": [{"value": str(200 + k), "measurand": "Energy.Active.Import.Register"}]}
            for k, raw in enumerate((FAR_PAST, FAR_FUTURE))]})
        await call("StopTransaction", {"transactionId": tx, "meterStop": 300, "timestamp": FAR_PAST})
    async with _charger(central, "TS201", "ocpp2.0.1") as call:
        await call("StatusNotification", {"timestamp": FAR_PAST, "connectorStatus": "Available", "evseId": 1,
                                          "connectorId": 1})
        await call("TransactionEvent", {
            "eventType": "Started", "timestamp": FAR_FUTURE, "triggerReason": "Authorized", "seqNo": 0,
            "transactionInfo": {"transactionId": "TS-TX", "chargingState": "Charging"},
            "evse": {"id": 1, "connectorId": 1}, "idToken": {"idToken": "TS-TAG", "type": "ISO14443"},
            "meterValue": [{"timestamp": FAR_PAST, "sampledValue": [
                {"value": 5, "measurand": "Energy.Active.Import.Register", "context": "Transaction.Begin"}]}]})
        await call("NotifyEvent", {"generatedAt": iso(datetime.now(UTC)), "seqNo": 0, "eventData": [{
            "eventId": 1, "timestamp": FAR_FUTURE, "trigger": "Delta", "actualValue": "Occupied",
            "eventNotificationType": "HardWiredNotification",
            "component": {"name": "Connector", "evse": {"id": 1, "connectorId": 1}},
            "variable": {"name": "AvailabilityState"}}]})


async def _every_report(api: httpx.AsyncClient) -> dict[str, int]:
    now = datetime.now(UTC)
    window = {"from": iso(now - timedelta(days=2)), "to": iso(now + timedelta(hours=1))}
    quarter = {"year": now.year, "quarter": (now.month - 1) // 3 + 1}
    out = {}
    for name, path, params in (
            ("station", "/api/v1/reporting/stations/LOC-TS/utilization", {**window, "bucket": "hour"}),
            ("port", "/api/v1/reporting/ports/TS16/1/utilization", {**window, "bucket": "day"}),
            ("network", "/api/v1/reporting/network/utilization", {**window, "bucket": "day"}),
            ("profile", "/api/v1/reporting/stations/LOC-TS/utilization/profile", window),
            ("uptime", "/api/v1/reporting/uptime", {"method": "generic", **window}),
            ("port_uptime", "/api/v1/reporting/ports/TS201/1/uptime", {"method": "generic", **window}),
            ("outages", "/api/v1/reporting/ports/TS16/1/outages", window),
            ("module2", "/api/v1/reporting/exports/ev-chart/module-2.csv", quarter),
            ("module4", "/api/v1/reporting/exports/ev-chart/module-4.csv", quarter),
            ("india", "/api/v1/reporting/exports/india/site-energy-statement", quarter),
            ("sessions", "/api/v1/reporting/exports/sessions.csv", window)):
        reply = await api.get(path, params=params)
        out[name] = reply.status_code
    return out


@pytest.mark.integration
async def test_implausible_timestamps_through_the_gateway(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        async with running_central(db_url, rollup_interval_s=3600.0) as central:
            await upsert_location(pool, LocationSpec(id="LOC-TS", name="Clock", time_zone="Pacific/Kiritimati",
                                                     latitude=1.9, longitude=-157.4))
            for cp in ("TS16", "TS201"):
                await add_charge_point(pool, ChargePointSpec(id=cp, location_id="LOC-TS", password=PASSWORD,
                                                             evses=(EvseSpec(1),)))
            await central.add_token("TS-TAG")
            before = datetime.now(UTC)
            await _send_bad_timestamps(central)
            after = datetime.now(UTC)
            statuses = await pool.fetch("SELECT charge_point_id, time, quality_flags, raw_timestamp FROM "
                                        "connector_status ORDER BY charge_point_id, raw_timestamp")
            samples = await pool.fetch("SELECT time, quality_flags, raw_timestamp, received_at FROM meter_samples")
            sessions = await pool.fetch("SELECT charge_point_id, started_at, stopped_at, quality_flags FROM "
                                        "transactions ORDER BY charge_point_id")
            result = await _refresh(pool)
            again = await _refresh(pool)
            async with central.api() as api:
                codes = await _every_report(api)
                metrics = (await api.get("/metrics")).text
    finally:
        await pool.close()
    assert result.ran
    assert result.failed_ports == 0
    assert again.ran
    assert all(code == 200 for code in codes.values()), codes
    assert [(r["charge_point_id"], r["raw_timestamp"], r["quality_flags"]) for r in statuses] == [
        ("TS16", FAR_PAST, FLAG_ANCIENT_TIMESTAMP), ("TS16", FAR_FUTURE, FLAG_FUTURE_TIMESTAMP),
        ("TS201", FAR_PAST, FLAG_ANCIENT_TIMESTAMP), ("TS201", FAR_FUTURE, FLAG_FUTURE_TIMESTAMP)]
    assert all(before <= r["time"] <= after for r in statuses)                # stored at the receive time
    assert len(samples) == 3
    for r in samples:
        assert r["raw_timestamp"] in (FAR_PAST, FAR_FUTURE)
        assert r["quality_flags"] & (FLAG_ANCIENT_TIMESTAMP | FLAG_FUTURE_TIMESTAMP)
        assert timedelta(0) <= r["time"] - r["received_at"] < timedelta(milliseconds=1)
    assert len({r["time"] for r in samples}) == 3                              # two readings of one message
    for r in sessions:
        assert before <= r["started_at"] <= after, r
        assert r["quality_flags"] & (FLAG_ANCIENT_TIMESTAMP | FLAG_FUTURE_TIMESTAMP), r
    assert before <= sessions[0]["stopped_at"] <= after                         # the 1.6 stop at year 1
    assert 'csms_data_quality_flags_total{kind="future_timestamp"} 5.0' in metrics   # 2 statuses, 1 sample, 2 tx
    assert 'csms_data_quality_flags_total{kind="ancient_timestamp"} 5.0' in metrics  # 2 statuses, 2 samples, 1 tx


@pytest.mark.integration
async def test_rows_stored_before_the_rule_and_a_broken_port_do_not_stop_the_rollup(
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Rows the old code stored (year 1, year 9999, and dirty marks there), and a station whose time zone
    is not an IANA name (the registry keeps any text): the roll-up goes on for every other port."""
    day = (datetime.now(UTC) - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        async with running_central(db_url, rollup_interval_s=0.2) as central:
            for loc in ("LOC-OK", "LOC-MARS"):
                await upsert_location(pool, LocationSpec(id=loc, name=loc, time_zone="UTC"))
            for cp, loc in (("OK1", "LOC-OK"), ("MARS1", "LOC-MARS")):
                await add_charge_point(pool, ChargePointSpec(id=cp, location_id=loc, password=PASSWORD,
                                                             evses=(EvseSpec(1),)))
            await pool.execute("UPDATE locations SET time_zone = 'Mars/Olympus_Mons' WHERE id = 'LOC-MARS'")
            for cp in ("OK1", "MARS1"):
                async with _charger(central, cp, "ocpp1.6") as call:
                    for minutes, state in ((0, "Available"), (60, "Charging"), (120, "Available")):
                        await call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": state,
                                                          "timestamp": iso(day + timedelta(minutes=minutes))})
            # What the old code stored for FAR_PAST and FAR_FUTURE, and the marks its writer made.
            legacy = [datetime(1, 1, 1, 12, tzinfo=UTC), datetime(9999, 12, 31, 9, 59, 59, 999999, tzinfo=UTC)]
            await pool.executemany(
                "INSERT INTO connector_status (time, charge_point_id, evse_id, connector_id, status, received_at) "
                "VALUES ($1, 'OK1', 1, 1, 'Available', now())", [(t,) for t in legacy])
            await pool.execute("INSERT INTO port_state_dirty (charge_point_id, evse_id, since) VALUES ('OK1', 1, $1) "
                               "ON CONFLICT (charge_point_id, evse_id) DO UPDATE SET since = $1, "
                               "version = port_state_dirty.version + 1", legacy[0])

            async def failures() -> float:
                async with central.api() as api:
                    text = (await api.get("/metrics")).text
                for line in text.splitlines():
                    if line.startswith("csms_rollup_port_failures_total "):
                        return float(line.split()[1])
                return 0.0

            for _ in range(300):   # at most 60 s: two refreshes of the loop have failed the port
                if await failures() >= 2:
                    break
                await asyncio.sleep(0.2)
            counted = await failures()
            direct = await _refresh(pool)
            rolled = {r["charge_point_id"]: r["n"] for r in await pool.fetch(
                "SELECT charge_point_id, count(*) AS n FROM port_state_15m GROUP BY 1")}
            dirty = {r["charge_point_id"] for r in await pool.fetch("SELECT charge_point_id FROM port_state_dirty")}
            async with central.api() as api:
                ok = await api.get("/api/v1/reporting/ports/OK1/1/utilization",
                                   params={"from": iso(day), "to": iso(day + timedelta(days=1))})
    finally:
        await pool.close()
    assert counted >= 2
    assert direct.ran
    assert direct.failed_ports == 1
    assert rolled.get("OK1") == 4
    assert "MARS1" not in rolled
    assert "MARS1" in dirty
    assert "OK1" not in dirty
    assert ok.status_code == 200
    assert ok.json()["charging_min"] == 60
    logged = [r for r in caplog.records if r.name == "ingest.rollup" and "MARS1" in r.getMessage()
              and r.levelno >= logging.ERROR]
    assert len(logged) == 1                                        # once, not at every refresh
