"""The per-connection CALL queue: FIFO, bounded, waiting on both ends, cancellation-safe."""

from __future__ import annotations

import asyncio

import pytest

from csms.gateway.call_queue import CallQueue


async def test_items_come_out_in_order_and_the_bound_holds() -> None:
    q: CallQueue[int] = CallQueue(3)
    for i in range(3):
        q.put_nowait(i)
    assert q.full()
    assert q.qsize() == 3
    with pytest.raises(asyncio.QueueFull):
        q.put_nowait(3)
    assert [q.get_nowait() for _ in range(3)] == [0, 1, 2]
    assert q.empty()
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()


async def test_a_getter_waits_for_an_item() -> None:
    q: CallQueue[str] = CallQueue(2)
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not getter.done()
    q.put_nowait("a")
    assert await asyncio.wait_for(getter, 5) == "a"


async def test_a_putter_waits_for_room_and_keeps_order() -> None:
    q: CallQueue[int] = CallQueue(1)
    q.put_nowait(1)
    putter = asyncio.create_task(q.put(2))
    await asyncio.sleep(0)
    assert not putter.done()
    assert q.get_nowait() == 1
    await asyncio.wait_for(putter, 5)
    assert q.get_nowait() == 2


async def test_a_cancelled_putter_leaves_no_trace() -> None:
    q: CallQueue[int] = CallQueue(1)
    q.put_nowait(1)
    cancelled = asyncio.create_task(q.put(99))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.wait({cancelled})
    waiting = asyncio.create_task(q.put(2))
    await asyncio.sleep(0)
    assert q.get_nowait() == 1
    await asyncio.wait_for(waiting, 5)   # the wake-up went to the putter still waiting
    assert q.get_nowait() == 2
    assert q.empty()


async def test_a_wake_up_is_passed_on_when_its_getter_is_cancelled_at_once() -> None:
    q: CallQueue[int] = CallQueue(4)
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.put_nowait(7)        # wakes the first getter ...
    first.cancel()         # ... which is cancelled before it runs: the second must get the item
    assert await asyncio.wait_for(second, 5) == 7
    assert first.cancelled()


async def test_a_bound_below_one_is_one() -> None:
    q: CallQueue[int] = CallQueue(0)
    q.put_nowait(1)
    assert q.full()
