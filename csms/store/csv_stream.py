"""Bulk CSV exports streamed straight from PostgreSQL's ``COPY … TO STDOUT (FORMAT csv)``.

Exports of a quarter's sessions run to half a million rows. Formatting them in Python costs
several times what PostgreSQL needs to produce them, so every value is formatted in SQL and the
rows leave as COPY emits them. The window is cut into slices of ``started_at`` (the first one
small, so the first row leaves at once; then doubling, up to about ``TARGET_SLICE_ROWS`` rows),
each one COPY in one repeatable-read snapshot, in order, two at a time on two connections. A bounded queue between
COPY and the HTTP response is the back-pressure: a slow client slows the COPY, nothing piles up.

CSV details: PostgreSQL quotes exactly what Python's ``csv`` module (QUOTE_MINIMAL) quotes, and
writes NULL as an empty field (queries give NULL, never '', for an empty value). It ends rows
with LF; the exports end them with CRLF (RFC 4180, and what EV-ChART's sample files use), so line
breaks inside values are written as spaces (:func:`text`) and every LF becomes CRLF.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
from collections.abc import AsyncGenerator, Sequence
from datetime import datetime, timedelta

import asyncpg
from asyncpg.pool import PoolConnectionProxy

FIRST_SLICE = timedelta(hours=1)
MAX_SLICE = timedelta(days=7)
MAX_SLICES = 10_000              # bounds the loop: more than 400 days in slices of ≥ 1 hour
FLUSH_BYTES = 256 * 1024         # chunks handed to the HTTP response
QUEUE_CHUNKS = 16                # per slice, between COPY and the response (back-pressure; the next
                                 # slice is computed at most this many chunks ahead)
TARGET_SLICE_ROWS = 20_000       # ~2–4 MB of CSV: a slice fits in its queue (QUEUE_CHUNKS × FLUSH_BYTES)
BOM = b"\xef\xbb\xbf"
WORK_MEM_MB = 64
SECOND_CONNECTION_WAIT_S = 0.05  # a second connection is used only when the pool has one free


def text(sql: str) -> str:
    """A text value for CSV: NULL when empty, line breaks as spaces."""
    return f"NULLIF(translate({sql}, E'\\r\\n', '  '), '')"


def header(columns: Sequence[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(columns)
    return BOM + buffer.getvalue().encode("utf-8")


class _Slicer:
    """The window's slices, in order: the first ``FIRST_SLICE`` wide (the first row leaves at once),
    each next one twice as wide, but no wider than the density seen so far says holds
    ``TARGET_SLICE_ROWS`` — so that a slice fits in its queue and the next one is computed in full
    while it leaves — nor than ``MAX_SLICE``."""

    def __init__(self, window: tuple[datetime, datetime]) -> None:
        self._lo, self._end = window
        self._width = FIRST_SLICE
        self._density: float | None = None   # rows per second of the latest slice with rows
        self._made = 0

    def observe(self, piece: tuple[datetime, datetime], rows: int) -> None:
        if rows > 0:
            self._density = rows / (piece[1] - piece[0]).total_seconds()

    def next(self) -> tuple[datetime, datetime] | None:
        if self._lo >= self._end:
            return None
        self._made += 1
        if self._made > MAX_SLICES:
            raise ValueError(f"more than {MAX_SLICES} slices in one export")
        piece = (self._lo, min(self._end, self._lo + self._width))
        self._lo = piece[1]
        width = self._width * 2
        if self._density:
            width = min(width, timedelta(seconds=TARGET_SLICE_ROWS / self._density))
        self._width = max(FIRST_SLICE, min(MAX_SLICE, width))
        return piece


Conn = asyncpg.Connection | PoolConnectionProxy


def _produce(conn: Conn, piece: tuple[datetime, datetime], bounds_sql: str, bounds_args: Sequence[object],
             rows_sql: tuple[str, str], args: Sequence[object], slicer: _Slicer,
             ) -> tuple[asyncio.Queue[bytes | None], asyncio.Task[None]]:
    """One slice's COPY into a bounded queue (None at its end), as a task."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_CHUNKS)
    pending = bytearray()

    async def sink(data: bytes) -> None:
        pending.extend(data)
        if len(pending) >= FLUSH_BYTES:
            await queue.put(bytes(pending).replace(b"\n", b"\r\n"))
            pending.clear()

    async def run() -> None:
        try:
            bounds = await conn.fetchrow(bounds_sql, *piece, *bounds_args)
            slicer.observe(piece, bounds["n"] if bounds is not None else 0)
            if bounds is not None and bounds["n"]:
                if bounds["raw_lo"] is None:     # every session settled: a plain read
                    await conn.copy_from_query(rows_sql[0], *piece, *args, output=sink, format="csv")
                else:                            # and the others from the samples of this span
                    await conn.copy_from_query(rows_sql[1], *piece, *args, bounds["raw_lo"], bounds["raw_hi"],
                                               output=sink, format="csv")
                if pending:
                    await queue.put(bytes(pending).replace(b"\n", b"\r\n"))
        finally:
            await queue.put(None)

    return queue, asyncio.create_task(run(), name="csv-export-copy")


async def _stop(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, asyncpg.PostgresError, asyncpg.InterfaceError):
        await task


async def stream(pool: asyncpg.Pool, *, columns: Sequence[str], window: tuple[datetime, datetime],
                 bounds_sql: str, rows_sql: tuple[str, str], bounds_args: Sequence[object] = (),
                 args: Sequence[object] = ()) -> AsyncGenerator[bytes, None]:
    """The header, then the rows of each slice [lo, hi) of ``window``. ``bounds_sql`` ($1 lo, $2 hi,
    then ``bounds_args``) gives the slice's row count ``n`` and the span ``raw_lo``/``raw_hi`` of the
    samples its rows read (NULL: none; ``csms.store.session_rows``); ``rows_sql`` its rows,
    ordered: (when no samples are read: $1 lo, $2 hi, then ``args``; otherwise the same and that span).

    With a second connection free in the pool, both share one snapshot (``pg_export_snapshot``): while
    the rows of one slice leave, the next is computed on the other connection (at most QUEUE_CHUNKS ×
    FLUSH_BYTES ahead), so PostgreSQL works on two cores; otherwise the slices run one after another."""
    slicer = _Slicer(window)
    yield header(columns)
    async with pool.acquire() as first, first.transaction(isolation="repeatable_read", readonly=True):
        conns: list[Conn] = [first]
        second: PoolConnectionProxy | None = None
        with contextlib.suppress(TimeoutError):
            # Only a free one: exports waiting for each other's second connection must never deadlock.
            second = await pool.acquire(timeout=SECOND_CONNECTION_WAIT_S)
        snapshot = await first.fetchval("SELECT pg_export_snapshot()") if second is not None else None
        side = second.transaction(isolation="repeatable_read", readonly=True) if second is not None else None
        running: list[tuple[asyncio.Queue[bytes | None], asyncio.Task[None]]] = []
        try:
            if second is not None and side is not None:
                await side.start()
                await second.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")   # its first statement (PG docs)
                conns.append(second)
            for conn in conns:
                # A slice's joins and aggregates fit in this; the default (4 MB) sorts them on disk.
                await conn.execute(f"SET LOCAL work_mem = '{WORK_MEM_MB}MB'")
                # A slice is planned afresh each time: compiling it (JIT) costs more than it saves; and the
                # two connections already keep the cores busy (parallel workers would only compete).
                await conn.execute("SET LOCAL jit = off")
                await conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            for conn in conns:
                piece = slicer.next()
                if piece is not None:
                    running.append(_produce(conn, piece, bounds_sql, bounds_args, rows_sql, args, slicer))
            for i in range(MAX_SLICES):   # bounded by the slicer (it raises beyond MAX_SLICES)
                if i >= len(running):
                    break
                queue, task = running[i]
                for _ in range(1 << 40):   # bounded by the slice's end (None)
                    chunk = await queue.get()
                    if chunk is None:
                        break
                    yield chunk
                await task   # raises what the COPY raised
                piece = slicer.next()      # the connection of slice i is free: the next slice for it
                if piece is not None:
                    running.append(_produce(conns[i % len(conns)], piece, bounds_sql, bounds_args, rows_sql, args,
                                            slicer))
        finally:
            # A client gone (or an error): every COPY ends before the connections go back.
            for _, task in running:
                await _stop(task)
            if second is not None:
                if side is not None:
                    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError):
                        await side.rollback()
                await pool.release(second)
