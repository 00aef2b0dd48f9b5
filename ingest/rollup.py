"""Keeps ``port_state_15m``, ``port_state_day`` and ``port_occupancy_spans`` up to date
(migrations 0003, 0005): occupied and charging seconds and the energy that flowed, per port; and
``session_summary`` (migration 0008): each finished session's peak power and first/last SoC, for
the bulk session exports; and ``status_successor`` (0008): the status row after each Faulted/
Unavailable row, which uptime reads instead of looking it up.

The Apache-2 TimescaleDB edition has no continuous aggregates, so this is their stand-in.
Each refresh recomputes, for every registered port, the buckets from the watermark to the
last whole quarter hour, and for ports the writer marked dirty (rows stored behind the
watermark: late, replayed or back-filled data) from the quarter hour of the mark; either
point is moved back to the start of a session running there (energy interpolation looks
ahead, ``schemas.port_state_read.settled_cuts``). A mark is cleared only if no writer touched it
during the refresh (its version is unchanged), so nothing stored meanwhile is missed. One
refresher runs at a time (advisory lock).

One port's rows can never stop the roll-up for the others: a group of ports that fails is
recomputed port by port, and a port that still fails is logged once, counted
(``RefreshResult.failed_ports``, ``csms_rollup_port_failures_total``), left marked dirty (so
reports compute it from raw rows and the next refresh retries it) while the others move on.
Nothing before 2010 (``schemas.port_state.EARLIEST``) is rolled up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from prometheus_client import Counter

from ingest.rollup_rows import port_rows, recompute, write_rows
from schemas.port_state import (
    EARLIEST,
    PortHistory,
    PortKey,
    floor_bucket,
)
from schemas.port_state_read import load_histories, settled_cuts

logger = logging.getLogger(__name__)

PREFETCH_CONNECTION_WAIT_S = 0.05   # the read-ahead uses a second connection only when one is free
ROLLUP_LOCK_KEY = int.from_bytes(hashlib.sha256(b"csms-rollup").digest()[:8], "big", signed=True)


@dataclass(frozen=True, slots=True)
class RefreshResult:
    ran: bool
    rolled_until: datetime | None
    ports: int = 0
    buckets_written: int = 0
    spans_written: int = 0
    seconds: float = 0.0
    failed_ports: int = 0


async def _start(conn: asyncpg.Connection | PoolConnectionProxy, until: datetime) -> datetime:
    """The watermark; on the first run, the first quarter hour with data (from 2010 on)."""
    mark = await conn.fetchval("SELECT rolled_until FROM port_state_watermark")
    if mark is not None:
        return max(min(mark, until), EARLIEST)  # type: ignore[no-any-return]
    known = [t for t in [await conn.fetchval(f"SELECT min({column}) FROM {table} WHERE {column} >= $1", EARLIEST)
                         for table, column in (("connector_status", "time"), ("transaction_events", "time"),
                                               ("transactions", "started_at"))]  # fixed names
             if t is not None]
    return floor_bucket(min(known)) if known else until


# Ports whose recompute failed: logged once until they succeed again (bounded).
_FAILING: set[tuple[str, int]] = set()
_FAILING_MAX = 10_000
# A failed port is retried from where it failed: its dirty mark is kept (or set).
_KEEP_DIRTY = """
INSERT INTO port_state_dirty AS d (charge_point_id, evse_id, since)
SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[])
ON CONFLICT (charge_point_id, evse_id) DO UPDATE SET since = LEAST(d.since, EXCLUDED.since), version = d.version + 1
"""


async def refresh(pool: asyncpg.Pool, *, now: datetime | None = None, ports_per_query: int = 100) -> RefreshResult:
    """Bring the roll-up up to the last whole quarter hour before ``now``."""
    began = time.perf_counter()
    until = floor_bucket(now or datetime.now(UTC))
    failed: list[tuple[str, int, datetime]] = []
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", ROLLUP_LOCK_KEY):
            return RefreshResult(ran=False, rolled_until=None)
        try:
            watermark = await _start(conn, until)
            dirty_rows = await conn.fetch("SELECT charge_point_id, evse_id, since, version FROM port_state_dirty")
            by_cp = {r["charge_point_id"]: floor_bucket(max(r["since"], EARLIEST))
                     for r in dirty_rows if r["evse_id"] == 0}
            by_port = {(r["charge_point_id"], r["evse_id"]): floor_bucket(max(r["since"], EARLIEST))
                       for r in dirty_rows if r["evse_id"] != 0}
            marked = []
            zones: dict[tuple[str, int], str] = {}
            for r in await conn.fetch(
                    """SELECT e.charge_point_id, e.evse_id, COALESCE(l.time_zone, 'UTC') AS time_zone FROM evses e
                       JOIN charge_points c ON c.id = e.charge_point_id LEFT JOIN locations l ON l.id = c.location_id
                       ORDER BY 1, 2"""):
                cp, evse = r["charge_point_id"], r["evse_id"]
                zones[(cp, evse)] = r["time_zone"]
                marked.append((cp, evse, min(t for t in (watermark, by_cp.get(cp), by_port.get((cp, evse)))
                                             if t is not None)))
            cuts = await settled_cuts(conn, [p for p in marked if p[2] < until])
            ports = [(cp, evse, cuts[(cp, evse)]) for cp, evse, _ in marked if (cp, evse) in cuts]
            buckets = spans = 0
            groups = [ports[i:i + ports_per_query] for i in range(0, len(ports), ports_per_query)]
            for b, s, bad in await _pipeline(pool, conn, groups, until, zones):
                buckets += b
                spans += s
                failed.extend(bad)
            async with conn.transaction():
                await conn.execute(
                    """INSERT INTO port_state_watermark (rolled_until) VALUES ($1)
                       ON CONFLICT (singleton) DO UPDATE SET rolled_until = EXCLUDED.rolled_until""", until)
                await conn.execute(
                    """DELETE FROM port_state_dirty d
                       USING unnest($1::text[], $2::int[], $3::bigint[]) AS v(cp, evse, ver)
                       WHERE d.charge_point_id = v.cp AND d.evse_id = v.evse AND d.version = v.ver""",
                    [r["charge_point_id"] for r in dirty_rows], [r["evse_id"] for r in dirty_rows],
                    [r["version"] for r in dirty_rows])
                if failed:
                    await conn.execute(_KEEP_DIRTY, [f[0] for f in failed], [f[1] for f in failed],
                                       [f[2] for f in failed])
        finally:
            try:
                await conn.execute("SELECT pg_advisory_unlock($1)", ROLLUP_LOCK_KEY)
            except BaseException:
                # The writer's pool does not reset sessions (ingest/writer.py keep_session): a
                # lock kept on a pooled connection would stop every later roll-up.
                conn.terminate()
                raise
    return RefreshResult(True, until, len(ports), buckets, spans, time.perf_counter() - began, len(failed))


class _Prefetch:
    """Reads the next group's rows on a second connection while this one is computed and written, so
    PostgreSQL and Python work at the same time (the first full roll-up reads a year per port). Without
    a free connection in the pool, or after a failed read, each group reads its own rows as before."""

    def __init__(self, pool: asyncpg.Pool, groups: list[list[tuple[str, int, datetime]]], until: datetime) -> None:
        self._pool, self._groups, self._until = pool, groups, until
        self._conn: PoolConnectionProxy | None = None
        self._task: asyncio.Task[dict[PortKey, PortHistory]] | None = None
        self._next = 0

    async def __aenter__(self) -> _Prefetch:
        if len(self._groups) > 1:
            with contextlib.suppress(TimeoutError):
                self._conn = await self._pool.acquire(timeout=PREFETCH_CONNECTION_WAIT_S)
        return self

    def _start(self, index: int) -> None:
        if self._conn is not None and index < len(self._groups):
            self._task = asyncio.create_task(load_histories(self._conn, self._groups[index], self._until),
                                             name="rollup-prefetch")
            self._next = index

    async def histories(self, index: int) -> dict[PortKey, PortHistory] | None:
        """Group ``index``'s rows if they were read ahead (None: the group reads them), and the next
        group's read started."""
        found = None
        if self._task is not None and self._next == index:
            try:
                found = await self._task
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                logger.info("roll-up read-ahead failed, reading group by group: %s", exc)
                await self._release()
            self._task = None
        self._start(index + 1)   # (the first group reads its own rows while the second one is read ahead)
        return found

    async def _release(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await self._task
            self._task = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._pool.release(conn)

    async def __aexit__(self, *exc: object) -> None:
        await self._release()


async def _pipeline(pool: asyncpg.Pool, conn: asyncpg.Connection | PoolConnectionProxy,
                    groups: list[list[tuple[str, int, datetime]]], until: datetime,
                    zones: dict[tuple[str, int], str]) -> list[tuple[int, int, list[tuple[str, int, datetime]]]]:
    """Every group's recompute, as a pipeline when a second connection is free: group i + 2 is read
    (there), group i + 1 computed (in a thread, off the event loop) and group i written (here) at
    once, so PostgreSQL and Python work side by side; otherwise one group after another."""
    out = []
    async with _Prefetch(pool, groups, until) as ahead:
        writing: tuple[list[tuple[str, int, datetime]], asyncio.Task[tuple[int, int]]] | None = None
        try:
            for i, group in enumerate(groups):
                histories = await ahead.histories(i)
                rows = None
                if histories is not None:
                    with contextlib.suppress(Exception):   # its data: recomputed port by port below
                        rows = await asyncio.to_thread(port_rows, group, histories, until)
                if writing is not None:
                    out.append(await _recompute_isolated(conn, writing[0], until, zones, writing[1]))
                    writing = None
                if rows is None:
                    out.append(await _recompute_isolated(conn, group, until, zones))
                else:
                    writing = (group, asyncio.create_task(write_rows(conn, group, rows, until, zones),
                                                          name="rollup-write"))
            if writing is not None:
                out.append(await _recompute_isolated(conn, writing[0], until, zones, writing[1]))
                writing = None
        finally:
            if writing is not None:
                writing[1].cancel()
                with contextlib.suppress(BaseException):
                    await writing[1]
    return out


async def _recompute_isolated(conn: asyncpg.Connection | PoolConnectionProxy, group: list[tuple[str, int, datetime]],
                              until: datetime, zones: dict[tuple[str, int], str],
                              done: Awaitable[tuple[int, int]] | None = None,
                              ) -> tuple[int, int, list[tuple[str, int, datetime]]]:
    """Recompute a group (or see its recompute ``done`` already under way); if it fails on its data,
    each port alone, returning the ports that fail."""
    try:
        b, s = await (done if done is not None else recompute(conn, group, until, zones))
        for cp, evse, _ in group:
            _FAILING.discard((cp, evse))
        return b, s, []
    except (asyncpg.InterfaceError, OSError, asyncpg.PostgresConnectionError):
        raise   # the database is away: the whole refresh is retried by the loop
    except Exception:   # a port's data (a bug, a value out of range) must not stop the others
        if len(group) == 1:
            cp, evse, since = group[0]
            if (cp, evse) not in _FAILING:
                logger.exception("roll-up of port %s/%d from %s failed; it is computed from raw rows and "
                                 "retried at the next refresh", cp, evse, since.isoformat())
                if len(_FAILING) < _FAILING_MAX:
                    _FAILING.add((cp, evse))
            return 0, 0, [group[0]]
    buckets = spans = 0
    failed: list[tuple[str, int, datetime]] = []
    for port in group:
        b, s, bad = await _recompute_isolated(conn, [port], until, zones)
        buckets += b
        spans += s
        failed.extend(bad)
    return buckets, spans, failed




async def rollup_loop(pool: asyncpg.Pool, *, interval_s: float, stop: asyncio.Event,
                      port_failures: Counter | None = None) -> None:
    """Refresh every ``interval_s`` until ``stop``; a failed refresh is retried next time.
    ``port_failures`` counts the ports whose recompute failed (each refresh that failed them)."""
    while not stop.is_set():
        try:
            result = await refresh(pool)
            if result.failed_ports and port_failures is not None:
                port_failures.inc(result.failed_ports)
            if result.ran and result.seconds > interval_s / 2:
                logger.warning("roll-up of %d ports took %.1f s (interval %.0f s)", result.ports, result.seconds,
                               interval_s)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            logger.warning("roll-up failed, will retry: %s", exc)
        except Exception:
            # A bug in one refresh must not end the loop for good (reports would then compute
            # ever longer tails from raw rows); it is logged loudly and retried.
            logger.exception("roll-up failed unexpectedly, will retry")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


async def _refresh_once(database_url: str, now: datetime | None) -> RefreshResult:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        return await refresh(pool, now=now)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m ingest.rollup --database-url URL [--now ISO]``: one refresh, its figures as JSON
    (the report benchmark uses it; ``csms`` does not import ``ingest``)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description="bring the per-port state roll-up up to date once")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--now", type=datetime.fromisoformat, default=None,
                        help="roll up to the quarter hour before this moment (ISO-8601 with offset)")
    args = parser.parse_args(argv)
    result = asyncio.run(_refresh_once(args.database_url, args.now))
    print(json.dumps({"ran": result.ran, "rolled_until": result.rolled_until.isoformat()
                      if result.rolled_until else None, "ports": result.ports, "buckets": result.buckets_written,
                      "spans": result.spans_written, "seconds": round(result.seconds, 3),
                      "failed_ports": result.failed_ports}))
    return 0 if result.ran else 1


if __name__ == "__main__":
    raise SystemExit(main())
