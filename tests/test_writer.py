"""The idempotent writer against the real TimescaleDB: duplicates absorbed, sessions merged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from ingest.writer import TimescaleWriter
from schemas.events import ConnectionEvent, MeterEvent, Sample, StatusEvent, TransactionEvent

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def _meter(n: int, *, tx: str = "1") -> MeterEvent:
    samples = [Sample(time=T0 + timedelta(minutes=i), measurand="Energy.Active.Import.Register", phase="",
                      location="Outlet", context="Sample.Periodic", value=1000.0 * i, unit="Wh",
                      raw_value=str(i), raw_unit="kWh") for i in range(n)]
    return MeterEvent(charge_point_id="CP1", received_at=T0, evse_id=1, connector_id=1, transaction_uid=tx,
                      samples=samples)


async def test_duplicate_samples_are_absorbed(db_url: str, db: asyncpg.Connection) -> None:
    writer = await TimescaleWriter.connect(database_url=db_url)
    try:
        first = await writer.write_batch([_meter(10)])
        again = await writer.write_batch([_meter(10), _meter(12)])  # repeats, plus 2 new samples
    finally:
        await writer.close()
    assert first.inserted["meter_samples"] == 10
    assert again.inserted["meter_samples"] == 2
    assert again.duplicates["meter_samples"] == 20
    assert await db.fetchval("SELECT count(*) FROM meter_samples") == 12


async def test_same_timestamp_different_measurands_are_not_duplicates(db_url: str, db: asyncpg.Connection) -> None:
    # R41: a charger may split one sample set over several messages with the same timestamp.
    power = MeterEvent(charge_point_id="CP1", received_at=T0, evse_id=1, connector_id=1, transaction_uid="1",
                       samples=[Sample(T0, "Power.Active.Import", "L1", "Outlet", "Sample.Periodic", 7000.0, "W",
                                       "7", "kW")])
    writer = await TimescaleWriter.connect(database_url=db_url)
    try:
        await writer.write_batch([_meter(1)])
        await writer.write_batch([power])
    finally:
        await writer.close()
    assert await db.fetchval("SELECT count(*) FROM meter_samples WHERE time = $1", T0) == 2


async def test_status_and_connection_events_are_idempotent(db_url: str, db: asyncpg.Connection) -> None:
    status = StatusEvent(charge_point_id="CP1", received_at=T0, time=T0, evse_id=1, connector_id=1,
                         status="Faulted", error_code="GroundFailure")
    conn_ev = ConnectionEvent(charge_point_id="CP1", received_at=T0, time=T0, event="boot", node_id="n1",
                              detail={"vendor": "V", "model": "M"})
    writer = await TimescaleWriter.connect(database_url=db_url)
    try:
        for _ in range(3):
            await writer.write_batch([status, conn_ev])
    finally:
        await writer.close()
    assert await db.fetchval("SELECT count(*) FROM connector_status") == 1
    assert await db.fetchval("SELECT count(*) FROM connection_events") == 1


@pytest.mark.parametrize("order", ["start_first", "stop_first"])
async def test_stop_before_start_still_makes_one_correct_session(db_url: str, db: asyncpg.Connection,
                                                                 order: str) -> None:
    start = TransactionEvent(charge_point_id="CP1", received_at=T0, transaction_uid="42", time=T0,
                             kind="started", ocpp16_transaction_id=42, evse_id=1, connector_id=1,
                             id_token="TAG1", meter_start_wh=1000.0)
    stop = TransactionEvent(charge_point_id="CP1", received_at=T0, transaction_uid="42",
                            time=T0 + timedelta(hours=1), kind="ended", ocpp16_transaction_id=42,
                            meter_stop_wh=31000.0, stop_reason="Local")
    events = [start, stop] if order == "start_first" else [stop, start]
    writer = await TimescaleWriter.connect(database_url=db_url)
    try:
        for ev in events:
            await writer.write_batch([ev])
        await writer.write_batch(events)  # and everything again, as a charger retry would
    finally:
        await writer.close()
    row = await db.fetchrow("SELECT * FROM transactions")
    assert row is not None
    assert await db.fetchval("SELECT count(*) FROM transactions") == 1
    assert row["started_at"] == T0
    assert row["stopped_at"] == T0 + timedelta(hours=1)
    assert row["energy_wh"] == 30000
    assert (row["stop_reason"], row["id_token"], row["evse_id"]) == ("Local", "TAG1", 1)
