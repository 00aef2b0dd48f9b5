"""One long-lived thread for the outbox's blocking disk writes.

Why not ``asyncio.to_thread``: the outbox group-commits hundreds of times a second, and each
``to_thread`` builds a work item, a ``concurrent.futures.Future`` chained to an asyncio one
and runs the executor's thread bookkeeping under its lock. Profiled under load (issue 15),
``ThreadPoolExecutor.submit`` alone was 6–11 % of the gateway's CPU. Here a submission is one
``SimpleQueue.put`` (C) and the answer one ``call_soon_threadsafe``. Writes stay in order:
there is one thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable

_Job = tuple[Callable[[], None], asyncio.AbstractEventLoop, "asyncio.Future[None]"]


def _settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():  # the awaiting side was cancelled
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)


class DiskThread:
    """Runs blocking callables one at a time, in submission order, on a daemon thread."""

    def __init__(self, *, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, job: Callable[[], None]) -> asyncio.Future[None]:
        """Schedule ``job``; the returned future completes (or fails with its exception) after it ran."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        self._jobs.put((job, loop, fut))
        return fut

    def _serve(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, loop, fut = item
            error: BaseException | None = None
            try:
                job()
            except Exception as exc:  # noqa: BLE001 - handed to the awaiting side
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
                loop.call_soon_threadsafe(_settle, fut, error)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Let the queued jobs finish, then end the thread (within ``timeout_s``)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._jobs.put(None)
        thread.join(timeout_s)
