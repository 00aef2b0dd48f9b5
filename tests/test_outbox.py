"""The node's outbox: fsync before acknowledging, group commit, crash recovery, trimming, bound."""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from csms.bus.outbox import CommittedRanges, Outbox, OutboxRecord
from schemas.bus import BusError, BusFullError
from schemas.events import ConnectionEvent, Event, MeterEvent, Sample, decode_batch

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def _conn(i: int, *, received_at: datetime = T0) -> ConnectionEvent:
    return ConnectionEvent(charge_point_id=f"CP{i}", received_at=received_at, time=received_at,
                           event="connected", node_id="n1")


def _meter(i: int, samples: int = 3, *, received_at: datetime = T0) -> MeterEvent:
    return MeterEvent(charge_point_id=f"CP{i}", received_at=received_at, evse_id=1, connector_id=1,
                      transaction_uid="tx1",
                      samples=[Sample(time=received_at + timedelta(seconds=s),
                                      measurand="Energy.Active.Import.Register", phase="", location="Outlet",
                                      context="Sample.Periodic", value=1000.0 * s, unit="Wh", raw_value=str(s),
                                      raw_unit="kWh") for s in range(samples)])


def _outbox(directory: Path, *, max_bytes: int = 2**20, segment_bytes: int = 16 * 2**20) -> Outbox:
    box = Outbox(directory=directory, node_id="n1", max_bytes=max_bytes, segment_bytes=segment_bytes)
    box.open()
    return box


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.log"))


def _events_of(records: list[OutboxRecord]) -> list[Event]:
    return [e for r in records for e in decode_batch(r.payload).events]


def _ranges(records: list[OutboxRecord]) -> list[tuple[int, int]]:
    return [(r.first_seq, r.last_seq) for r in records]


async def _append_each(box: Outbox, batches: list[list[Event]]) -> None:
    """One append at a time: one record each."""
    for events in batches:
        await box.append(events)


# -- CommittedRanges ------------------------------------------------------------------------


def test_ranges_in_order_move_the_watermark() -> None:
    ranges = CommittedRanges(-1)
    assert ranges.add(0, 4)
    assert ranges.watermark == 4
    assert ranges.add(5, 9)
    assert ranges.watermark == 9


def test_ranges_out_of_order_move_the_watermark_once_contiguous() -> None:
    ranges = CommittedRanges(-1)
    assert not ranges.add(10, 14)
    assert not ranges.add(5, 9)
    assert ranges.watermark == -1
    assert ranges.add(0, 4)
    assert ranges.watermark == 14


def test_ranges_with_a_gap_hold_the_watermark_at_the_gap() -> None:
    ranges = CommittedRanges(-1)
    assert ranges.add(0, 2)
    assert not ranges.add(4, 6)
    assert not ranges.add(8, 9)
    assert ranges.watermark == 2
    assert ranges.add(3, 3)
    assert ranges.watermark == 6
    assert not ranges.add(10, 12)
    assert ranges.watermark == 6
    assert ranges.add(7, 7)
    assert ranges.watermark == 12


def test_overlapping_ranges() -> None:
    ranges = CommittedRanges(-1)
    assert ranges.add(0, 5)
    assert ranges.add(3, 8)
    assert ranges.watermark == 8
    assert not ranges.add(12, 20)
    assert not ranges.add(15, 25)
    assert not ranges.add(11, 13)
    assert ranges.add(6, 10)   # overlaps the watermark and reaches the pending ranges
    assert ranges.watermark == 25


def test_duplicate_ranges_are_harmless_and_kept_once() -> None:
    ranges = CommittedRanges(-1)
    assert ranges.add(0, 4)
    assert not ranges.add(0, 4)
    assert ranges.watermark == 4
    for _ in range(100):
        assert not ranges.add(10, 12)
    assert len(ranges._ranges) == 1
    assert ranges.add(5, 9)
    assert ranges.watermark == 12
    assert ranges._ranges == []


def test_ranges_below_the_watermark_change_nothing() -> None:
    ranges = CommittedRanges(9)
    assert not ranges.add(0, 9)
    assert not ranges.add(2, 5)
    assert ranges.watermark == 9
    assert ranges.add(5, 12)   # partly below: the part above counts
    assert ranges.watermark == 12
    assert ranges._ranges == []


def test_empty_ranges_are_ignored() -> None:
    ranges = CommittedRanges(-1)
    assert not ranges.add(5, 3)
    assert ranges.add(0, 2)
    assert ranges.watermark == 2
    assert ranges._ranges == []


# -- appending ------------------------------------------------------------------------------


async def test_append_returns_only_after_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = _outbox(tmp_path)
    gate = threading.Event()
    entered = threading.Event()
    synced: list[int] = []
    real_fsync = os.fsync

    def gated_fsync(fd: int) -> None:
        entered.set()
        assert gate.wait(10)
        real_fsync(fd)
        synced.append(fd)

    monkeypatch.setattr(os, "fsync", gated_fsync)
    task = asyncio.create_task(box.append([_conn(1)]))
    # Wait until the append is inside fsync (a fixed sleep may end before it gets there on a busy machine).
    assert await asyncio.to_thread(entered.wait, 10)
    await asyncio.sleep(0)
    assert not task.done()          # written, maybe, but not fsync'ed: not acknowledged
    assert synced == []
    gate.set()
    await asyncio.wait_for(task, 10)
    assert synced
    [segment] = _segments(tmp_path)
    assert segment.stat().st_size == box.pending_bytes
    await box.close()


async def test_records_get_consecutive_sequence_ranges(tmp_path: Path) -> None:
    box = _outbox(tmp_path)
    await _append_each(box, [[_conn(1), _meter(2)], [_conn(3)], [_meter(4), _meter(5), _conn(6)]])
    records = box.unconfirmed(-1)
    assert _ranges(records) == [(0, 1), (2, 2), (3, 5)]
    for record in records:
        batch = decode_batch(record.payload)
        assert batch.node_id == "n1"
        assert batch.first_seq == record.first_seq
        assert len(batch.events) == record.last_seq - record.first_seq + 1
    assert [e.charge_point_id for e in _events_of(records)] == [f"CP{i}" for i in range(1, 7)]
    assert _events_of(records)[1] == _meter(2)   # round-trips exactly
    await box.close()


async def test_concurrent_appends_are_group_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = _outbox(tmp_path)
    await box.append([_conn(0)])   # the segment exists: every later fsync is one record
    fsyncs = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    appends = [box.append([_conn(i), _meter(i)]) for i in range(1, 51)]
    results = await asyncio.wait_for(asyncio.gather(*appends, return_exceptions=True), 10)
    assert results == [None] * 50
    records = box.unconfirmed(0)
    assert 1 <= len(records) < 50
    assert fsyncs == len(records)
    assert records[0].first_seq == 1
    assert records[-1].last_seq == 100
    assert all(b.first_seq == a.last_seq + 1 for a, b in itertools.pairwise(records))
    assert sorted(e.charge_point_id for e in _events_of(records) if isinstance(e, ConnectionEvent)) == \
        sorted(f"CP{i}" for i in range(1, 51))
    assert box.pending_events == 101
    await box.close()


async def test_an_idle_outbox_writes_at_once_whatever_its_commit_delay(tmp_path: Path) -> None:
    box = Outbox(directory=tmp_path, node_id="n1", max_bytes=2**20, commit_delay_s=3600.0)
    box.open()
    await asyncio.wait_for(box.append([_conn(0)]), 10)   # nothing written before: no wait
    assert _ranges(box.unconfirmed(-1)) == [(0, 0)]
    await box.close()


async def test_a_busy_outbox_waits_its_commit_delay_so_later_appends_share_the_write(tmp_path: Path) -> None:
    box = Outbox(directory=tmp_path, node_id="n1", max_bytes=2**20, commit_delay_s=1.0)
    box.open()
    await asyncio.wait_for(box.append([_conn(0)]), 10)
    second = asyncio.create_task(box.append([_conn(1)]))   # busy now: this write waits for company
    for _ in range(5):
        await asyncio.sleep(0)   # loop turns, not time: without the delay the second is written alone by now
    third = asyncio.create_task(box.append([_conn(2)]))
    assert list(await asyncio.wait_for(asyncio.gather(second, third), 10)) == [None, None]
    assert _ranges(box.unconfirmed(-1)) == [(0, 0), (1, 2)]
    await box.close()


async def test_appending_nothing_writes_nothing(tmp_path: Path) -> None:
    box = _outbox(tmp_path)
    await asyncio.wait_for(box.append([]), 5)
    await box.append([_conn(1)])
    await asyncio.wait_for(box.append([]), 5)
    assert _ranges(box.unconfirmed(-1)) == [(0, 0)]
    await box.close()


# -- restart and crash recovery ----------------------------------------------------------


async def test_reopen_restores_unconfirmed_records_and_continues_the_sequence(tmp_path: Path) -> None:
    box = _outbox(tmp_path)
    await _append_each(box, [[_conn(1)], [_meter(2), _conn(3)]])
    before = box.unconfirmed(-1)
    await box.close()

    again = _outbox(tmp_path)
    assert again.unconfirmed(-1) == before
    assert again.pending_events == 3
    assert again.pending_bytes == box.pending_bytes
    await again.append([_conn(4)])
    assert _ranges(again.unconfirmed(-1)) == [(0, 0), (1, 2), (3, 3)]
    await again.close()


async def test_reopen_without_close_after_a_crash(tmp_path: Path) -> None:
    box = _outbox(tmp_path)
    await _append_each(box, [[_conn(1)], [_conn(2)]])
    again = _outbox(tmp_path)   # the first was never closed: every acknowledged record is on disk
    assert _ranges(again.unconfirmed(-1)) == [(0, 0), (1, 1)]
    await box.close()
    await again.close()


def _tear_garbage(segment: Path, good: int, last: int) -> None:
    with segment.open("ab") as fh:
        fh.write(b"\x40\x00\x00\x00\xde\xad\xbe\xefhalf a rec")


def _tear_truncate(segment: Path, good: int, last: int) -> None:
    os.truncate(segment, segment.stat().st_size - 3)


def _tear_bit_flip(segment: Path, good: int, last: int) -> None:
    data = bytearray(segment.read_bytes())
    data[-2] ^= 0xFF
    segment.write_bytes(bytes(data))


def _tear_header_only(segment: Path, good: int, last: int) -> None:
    os.truncate(segment, good + 5)   # the crash came in the middle of the last record's header


@pytest.mark.parametrize(("tear", "survivors"), [
    (_tear_garbage, 3),
    (_tear_truncate, 2),
    (_tear_bit_flip, 2),
    (_tear_header_only, 2),
])
async def test_a_torn_tail_is_cut_off_and_the_valid_records_survive(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, tear: Callable[[Path, int, int], None],
        survivors: int) -> None:
    box = _outbox(tmp_path)
    await _append_each(box, [[_conn(1)], [_meter(2), _conn(3)], [_conn(4)]])
    records = box.unconfirmed(-1)
    await box.close()
    [segment] = _segments(tmp_path)
    size = segment.stat().st_size
    last = len(records[-1].payload) + 8
    tear(segment, size - last, last)

    with caplog.at_level(logging.WARNING, logger="csms.bus.outbox"):
        again = _outbox(tmp_path)
    assert "torn record" in caplog.text
    assert again.unconfirmed(-1) == records[:survivors]
    assert segment.stat().st_size == (size if survivors == 3 else size - last)   # cut off on disk too
    assert again.pending_bytes == segment.stat().st_size
    await again.append([_conn(5)])
    expected_first = records[survivors - 1].last_seq + 1
    assert _ranges(again.unconfirmed(-1))[-1] == (expected_first, expected_first)
    await again.close()

    third = _outbox(tmp_path)   # and the record written after the repair is read back too
    assert _ranges(third.unconfirmed(-1)) == [*_ranges(records[:survivors]), (expected_first, expected_first)]
    await third.close()


# -- confirming and trimming ---------------------------------------------------------------


async def test_confirm_trims_records_and_deletes_old_segments_but_never_the_newest(tmp_path: Path) -> None:
    box = _outbox(tmp_path, segment_bytes=1)   # every record starts a new segment
    await _append_each(box, [[_conn(i), _conn(i + 100)] for i in range(5)])
    assert _ranges(box.unconfirmed(-1)) == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert [p.name for p in _segments(tmp_path)] == [f"{n:020d}.log" for n in (0, 2, 4, 6, 8)]

    box.confirm(0, 5)
    assert box.committed.watermark == 5
    assert _ranges(box.unconfirmed(-1)) == [(6, 7), (8, 9)]
    assert [p.name for p in _segments(tmp_path)] == [f"{n:020d}.log" for n in (6, 8)]
    assert box.pending_events == 4
    assert box.pending_bytes == sum(p.stat().st_size for p in _segments(tmp_path))

    box.confirm(6, 9)
    assert box.unconfirmed(-1) == []
    assert box.pending_events == 0
    assert box.pending_bytes == 0
    assert [p.name for p in _segments(tmp_path)] == [f"{8:020d}.log"]   # the newest stays

    await box.append([_conn(42)])
    assert _ranges(box.unconfirmed(-1)) == [(10, 10)]
    await box.close()


async def test_confirm_of_a_range_covering_part_of_a_segment_keeps_it(tmp_path: Path) -> None:
    box = _outbox(tmp_path, segment_bytes=400)   # about three records a segment
    await _append_each(box, [[_conn(i)] for i in range(8)])
    segments = _segments(tmp_path)
    assert len(segments) >= 3
    second = int(segments[1].stem)
    box.confirm(0, second)   # the first segment is done, the second only started
    assert _segments(tmp_path) == segments[1:]
    assert box.unconfirmed(-1)[0].first_seq == second + 1
    await box.close()

    again = _outbox(tmp_path)
    assert again.unconfirmed(-1)[0].first_seq == second + 1
    await again.close()


async def test_watermark_persists_across_restart(tmp_path: Path) -> None:
    box = _outbox(tmp_path, segment_bytes=1)
    await _append_each(box, [[_conn(i)] for i in range(4)])
    box.confirm(0, 1)
    assert (tmp_path / "committed").read_text() == "1"
    # No close: a crash right after the confirmation must not resend the confirmed records.
    again = _outbox(tmp_path)
    assert again.committed.watermark == 1
    assert _ranges(again.unconfirmed(again.committed.watermark)) == [(2, 2), (3, 3)]
    assert _ranges(again.unconfirmed(-1)) == [(2, 2), (3, 3)]
    assert again.pending_events == 2
    await again.append([_conn(9)])
    assert _ranges(again.unconfirmed(-1))[-1] == (4, 4)
    await again.close()
    await box.close()


async def test_the_sequence_continues_after_everything_was_confirmed(tmp_path: Path) -> None:
    box = _outbox(tmp_path)
    await _append_each(box, [[_conn(1)], [_conn(2), _conn(3)]])
    box.confirm(0, 2)
    await box.close()
    again = _outbox(tmp_path)
    assert again.unconfirmed(-1) == []
    await again.append([_conn(4)])
    assert _ranges(again.unconfirmed(-1)) == [(3, 3)]
    await again.close()


async def test_unconfirmed_skips_records_confirmed_out_of_order(tmp_path: Path) -> None:
    box = _outbox(tmp_path)
    await _append_each(box, [[_conn(0)], [_conn(1), _conn(2)], [_conn(3)], [_conn(4)]])
    box.confirm(1, 2)   # another worker committed the second batch first
    box.confirm(4, 4)
    assert box.committed.watermark == -1
    assert _ranges(box.unconfirmed(-1)) == [(0, 0), (3, 3)]
    assert _ranges(box.unconfirmed(0)) == [(3, 3)]
    assert box.pending_events == 5   # kept on disk until the watermark passes them

    box.confirm(0, 0)
    assert box.committed.watermark == 2
    assert _ranges(box.unconfirmed(-1)) == [(3, 3)]
    box.confirm(3, 3)
    assert box.committed.watermark == 4
    assert box.unconfirmed(-1) == []
    assert box.pending_events == 0
    await box.close()


async def test_confirmations_of_unknown_or_old_ranges_are_harmless(tmp_path: Path) -> None:
    box = _outbox(tmp_path)
    await _append_each(box, [[_conn(0)], [_conn(1)]])
    box.confirm(0, 0)
    box.confirm(0, 0)       # a duplicate confirmation
    box.confirm(50, 60)     # beyond anything appended
    assert box.committed.watermark == 0
    assert _ranges(box.unconfirmed(-1)) == [(1, 1)]
    await box.close()


def _scan_unconfirmed(records: list[tuple[int, int]], confirmed: set[int], after: int) -> list[tuple[int, int]]:
    """What ``unconfirmed`` must return, by the obvious scan (it bisects)."""
    return [(lo, hi) for lo, hi in records if hi > after and lo not in confirmed]


async def test_bisection_agrees_with_a_scan_over_a_random_backlog(tmp_path: Path) -> None:
    rng = random.Random(15)
    box = _outbox(tmp_path, max_bytes=2**30)
    appended: list[tuple[int, int]] = []
    seq = 0
    for _ in range(400):
        size = rng.randint(1, 4)
        await box.append([_conn(seq + k) for k in range(size)])
        appended.append((seq, seq + size - 1))
        seq += size
    confirmed: set[int] = set()   # first_seq of records wholly inside some confirmed range
    watermark = -1
    for step in range(600):
        lo = rng.randint(-3, seq + 3)
        hi = lo + rng.choice((0, 0, 1, 2, 3, 7, 20))
        if step % 50 == 49:      # now and then the next records in order: the watermark moves
            lo, hi = watermark + 1, watermark + rng.randint(1, 30)
        box.confirm(lo, hi)
        confirmed |= {first for first, last in appended if lo <= first and last <= hi}
        watermark = box.committed.watermark
        live = [(first, last) for first, last in appended if last > watermark]
        live_confirmed = {first for first in confirmed if first > watermark}
        for after in (-1, watermark, rng.randint(-2, seq + 2), seq - 1, seq + 5):
            assert _ranges(box.unconfirmed(after)) == _scan_unconfirmed(live, live_confirmed, after), (step, after)
    assert watermark > 0, "the random confirmations never moved the watermark"
    assert _ranges(box.unconfirmed(-1)) == _scan_unconfirmed(
        [(f, la) for f, la in appended if la > watermark], {f for f in confirmed if f > watermark}, -1)
    await box.close()


async def test_unconfirmed_returns_a_copy(tmp_path: Path) -> None:
    box = _outbox(tmp_path)
    for i in range(3):
        await box.append([_conn(i)])
    pending = box.unconfirmed(-1)
    pending.clear()   # the sender's list is its own: the outbox keeps its records
    assert _ranges(box.unconfirmed(-1)) == [(0, 0), (1, 1), (2, 2)]
    await box.close()


# -- the bound and the gauges ----------------------------------------------------------------


async def test_full_outbox_refuses_appends_and_loses_nothing(tmp_path: Path) -> None:
    box = _outbox(tmp_path, max_bytes=1000)
    accepted: list[list[Event]] = []
    while box.pending_bytes < 1000:
        events: list[Event] = [_meter(len(accepted))]
        await box.append(events)
        accepted.append(events)
    assert len(accepted) > 1
    with pytest.raises(BusFullError):
        await box.append([_conn(99)])
    records = box.unconfirmed(-1)
    assert _events_of(records) == [e for evs in accepted for e in evs]
    with pytest.raises(BusError):   # still full: refused again, without writing anything
        await box.append([_conn(99)])
    assert box.unconfirmed(-1) == records
    await box.close()

    again = _outbox(tmp_path, max_bytes=1000)
    assert again.unconfirmed(-1) == records   # everything acknowledged is still there
    with pytest.raises(BusFullError):
        await again.append([_conn(99)])
    again.confirm(0, records[-1].last_seq)    # ingest caught up: room again
    await again.append([_conn(100)])
    assert _ranges(again.unconfirmed(-1)) == [(len(records), len(records))]
    await again.close()


async def test_pending_gauges(tmp_path: Path) -> None:
    box = _outbox(tmp_path)
    assert (box.pending_events, box.pending_bytes, box.oldest_age_s()) == (0, 0, 0.0)
    now = datetime.now(UTC)
    await box.append([_conn(1, received_at=now - timedelta(seconds=5)), _meter(2, samples=10, received_at=now)])
    await box.append([_conn(3, received_at=now - timedelta(seconds=60))])
    assert box.pending_events == 3   # events, not samples
    assert box.pending_bytes == _segments(tmp_path)[0].stat().st_size
    assert 5.0 <= box.oldest_age_s() < 30.0   # the oldest *record*: its oldest event
    box.confirm(0, 1)
    assert box.pending_events == 1
    assert 60.0 <= box.oldest_age_s() < 90.0
    box.confirm(2, 2)
    assert (box.pending_events, box.pending_bytes, box.oldest_age_s()) == (0, 0, 0.0)
    await box.close()


# -- disk errors -------------------------------------------------------------------------------


async def test_a_short_write_is_refused_and_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = _outbox(tmp_path)
    await box.append([_conn(1)])
    real_write = os.write
    calls = 0

    def short_write(fd: int, data: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, data[: len(data) // 2])   # the disk filled up half-way
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", short_write)
    with pytest.raises(BusError):
        await box.append([_conn(2)])
    await box.append([_conn(3)])
    assert _ranges(box.unconfirmed(-1)) == [(0, 0), (1, 1)]
    await box.close()

    again = _outbox(tmp_path)   # the record after the fragment is read back: it was acknowledged
    assert [e.charge_point_id for e in _events_of(again.unconfirmed(-1))] == ["CP1", "CP3"]
    await again.close()


async def test_a_failed_fsync_is_refused_and_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = _outbox(tmp_path)
    await box.append([_conn(1)])
    real_fsync = os.fsync
    calls = 0

    def failing_fsync(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(BusError):
        await box.append([_conn(2)])
    await box.append([_conn(3)])
    await box.close()

    again = _outbox(tmp_path)   # the refused record does not come back with the same sequence number
    assert _ranges(again.unconfirmed(-1)) == [(0, 0), (1, 1)]
    assert [e.charge_point_id for e in _events_of(again.unconfirmed(-1))] == ["CP1", "CP3"]
    await again.close()


async def test_a_failed_segment_roll_does_not_break_later_appends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = _outbox(tmp_path, segment_bytes=1)
    await box.append([_conn(1)])
    real_open = os.open
    calls = 0

    def failing_open(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        nonlocal calls
        if str(path).endswith(".log"):
            calls += 1
            if calls == 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", failing_open)
    with pytest.raises(BusError):
        await box.append([_conn(2)])
    await box.append([_conn(3)])
    assert _ranges(box.unconfirmed(-1)) == [(0, 0), (1, 1)]
    await box.close()

    again = _outbox(tmp_path)
    assert [e.charge_point_id for e in _events_of(again.unconfirmed(-1))] == ["CP1", "CP3"]
    await again.close()
