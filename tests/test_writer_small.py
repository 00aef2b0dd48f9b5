"""The one-statement write of small batches (ingest/writer_small.py) against the COPY path.

Both paths must leave the same rows, the same roll-up marks and the same ``last_seen_at``,
and report the same inserted and duplicate counts, for any sequence of batches (repeats,
partial overlaps, duplicates inside a batch). The single statement relies on the tables'
row types having the writer's column order, which the first test checks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from ingest import writer as writer_module
from ingest import writer_small
from ingest.role import ROLE
from ingest.writer import TimescaleWriter
from ingest.writer_small import SINGLE_STATEMENT_MAX_ROWS
from schemas.events import ConnectionEvent, Event, MeterEvent, Sample, StatusEvent
from schemas.settings import Settings, SettingsError

pytestmark = pytest.mark.integration

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
CHARGERS = ("CP1", "CP2", "CP3")
MEASURANDS = ("Energy.Active.Import.Register", "Power.Active.Import", "Voltage", "SoC")
# Values and texts that the two encodings (binary row arrays, JSON) must carry alike: NaN (JSON
# has none), shortest-repr and extreme doubles, negative zero (stored as 0 by both: jsonb has no
# -0); quotes, backslashes, non-ASCII.
VALUES = (0.0, 7.0, 0.1, 1 / 3, -0.0, 1e-300, 1.7976931348623157e308, -123456.789, math.nan)
TEXTS = ("1", "0.1", 'a "quoted" \\ value', "230 Ω ⚡", "x" * 64, "")


async def test_the_tables_row_types_have_the_writers_column_order(db: asyncpg.Connection) -> None:
    for table, columns in (("meter_samples", writer_module._METER_COLUMNS),
                           ("connector_status", writer_module._STATUS_COLUMNS)):
        stored = [r["attname"] for r in await db.fetch(
            """SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0
               AND NOT attisdropped ORDER BY attnum""", table)]
        assert tuple(stored) == columns, table


def _batch(rng: random.Random) -> list[Event]:
    events: list[Event] = []
    for _ in range(rng.randint(1, 12)):
        cp = rng.choice(CHARGERS)
        received = T0 + timedelta(seconds=rng.randint(0, 600))
        if rng.random() < 0.75:
            samples = [Sample(time=T0 + timedelta(minutes=rng.randint(0, 40), microseconds=rng.choice((0, 1, 999_999))),
                              measurand=rng.choice(MEASURANDS), phase=rng.choice(("", "L1")), location="Outlet",
                              context="Sample.Periodic", value=rng.choice(VALUES), unit=rng.choice(("Wh", "V")),
                              raw_value=rng.choice(TEXTS), raw_unit=rng.choice(("Wh", "kWh", "We-3")),
                              flags=rng.choice((0, 1, 2**30)), raw_time=rng.choice(("", "2003-02-30T25:00:00Z")))
                       for _ in range(rng.randint(1, 4))]
            events.append(MeterEvent(charge_point_id=cp, received_at=received, evse_id=rng.randint(1, 2),
                                     connector_id=1, transaction_uid=rng.choice(("", "tx1", "tx2")),
                                     samples=samples))
        else:
            moment = T0 + timedelta(minutes=rng.randint(0, 40))
            events.append(StatusEvent(charge_point_id=cp, received_at=received, time=moment,
                                      evse_id=rng.randint(0, 2), connector_id=1,
                                      status=rng.choice(("Available", "Charging", "Faulted"))))
    return events


def _one_key_twice() -> list[Event]:
    """One natural key twice in a batch with different readings: the first in the batch is kept."""
    at = T0 + timedelta(hours=2)
    first, second = (MeterEvent(charge_point_id="CP1", received_at=at, evse_id=1, connector_id=1, transaction_uid="",
                                samples=[Sample(at, "Voltage", "", "Outlet", "Sample.Periodic", v, "V", str(v), "V")
                                         for v in values])
                     for values in ((230.0, 1.0), (231.0, 2.0)))
    return [first, second]


def _comparable(row: asyncpg.Record) -> tuple[Any, ...]:
    # repr: NaN equals nothing, not even itself; -0.0 equals 0.0 (both paths must store the same).
    return tuple(repr(v) if isinstance(v, float) else v for v in row)


async def _snapshot(db: asyncpg.Connection) -> dict[str, Any]:
    return {
        "meter": [_comparable(r) for r in await db.fetch("SELECT * FROM meter_samples ORDER BY 2, 3, 4, 5, 6, 7, 1")],
        "status": [tuple(r) for r in await db.fetch("SELECT * FROM connector_status ORDER BY 2, 3, 4, 5, 1")],
        "marks": [tuple(r) for r in await db.fetch(
            "SELECT charge_point_id, evse_id, since FROM port_state_dirty ORDER BY 1, 2")],
        "seen": [tuple(r) for r in await db.fetch("SELECT id, last_seen_at FROM charge_points ORDER BY 1")],
    }


async def _reset(db: asyncpg.Connection) -> None:
    await db.execute("TRUNCATE meter_samples, connector_status, port_state_dirty")
    await db.execute("UPDATE charge_points SET last_seen_at = NULL")


Counts = list[tuple[dict[str, int], dict[str, int]]]


async def _run(db_url: str, batches: list[list[Event]],
               single_statement_max_rows: int = SINGLE_STATEMENT_MAX_ROWS) -> Counts:
    writer = await TimescaleWriter.connect(database_url=db_url, single_statement_max_rows=single_statement_max_rows)
    try:
        return [(r.inserted, r.duplicates) for r in [await writer.write_batch(b) for b in batches]]
    finally:
        await writer.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_single_statement_stores_and_counts_what_copy_does(
        db_url: str, db: asyncpg.Connection, seed: int) -> None:
    for cp in CHARGERS:
        await db.execute("INSERT INTO charge_points (id) VALUES ($1)", cp)
    rng = random.Random(seed)
    fresh = [_batch(rng) for _ in range(6)]
    # Repeats and overlaps, as redelivery after a lost acknowledgement makes them.
    batches = [*fresh, fresh[0], fresh[2] + fresh[3], fresh[5] + _batch(rng), _one_key_twice()]

    single = await _run(db_url, batches)
    by_single = await _snapshot(db)
    await _reset(db)
    by_copy = await _run(db_url, batches, single_statement_max_rows=0)  # every batch by COPY

    assert single == by_copy
    assert by_single == await _snapshot(db)
    assert by_single["meter"]
    assert by_single["status"]
    assert by_single["marks"]
    assert [r[9] for r in by_single["meter"] if r[0] == T0 + timedelta(hours=2)] == ["230.0"]
    assert sum(d.get("meter_samples", 0) for _, d in single) > 0  # the repeats were absorbed, not stored


def _meter(connector_id: int, rows: int) -> MeterEvent:
    return MeterEvent(charge_point_id="CP1", received_at=T0, evse_id=1, connector_id=connector_id, transaction_uid="",
                      samples=[Sample(T0 + timedelta(seconds=i), "Voltage", "", "Outlet", "Sample.Periodic",
                                      230.0, "V", "230", "V") for i in range(rows)])


def _record_single_statements(monkeypatch: pytest.MonkeyPatch) -> list[Sequence[MeterEvent]]:
    """The MeterEvents of each batch that went as the single statement, in order."""
    calls: list[Sequence[MeterEvent]] = []
    real = writer_small.write_single_statement

    async def recording(*args: Any) -> tuple[int, int]:
        calls.append(args[1])
        return await real(*args)

    monkeypatch.setattr(writer_module, "write_single_statement", recording)
    return calls


async def test_a_batch_with_other_events_or_over_the_limit_goes_by_copy(
        db_url: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    await db.execute("INSERT INTO charge_points (id) VALUES ('CP1')")
    calls = _record_single_statements(monkeypatch)
    meter, more = _meter(1, 3), _meter(2, 3)
    boot = ConnectionEvent(charge_point_id="CP1", received_at=T0, time=T0, event="connected", node_id="n1")
    results = await _run(db_url, [[meter], [meter, more], [more, boot]], single_statement_max_rows=3)
    # One MeterEvent (3 rows); the 6-row batch and the one with a connection event by COPY.
    assert [len(m) for m in calls] == [1]
    assert [r[0].get("meter_samples") for r in results] == [3, 3, 0]
    assert await db.fetchval("SELECT count(*) FROM meter_samples") == 6
    assert await db.fetchval("SELECT last_seen_at FROM charge_points WHERE id = 'CP1'") == T0


async def test_the_in_process_sink_takes_its_own_limit_from_the_settings(
        db_url: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    await db.execute("INSERT INTO charge_points (id) VALUES ('CP1')")
    calls = _record_single_statements(monkeypatch)
    settings = Settings(inprocess_bus_single_statement_max_rows=400, ingest_single_statement_max_rows=3)
    sink = await ROLE.open_sink(settings=settings, database_url=db_url)
    try:
        await sink.write([_meter(1, 350)])  # over the MQTT ingest's 300 (and this test's 3), within 400
        await sink.write([_meter(2, 250), _meter(3, 250)])  # 500 rows: by COPY
    finally:
        await sink.close()
    assert [sum(len(e.samples) for e in m) for m in calls] == [350]
    assert await db.fetchval("SELECT count(*) FROM meter_samples") == 850


def test_the_in_process_default_covers_a_whole_batch_and_the_limits_are_checked() -> None:
    defaults = Settings()
    # The one-process deployment writes every batch of the in-process bus as the one statement.
    assert defaults.inprocess_bus_single_statement_max_rows >= defaults.ingest_batch_max_rows
    assert defaults.ingest_single_statement_max_rows == SINGLE_STATEMENT_MAX_ROWS == 300
    assert Settings(ingest_single_statement_max_rows=0).ingest_single_statement_max_rows == 0  # 0 = always COPY
    with pytest.raises(SettingsError, match="single-statement row limits"):
        Settings(ingest_single_statement_max_rows=-1)
    with pytest.raises(SettingsError, match="single-statement row limits"):
        Settings(inprocess_bus_single_statement_max_rows=-1)
