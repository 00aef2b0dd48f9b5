"""The outbox's confirm/unconfirmed over a backlog: the bisection agrees with a plain scan.

``confirm`` and ``unconfirmed`` find their records by bisection (a scan of the whole
backlog per confirmation took a third of the event loop while ingest lagged). This checks
them against the obvious scan, over random appends and random confirmations: ranges that
cover several records, part of one, none, ranges beyond the end, repeats, out of order.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

from csms.bus.outbox import Outbox, OutboxRecord
from schemas.events import ConnectionEvent

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def _conn(i: int) -> ConnectionEvent:
    return ConnectionEvent(charge_point_id=f"CP{i}", received_at=T0, time=T0, event="connected", node_id="n1")


def _scan_unconfirmed(records: list[tuple[int, int]], confirmed: set[int], after: int) -> list[tuple[int, int]]:
    return [(lo, hi) for lo, hi in records if hi > after and lo not in confirmed]


def _ranges(records: list[OutboxRecord]) -> list[tuple[int, int]]:
    return [(r.first_seq, r.last_seq) for r in records]


async def test_bisection_agrees_with_a_scan_over_a_random_backlog(tmp_path: Path) -> None:
    rng = random.Random(15)
    box = Outbox(directory=tmp_path, node_id="n1", max_bytes=2**30)
    box.open()
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
    box = Outbox(directory=tmp_path, node_id="n1", max_bytes=2**20)
    box.open()
    for i in range(3):
        await box.append([_conn(i)])
    pending = box.unconfirmed(-1)
    pending.clear()   # the sender's list is its own: the outbox keeps its records
    assert _ranges(box.unconfirmed(-1)) == [(0, 0), (1, 1), (2, 2)]
    await box.close()
