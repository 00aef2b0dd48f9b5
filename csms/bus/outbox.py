"""The node's outbox: a bounded, fsync'ed, append-only log of event batches.

A charger's data-carrying message is answered only once its events are durable. On a
node that publishes to MQTT that point is here: Mosquitto persists only periodic
snapshots, so a PUBACK does not mean "on disk". Appends are group-committed: every
append that arrives while a write+fsync is in flight joins the next one; and while the
outbox is busy (its last write ended less than ``commit_delay_s`` ago) a write waits that
long first, so that more answers share one fsync. An idle outbox writes at once.

Each record is one ``EventBatch`` (MessagePack) with a consecutive sequence range. The
log is trimmed only when the ingest side confirms that the records' rows are committed
(``csms/v1/committed/<node>``); until then the records are kept, survive a crash of the
process, and are sent again. When the log reaches ``max_bytes`` new appends are refused
(``BusFullError``): the central system stops acknowledging data messages, chargers
retry them, and nothing already acknowledged is dropped.

File format: segment files ``<first_seq:020d>.log`` of records
``[u32 length][u32 crc32][payload]``; a torn record at the end of the last segment
(crash during a write) fails its CRC and is cut off on start-up.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import functools
import logging
import os
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path

import msgspec

from csms.bus.disk_thread import DiskThread
from schemas import EVENT_SCHEMA_VERSION
from schemas.bus import BusError, BusFullError
from schemas.events import Event, EventBatch, decode_batch, encode_batch

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_SEGMENT_SUFFIX = ".log"
_FIRST_SEQ = attrgetter("first_seq")
_LAST_SEQ = attrgetter("last_seq")


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    first_seq: int
    last_seq: int
    payload: bytes            # an encoded EventBatch
    oldest_received_at: datetime


class CommittedRanges:
    """Confirmed sequence ranges; ``watermark`` is the highest seq with everything below confirmed."""

    def __init__(self, watermark: int) -> None:
        self.watermark = watermark
        self._ranges: list[tuple[int, int]] = []

    def add(self, first: int, last: int) -> bool:
        """Record a confirmed range; return True if the watermark moved."""
        if last < first or last <= self.watermark:
            return False
        self._ranges.append((max(first, self.watermark + 1), last))
        self._ranges.sort()
        moved = False
        merged: list[tuple[int, int]] = []
        for lo, hi in self._ranges:
            if lo <= self.watermark + 1:
                if hi > self.watermark:
                    self.watermark = hi
                    moved = True
            elif merged and lo <= merged[-1][1] + 1:  # overlapping, adjacent or repeated: kept once
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        self._ranges = [(lo, hi) for lo, hi in merged if hi > self.watermark]
        if len(self._ranges) > 10_000:  # bounded: a confirmation storm cannot grow memory
            self._ranges = self._ranges[-10_000:]
        return moved


class Outbox:
    def __init__(self, *, directory: Path, node_id: str, max_bytes: int, segment_bytes: int = 16 * 2**20,
                 fsync: bool = True, commit_delay_s: float = 0.0) -> None:
        self._dir = directory
        self._node_id = node_id
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._records: list[OutboxRecord] = []   # above the watermark, in order (memory bounded by max_bytes)
        self._confirmed: set[int] = set()        # first_seq of records confirmed out of order
        self._watermark_written_at = 0.0
        self._segment_starts: list[int] = []     # first_seq of each segment file, ascending
        self._bytes = 0
        self._next_seq = 0
        self.committed = CommittedRanges(-1)
        self._segment: Path | None = None
        self._segment_fd: int | None = None
        self._segment_size = 0
        self._pending: list[tuple[list[Event], asyncio.Future[None]]] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._commit_delay_s = commit_delay_s
        self._last_write_ended = float("-inf")   # loop time
        self._disk = DiskThread(name=f"outbox-writer-{node_id}")
        self.appended = asyncio.Event()      # set when a record is added (the sender waits on it)

    # -- start-up ---------------------------------------------------------------------

    def open(self) -> None:
        """Read the segments back after a restart (or a crash) and resume the sequence."""
        self._dir.mkdir(parents=True, exist_ok=True)
        watermark = self._read_watermark()
        self.committed = CommittedRanges(watermark)
        segments = sorted(self._dir.glob(f"*{_SEGMENT_SUFFIX}"))
        self._segment_starts = [int(path.stem) for path in segments]
        for path in segments:
            self._load_segment(path, last=path == segments[-1])
        self._next_seq = max(self._records[-1].last_seq + 1 if self._records else 0, watermark + 1)
        self._drop_confirmed()
        if self._records:
            logger.info("outbox: %d batches (%d events) from before the restart are not confirmed yet; "
                        "sending them again", len(self._records), self.pending_events)

    def _load_segment(self, path: Path, *, last: bool) -> None:
        data = path.read_bytes()
        pos = 0
        while pos + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, pos)
            payload = data[pos + _HEADER.size: pos + _HEADER.size + length]
            if len(payload) != length or zlib.crc32(payload) != crc:
                break
            try:
                batch = decode_batch(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                break
            self._remember(payload, batch)
            pos += _HEADER.size + length
        if pos != len(data):
            logger.warning("outbox: cutting a torn record off %s at byte %d of %d", path.name, pos, len(data))
            if last:
                with path.open("r+b") as fh:
                    fh.truncate(pos)
                    os.fsync(fh.fileno())

    def _remember(self, payload: bytes, batch: EventBatch) -> None:
        record = OutboxRecord(batch.first_seq, batch.first_seq + len(batch.events) - 1, payload,
                              batch.oldest_received_at or datetime.now(UTC))
        self._records.append(record)
        self._bytes += len(payload) + _HEADER.size

    # -- appending ----------------------------------------------------------------------

    async def append(self, events: Sequence[Event]) -> None:
        """Return once the events are on disk (fsync'ed); raise BusFullError when the outbox is full."""
        if not events:
            return
        if self._bytes >= self._max_bytes:
            raise BusFullError(f"outbox full ({self._bytes} bytes unconfirmed); is the broker or ingest down?")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((list(events), fut))
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush(), name="outbox-flush")
        await fut

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            if loop.time() - self._last_write_ended < self._commit_delay_s:
                # Busy: let more appends join this write. A write costs the same fsync and two
                # thread hand-offs whether it carries one answer or twenty; under load they arrive
                # a few per write otherwise. PostgreSQL's commit_delay does the same for its WAL
                # flush (postgresql.org/docs/15/runtime-config-wal.html, commit_delay).
                await asyncio.sleep(self._commit_delay_s)
            group, self._pending = self._pending, []
            events = [e for evs, _ in group for e in evs]
            batch = EventBatch(schema_version=EVENT_SCHEMA_VERSION, node_id=self._node_id,
                               first_seq=self._next_seq, events=events,
                               oldest_received_at=min(e.received_at for e in events))
            payload = encode_batch(batch)
            try:
                await self._disk.run(functools.partial(self._write, payload))
            except OSError as exc:
                logger.error("outbox write failed: %s", exc)
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(BusError(f"outbox write failed: {exc}"))
                continue
            finally:
                self._last_write_ended = loop.time()
            self._next_seq += len(events)
            self._remember(payload, batch)
            self.appended.set()
            for _, fut in group:
                if not fut.done():
                    fut.set_result(None)

    def _write(self, payload: bytes) -> None:
        """Append one record and fsync (runs on the disk thread: the event loop never waits on the disk)."""
        if self._segment_fd is None or self._segment_size >= self._segment_bytes:
            self._roll_segment()
        assert self._segment_fd is not None
        record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        try:
            written = os.write(self._segment_fd, record)
            if written != len(record):
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(record)} bytes)")
            if self._fsync:
                os.fsync(self._segment_fd)
        except OSError:
            # Cut the refused record off: the next one must follow the last good record, or
            # a restart would stop reading at the fragment and lose the records after it.
            with contextlib.suppress(OSError):
                os.ftruncate(self._segment_fd, self._segment_size)
            raise
        self._segment_size += len(record)

    def _roll_segment(self) -> None:
        if self._segment_fd is not None:
            os.close(self._segment_fd)
            self._segment_fd = None  # if opening the next one fails, the next write tries again
        self._segment = self._dir / f"{self._next_seq:020d}{_SEGMENT_SUFFIX}"
        self._segment_fd = os.open(self._segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if self._next_seq not in self._segment_starts:
            self._segment_starts.append(self._next_seq)
        self._segment_size = os.fstat(self._segment_fd).st_size
        dir_fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new file's name is durable too
        finally:
            os.close(dir_fd)

    # -- sending and confirming ---------------------------------------------------------------

    def unconfirmed(self, after_seq: int) -> list[OutboxRecord]:
        """Records after ``after_seq`` not yet confirmed, oldest first.

        Records confirmed out of order (another worker committed them first) are skipped:
        resending them would only create duplicates, and — with a broker that hands shared
        subscription messages out round-robin — would keep the same records landing on the
        same worker every time.
        """
        # Records are in sequence order, so a bisection finds the first one after ``after_seq``:
        # the sender asks every coalesce window, and a scan of the whole backlog each time
        # (ingest lagging: tens of thousands of records) took a third of the event loop.
        start = bisect.bisect_right(self._records, after_seq, key=_LAST_SEQ)
        if not self._confirmed:
            return self._records[start:]
        return [r for r in self._records[start:] if r.first_seq not in self._confirmed]

    def confirm(self, first: int, last: int) -> None:
        # Only the records inside [first, last], found by bisection: confirmations arrive for
        # every ingest batch, and a scan of the whole backlog per confirmation made the cost
        # grow with the backlog, i.e. worst exactly when ingest lags.
        i = bisect.bisect_left(self._records, first, key=_FIRST_SEQ)
        while i < len(self._records) and self._records[i].last_seq <= last:
            self._confirmed.add(self._records[i].first_seq)
            i += 1
        if self.committed.add(first, last):
            self._drop_confirmed()
            # At most once a second (and at close): on a busy node confirmations arrive for
            # every batch, and a stale watermark only means some batches are sent again.
            now = time.monotonic()
            if now - self._watermark_written_at >= 1.0:
                self._write_watermark()
                self._watermark_written_at = now

    def _drop_confirmed(self) -> None:
        mark = self.committed.watermark
        keep = 0
        while keep < len(self._records) and self._records[keep].last_seq <= mark:
            self._bytes -= len(self._records[keep].payload) + _HEADER.size
            keep += 1
        if keep:
            for record in self._records[:keep]:
                self._confirmed.discard(record.first_seq)
            del self._records[:keep]
        # A segment can go once the next one starts at or below watermark + 1 (all of its
        # records are confirmed). The newest segment is kept: it may be the one being written.
        # The list of segments is kept in memory: no directory listing per confirmation.
        while (len(self._segment_starts) >= 2 and self._segment_starts[1] - 1 <= mark
               and (self._segment is None or int(self._segment.stem) != self._segment_starts[0])):
            first = self._segment_starts.pop(0)
            (self._dir / f"{first:020d}{_SEGMENT_SUFFIX}").unlink(missing_ok=True)

    def _watermark_path(self) -> Path:
        return self._dir / "committed"

    def _read_watermark(self) -> int:
        try:
            return int(self._watermark_path().read_text().strip())
        except (FileNotFoundError, ValueError):
            return -1

    def _write_watermark(self) -> None:
        # Not fsync'ed: a stale watermark only means some confirmed batches are sent again,
        # and ingest absorbs the duplicates.
        tmp = self._watermark_path().with_suffix(".tmp")
        tmp.write_text(str(self.committed.watermark))
        os.replace(tmp, self._watermark_path())

    # -- state ------------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    @property
    def pending_events(self) -> int:
        # Records are consecutive ranges in order (some may be confirmed out of order).
        return self._records[-1].last_seq - self._records[0].first_seq + 1 if self._records else 0

    def oldest_age_s(self) -> float:
        if not self._records:
            return 0.0
        return max(0.0, (datetime.now(UTC) - self._records[0].oldest_received_at).total_seconds())

    async def close(self) -> None:
        if self._flush_task is not None:
            await self._flush_task
        self._disk.stop()
        if self._segment_fd is not None:
            os.close(self._segment_fd)
            self._segment_fd = None
        self._write_watermark()


