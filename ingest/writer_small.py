"""A small batch of samples and status changes as one statement: one round trip (issue 15).

Most batches of a steady fleet are small: the in-process bus commits whatever arrived while
the last commit ran (about fifteen MeterValues at fifty chargers), and each commit made six
round trips to PostgreSQL (BEGIN, COPY and its data, the roll-up marks, COMMIT, last_seen_at)
plus the pool's reset. Each round trip costs the client a send that wakes the server, about
100-200 us of CPU here. This writes the same rows in one statement, which PostgreSQL runs as one
transaction: the rows go as arrays of the tables' own row types (so the tuples' column order
is the tables'; tests/test_writer_small.py checks it against the migrations), duplicates are
skipped by the natural keys (``ON CONFLICT DO NOTHING``; the counts say how many), and the
roll-up marks and ``last_seen_at`` commit with the rows. PostgreSQL runs the data-modifying CTEs
that nothing references (marks, seen) after the referenced ones, to completion (PostgreSQL
docs, 7.8.4 "Data-Modifying Statements in WITH").
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy


def _marks_upsert(cp: int, evse: int, since: int) -> str:
    # The roll-up (ingest/rollup.py) recomputes a port's state minutes from ``since`` on.
    return f"""INSERT INTO port_state_dirty AS d (charge_point_id, evse_id, since)
SELECT * FROM unnest(${cp}::text[], ${evse}::int[], ${since}::timestamptz[])
ON CONFLICT (charge_point_id, evse_id) DO UPDATE SET since = LEAST(d.since, EXCLUDED.since), version = d.version + 1"""


def _seen_update(ids: int, seen: int) -> str:
    return f"""UPDATE charge_points AS c SET last_seen_at = GREATEST(c.last_seen_at, v.seen)
FROM unnest(${ids}::text[], ${seen}::timestamptz[]) AS v(id, seen) WHERE c.id = v.id"""


MARKS_UPSERT = _marks_upsert(1, 2, 3)
SEEN_UPDATE = _seen_update(1, 2)

_SINGLE_STATEMENT = f"""
WITH samples AS (INSERT INTO meter_samples SELECT * FROM unnest($1::meter_samples[])
                 ON CONFLICT DO NOTHING RETURNING 1),
statuses AS (INSERT INTO connector_status SELECT * FROM unnest($2::connector_status[])
             ON CONFLICT DO NOTHING RETURNING 1),
marks AS ({_marks_upsert(3, 4, 5)}),
seen AS ({_seen_update(6, 7)})
SELECT (SELECT count(*) FROM samples), (SELECT count(*) FROM statuses)
"""

# Up to this many rows a batch goes as the single statement; above it, by binary COPY, whose
# encoding per row is cheaper and whose round trips cost more. Client CPU per batch, COPY path
# against this one, same run (issue 15 note): 15 rows 867 -> 337 us, 150 rows 1,871 -> 1,235 us,
# 250 rows 1,570 -> 1,346 us, 400 rows 2,243 -> 2,500 us, 1,000 rows 5,653 -> 6,497 us.
SINGLE_STATEMENT_MAX_ROWS = 300


async def write_single_statement(conn: asyncpg.Connection | PoolConnectionProxy, meter: list[tuple[Any, ...]],
                                 status: list[tuple[Any, ...]], mark_ids: list[str], mark_evses: list[int],
                                 mark_since: list[datetime], seen_ids: list[str],
                                 seen_at: list[datetime]) -> tuple[int, int]:
    """Insert the rows (in natural-key order, each key once); return (samples, statuses) inserted."""
    row = await conn.fetchrow(_SINGLE_STATEMENT, meter, status, mark_ids, mark_evses, mark_since, seen_ids, seen_at)
    assert row is not None
    return int(row[0]), int(row[1])
