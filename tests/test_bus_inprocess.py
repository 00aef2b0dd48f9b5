"""The in-process bus: group commit, failures reach every publisher, bounded memory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pytest

from csms.bus.inprocess import InProcessBus
from schemas.bus import BusError
from schemas.events import ConnectionEvent, Event


def _event(i: int) -> ConnectionEvent:
    now = datetime.now(UTC)
    return ConnectionEvent(charge_point_id=f"CP{i}", received_at=now, time=now, event="connected")


class RecordingSink:
    """A sink that records each write and can be made slow or failing."""

    def __init__(self) -> None:
        self.writes: list[list[Event]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False
        self.entered = asyncio.Event()

    async def write(self, events: Sequence[Event]) -> None:
        self.entered.set()
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("disk on fire")
        self.writes.append(list(events))


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait (bounded) for a state of the bus instead of a fixed sleep: on a busy machine the writer
    task may not have run yet after any given sleep."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_publishes_during_a_write_share_the_next_write() -> None:
    sink = RecordingSink()
    bus = InProcessBus(sink=sink, max_batch_rows=1000)
    await bus.start()
    sink.gate.clear()
    first = asyncio.create_task(bus.publish([_event(0)]))
    await asyncio.wait_for(sink.entered.wait(), 10)  # the writer is now blocked inside the first write
    rest = [asyncio.create_task(bus.publish([_event(i)])) for i in range(1, 51)]
    await _until(lambda: bus._queue.qsize() == 50)   # all 50 queued behind it
    sink.gate.set()
    await asyncio.gather(first, *rest)
    assert [len(w) for w in sink.writes] == [1, 50]
    await bus.close()


async def test_a_failed_write_fails_every_publisher_of_that_batch() -> None:
    sink = RecordingSink()
    sink.fail = True
    bus = InProcessBus(sink=sink)
    await bus.start()
    results = await asyncio.gather(*(bus.publish([_event(i)]) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, BusError) for r in results)
    sink.fail = False
    await bus.publish([_event(9)])  # the bus keeps working after a failure
    assert len(sink.writes) == 1
    assert sink.writes[0][0].charge_point_id == "CP9"
    await bus.close()


async def test_pending_rows_are_bounded() -> None:
    sink = RecordingSink()
    bus = InProcessBus(sink=sink, max_batch_rows=10, max_pending_rows=10)
    await bus.start()
    sink.gate.clear()
    tasks = [asyncio.create_task(bus.publish([_event(i)])) for i in range(30)]
    await asyncio.wait_for(sink.entered.wait(), 10)
    await _until(lambda: bus._pending_rows == 10)  # the bound is reached: the rest must wait now
    assert bus._pending_rows <= 10  # publishers beyond the bound wait instead of queueing
    sink.gate.set()
    await asyncio.gather(*tasks)
    assert sum(len(w) for w in sink.writes) == 30
    await bus.close()


async def test_publish_after_close_is_refused() -> None:
    bus = InProcessBus(sink=RecordingSink())
    await bus.start()
    await bus.close()
    with pytest.raises(BusError):
        await bus.publish([_event(1)])
