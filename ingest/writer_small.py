"""A small batch of samples and status changes as one statement: one round trip (issue 15).

Most batches of a steady fleet are small: the in-process bus commits whatever arrived while
the last commit ran (about fifteen MeterValues at fifty chargers), and each commit made six
round trips to PostgreSQL (BEGIN, COPY and its data, the roll-up marks, COMMIT, last_seen_at)
plus the pool's reset. Each round trip costs the client a send that wakes the server, about
100-200 us of CPU here. This writes the same rows in one statement, which PostgreSQL runs as one
transaction: status rows go as an array of the table's own row type (so the tuples' column
order is the table's; tests/test_writer_small.py checks it against the migrations), duplicates are
skipped by the natural keys (a second run with ``ON CONFLICT DO NOTHING``; the counts say how many), and the
roll-up marks and ``last_seen_at`` commit with the rows. PostgreSQL runs the data-modifying CTEs
that nothing references (marks, seen) after the referenced ones, to completion (PostgreSQL
docs, 7.8.4 "Data-Modifying Statements in WITH").

The samples go as the MeterEvents' own JSON (msgspec, in C), which PostgreSQL expands into
rows (``jsonb_to_recordset`` and ``jsonb_array_elements``, also C): building a 16-field tuple
per sample and asyncpg's per-field encoding of the row-type array cost the client ~8 us a
sample, the JSON ~1 (client CPU per whole batch of 15 ten-sample MeterValues 1,153 -> 407 us,
same run, issue 15 note). JSON has no NaN: msgspec writes a NaN value as ``null``, read back as NaN
(``value`` is NOT NULL, so null means nothing else); jsonb has no negative zero, so -0 is stored
as 0 (the COPY path does the same). The rows are ordered by the natural key in SQL, and a key
repeated inside the batch is skipped by ``ON CONFLICT DO NOTHING`` like a stored one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from schemas.events import MeterEvent, Sample


def _marks_upsert(source: str) -> str:
    # The roll-up (ingest/rollup.py) recomputes a port's state minutes from ``since`` on.
    return f"""INSERT INTO port_state_dirty AS d (charge_point_id, evse_id, since)
{source}
ON CONFLICT (charge_point_id, evse_id) DO UPDATE SET since = LEAST(d.since, EXCLUDED.since), version = d.version + 1"""


def _seen_update(source: str) -> str:
    return f"""UPDATE charge_points AS c SET last_seen_at = GREATEST(c.last_seen_at, v.seen)
FROM ({source}) AS v(id, seen) WHERE c.id = v.id"""


MARKS_UPSERT = _marks_upsert("SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[])")
SEEN_UPDATE = _seen_update("SELECT * FROM unnest($1::text[], $2::timestamptz[])")

# In the single statement the marks and the last-seen times go as JSON arrays of [id, evse, since]
# and [id, seen] (one text parameter each, encoded by msgspec in C): asyncpg encodes a text[] or
# timestamptz[] parameter element by element, with abstract-base-class checks on each (in-process
# bus, 1-sample MeterValues: 3.5 % of the gateway's CPU in ``ABCMeta.__instancecheck__``; client CPU
# of one statement with 15 chargers' arrays 106 us against 88 as JSON, 50 chargers 205 against 103).
_MARKS_JSON = """SELECT m->>0, (m->>1)::int, (m->>2)::timestamptz FROM jsonb_array_elements($3::text::jsonb) AS m"""
_SEEN_JSON = """SELECT v->>0, (v->>1)::timestamptz FROM jsonb_array_elements($4::text::jsonb) AS v"""

# A Sample is encoded as an array (``array_like``): its fields by position, from the struct itself.
_AT = {name: i for i, name in enumerate(Sample.__struct_fields__)}


def _field(name: str) -> str:
    return f"s.v->>{_AT[name]}"


# Columns in meter_samples' order (tests/test_writer_small.py checks the table against the writer's).
# Natural-key order, then batch order: of a key repeated inside the batch the first is kept, as
# the COPY path's ``_unique`` keeps it (a stable sort).
_SAMPLE_ROWS = f"""SELECT ({_field("time")})::timestamptz, e.charge_point_id, e.evse_id, e.connector_id,
       e.transaction_uid, {_field("measurand")}, {_field("phase")}, {_field("location")}, {_field("context")},
       COALESCE(({_field("value")})::float8, 'NaN'), {_field("unit")}, {_field("raw_value")}, {_field("raw_unit")},
       ({_field("flags")})::int, e.received_at, {_field("raw_time")}
FROM ROWS FROM (jsonb_to_recordset($1::text::jsonb) AS (charge_point_id text, received_at timestamptz, evse_id int,
                                                        connector_id int, transaction_uid text, samples jsonb))
     WITH ORDINALITY AS e(charge_point_id, received_at, evse_id, connector_id, transaction_uid, samples, n)
CROSS JOIN LATERAL jsonb_array_elements(e.samples) WITH ORDINALITY AS s(v, m)
ORDER BY 2, 3, 4, 5, 6, 7, 8, 9, 1, e.n, s.m"""  # ingest/writer.py _NATURAL_ORDER, then batch order


def _single_statement(on_conflict: str) -> str:
    return f"""
WITH samples AS (INSERT INTO meter_samples {_SAMPLE_ROWS}
                 {on_conflict} RETURNING 1),
statuses AS (INSERT INTO connector_status SELECT * FROM unnest($2::connector_status[])
             {on_conflict} RETURNING 1),
marks AS ({_marks_upsert(_MARKS_JSON)}),
seen AS ({_seen_update(_SEEN_JSON)})
SELECT (SELECT count(*) FROM samples), (SELECT count(*) FROM statuses)
"""


# First without ON CONFLICT, as the COPY path first copies straight into the tables: a row none of
# which is stored (the normal case) then costs PostgreSQL no speculative insertion. That was a
# quarter of the statement's server CPU (100 rows: 25.3 -> 19.3 us a row, 300 rows: 23.3 -> 16.8,
# 60 alternating batches each, issue 15 note). A stored row or a key twice in the batch makes the
# statement fail as a whole (one statement is one transaction: nothing of it stays), and it runs
# again de-duplicated.
_SINGLE_STATEMENT_NEW = _single_statement("")
_SINGLE_STATEMENT_DEDUP = _single_statement("ON CONFLICT DO NOTHING")

# Up to this many rows a batch goes as the single statement; above it, by binary COPY. The
# statement costs the client far less than COPY at any size (the samples as JSON), PostgreSQL
# more (jsonb, the sort). Client + server CPU a row and wall time a batch, both paths alternating,
# 60 batches each (issue 15 note): 100 rows 40.6 us / 4.2 ms against COPY's 50.9 / 4.9, 300 rows
# 33.1 / 10.1 against 35.8 / 10.3, 500 rows 30.0 / 14.8 against 30.7 / 14.2. Beyond 300 the
# statement saves the client what it costs the server (2.0 against 7.0 us a row on the client,
# 15.3 against 11.3 on the server at 500 rows, a later run), so where the writers scale out and
# the primary is what they share (``csms ingest`` workers behind MQTT) the limit is 300. The
# one-process deployment (the in-process bus, ``inprocess_bus_single_statement_max_rows``) takes
# the statement for every batch instead: there the one Python process is the part that does not
# scale, PostgreSQL runs on cores of its own, the wall time a batch is the same, and the sum of
# the two is a little lower. (With ON CONFLICT in the first run, 300 rows cost 20 % more than COPY.)
SINGLE_STATEMENT_MAX_ROWS = 300


_ENCODE = msgspec.json.Encoder().encode


async def write_single_statement(conn: asyncpg.Connection | PoolConnectionProxy, meter: Sequence[MeterEvent],
                                 status: list[tuple[Any, ...]], mark_ids: list[str], mark_evses: list[int],
                                 mark_since: list[datetime], seen_ids: list[str],
                                 seen_at: list[datetime]) -> tuple[int, int]:
    """Insert the samples of ``meter`` and the status rows (in natural-key order, each key once);
    return (samples, statuses) inserted."""
    args = (_ENCODE(meter).decode(), status, _ENCODE(list(zip(mark_ids, mark_evses, mark_since, strict=True))).decode(),
            _ENCODE(list(zip(seen_ids, seen_at, strict=True))).decode())
    try:
        row = await conn.fetchrow(_SINGLE_STATEMENT_NEW, *args)
    except asyncpg.UniqueViolationError:
        row = await conn.fetchrow(_SINGLE_STATEMENT_DEDUP, *args)
    assert row is not None
    return int(row[0]), int(row[1])
