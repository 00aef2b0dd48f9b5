"""The OCPP 2.1 events (migration 0011) in the idempotent writer: a redelivered batch stores nothing twice
(and counts the duplicates), streams opened and closed in any order end as one closed stream."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from ingest.writer import TimescaleWriter
from schemas.events import (
    BatterySwapEvent,
    DerEvent,
    Event,
    PeriodicStreamEvent,
    PriorityChargingEvent,
    SettlementEvent,
    StreamDataEvent,
    StreamValue,
    SwappedBattery,
)

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _events() -> list[Event]:
    cp, at = "CP21W", T0
    return [
        SettlementEvent(charge_point_id=cp, received_at=at, time=at, psp_ref="P1", status="Settled", amount=3.5,
                        digest="s1", transaction_uid="TX1", vat_company={"name": "A", "city": "B"}),
        DerEvent(charge_point_id=cp, received_at=at, time=at, kind="alarm", digest="d1", control_type="HVMustTrip"),
        DerEvent(charge_point_id=cp, received_at=at, time=at, kind="start_stop", digest="d2", control_id="C1",
                 started=True, superseded_ids=["C0", "C-1"]),
        DerEvent(charge_point_id=cp, received_at=at, time=at, kind="report", digest="d3", request_id=1,
                 detail={"curve": [{"id": "x"}]}),
        BatterySwapEvent(charge_point_id=cp, received_at=at, request_id=1, event_type="BatteryOut", id_token="T",
                         id_token_type="Central", digest="b1",
                         batteries=[SwappedBattery(1, "S1", 80.0, 95.0), SwappedBattery(2, "S2", 81.0, 96.0, at)]),
        PriorityChargingEvent(charge_point_id=cp, received_at=at, transaction_uid="TX1", activated=True,
                              message_id="m1"),
        StreamDataEvent(charge_point_id=cp, received_at=at, stream_id=4, basetime=at, pending=0,
                        values=[StreamValue(i, at + timedelta(seconds=i), str(i), float(i)) for i in range(5)]),
    ]


async def test_a_redelivered_batch_is_stored_once(db_url: str, db: asyncpg.Connection) -> None:
    writer = await TimescaleWriter.connect(database_url=db_url)
    try:
        first = await writer.write_batch(_events())
        again = await writer.write_batch(_events())
    finally:
        await writer.close()
    expected = {"settlements": 1, "der_events": 3, "battery_swaps": 2, "priority_charging": 1,
                "periodic_stream_samples": 5}
    assert {t: first.inserted[t] for t in expected} == expected
    assert {t: again.inserted[t] for t in expected} == dict.fromkeys(expected, 0)
    assert {t: again.duplicates[t] for t in expected} == expected
    for table, n in expected.items():
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == n
    assert await db.fetchval("SELECT superseded_ids FROM der_events WHERE kind = 'start_stop'") == ["C0", "C-1"]
    assert await db.fetchval("SELECT superseded_ids FROM der_events WHERE kind = 'alarm'") == []


async def test_streams_merge_in_any_order(db_url: str, db: asyncpg.Connection) -> None:
    def stream(kind: str, minutes: int, sid: int) -> PeriodicStreamEvent:
        at = T0 + timedelta(minutes=minutes)
        return PeriodicStreamEvent(charge_point_id="CP21W", received_at=at, time=at, stream_id=sid,
                                   kind=kind, variable_monitoring_id=9 if kind == "open" else None,  # type: ignore[arg-type]
                                   interval_s=1 if kind == "open" else None)

    writer = await TimescaleWriter.connect(database_url=db_url)
    try:
        await writer.write_batch([stream("close", 5, 1)])             # the Close first
        await writer.write_batch([stream("open", 0, 1)])              # then its Open
        await writer.write_batch([stream("open", 0, 1)])              # and a retried Open
        await writer.write_batch([stream("open", 0, 2), stream("close", 3, 2), stream("open", 10, 2)])  # reopened
    finally:
        await writer.close()
    rows = {r["stream_id"]: r for r in await db.fetch("SELECT * FROM periodic_streams")}
    assert (rows[1]["opened_at"], rows[1]["closed_at"], rows[1]["variable_monitoring_id"]) == (
        T0, T0 + timedelta(minutes=5), 9)
    assert (rows[2]["opened_at"], rows[2]["closed_at"]) == (T0 + timedelta(minutes=10), None)
