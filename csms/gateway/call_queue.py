"""A connection's bounded queue of received CALLs: ``asyncio.Queue``'s interface, a fraction of its memory.

``asyncio.Queue`` allocates three deques and an ``Event`` (a fourth deque): about 3 KiB per
connection before anything is queued, measured with tracemalloc (issue 15). A charger queues
at most ``max_queued_calls_per_connection`` CALLs (32), so a list does, and its waiters are
allocated only while someone waits.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


def _wake_first(waiters: list[asyncio.Future[None]] | None) -> None:
    while waiters:
        waiter = waiters.pop(0)
        if not waiter.done():
            waiter.set_result(None)
            return


class CallQueue(Generic[T]):
    """FIFO of at most ``maxsize`` items (at least one); ``get``/``put`` wait, the ``_nowait`` forms raise."""

    __slots__ = ("_getters", "_items", "_maxsize", "_putters")

    def __init__(self, maxsize: int) -> None:
        self._items: list[T] = []
        self._maxsize = max(1, maxsize)
        self._getters: list[asyncio.Future[None]] | None = None
        self._putters: list[asyncio.Future[None]] | None = None

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return len(self._items) >= self._maxsize

    def put_nowait(self, item: T) -> None:
        if len(self._items) >= self._maxsize:
            raise asyncio.QueueFull
        self._items.append(item)
        _wake_first(self._getters)

    def get_nowait(self) -> T:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.pop(0)
        _wake_first(self._putters)
        return item

    async def put(self, item: T) -> None:
        while len(self._items) >= self._maxsize:
            if self._putters is None:
                self._putters = []
            await self._wait(self._putters)
        self.put_nowait(item)

    async def get(self) -> T:
        while not self._items:
            if self._getters is None:
                self._getters = []
            await self._wait(self._getters)
        return self.get_nowait()

    async def _wait(self, waiters: list[asyncio.Future[None]]) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter in waiters:
                waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                # Woken and cancelled at once: pass the wake-up on, or it is lost.
                _wake_first(self._putters if waiters is self._putters else self._getters)
            raise
