"""The sessions of a slice of the bulk session exports, with their per-session figures.

The sessions CSV and EV-ChART module 2 give each session its peak power and first/last state of
charge (``schemas.port_state.SESSION_FIGURES_SQL``: the session's samples inside [start, stop];
while a session is open, from its start on). The roll-up keeps those figures per finished session
(``session_summary``, migration 0008, ``ingest/rollup.py``), so an export is a read of the sessions
joined to that table. A summary row is used only when it is *settled*: it describes the session as
stored now (same start and stop), the session lasted at most ``LOOKBACK`` (longer ones are not
summarised), and it stopped before its charge point's roll-up cut-off — the watermark, and any
dirty mark of the charge point (the writer marks a port dirty from the time of every status,
transaction event and metered sample it stores, so a sample that arrives after the roll-up read the
session is behind such a mark). For every other session (still open, stopped after the last
roll-up, touched since, no row) the figures are computed from its samples in the same statement,
with the same aggregates: an export never waits for the roll-up and never differs from it.

SQL shape, for ``csms.store.csv_stream``: ``$1``/``$2`` the slice of ``started_at``, then the
export's filter arguments (the same numbers in the bounds and the rows statement), then the rows
statement's other arguments, and last the time span of the unsettled sessions' samples (two
constants, so that only those chunks are read; an empty span when every session is settled).
"""

from __future__ import annotations

from schemas.port_state import LOOKBACK, SESSION_FIGURES_SAMPLES_SQL, SESSION_FIGURES_SQL

_LOOKBACK_SQL = f"interval '{int(LOOKBACK.total_seconds())} seconds'"

# A session whose summary row can be used (NULL → no: nothing rolled up yet, or no row).
SETTLED_SQL = f"""COALESCE(s.stopped_at = t.stopped_at
    AND t.stopped_at <= t.started_at + {_LOOKBACK_SQL}
    AND t.stopped_at < (SELECT w.rolled_until FROM port_state_watermark w)
    AND (d.since IS NULL OR t.stopped_at < d.since), false)"""


def from_sql(joins: str = "", where: str = "") -> str:
    """The slice's sessions ``t`` with their charge point ``c``, summary row ``s`` and the charge
    point's earliest dirty mark ``d``; ``joins``/``where`` the export's own (e.g. locations)."""
    return f"""FROM transactions t JOIN charge_points c ON c.id = t.charge_point_id
    {joins}
    LEFT JOIN session_summary s ON s.started_at = t.started_at AND s.charge_point_id = t.charge_point_id
        AND s.transaction_uid = t.transaction_uid AND s.started_at >= $1 AND s.started_at < $2
    LEFT JOIN (SELECT x.charge_point_id, min(x.since) AS since FROM port_state_dirty x GROUP BY 1) d
        ON d.charge_point_id = t.charge_point_id
    WHERE t.started_at >= $1 AND t.started_at < $2 {where}"""


def bounds_sql(joins: str = "", where: str = "") -> str:
    """The slice's session count ``n`` and the time span of its unsettled sessions' samples
    (``raw_lo``/``raw_hi``, NULL when every session is settled; an open session's samples up to now)."""
    return f"""SELECT count(*) AS n, min(q.started_at) FILTER (WHERE NOT q.settled) AS raw_lo,
       max(COALESCE(GREATEST(q.started_at, q.stopped_at), now())) FILTER (WHERE NOT q.settled) AS raw_hi
FROM (SELECT t.started_at, t.stopped_at, {SETTLED_SQL} AS settled
      {from_sql(joins, where)}) q"""


def rows_sql(*, fields: str, columns: str, n_args: int, joins: str = "", where: str = "",
             outer_joins: str = "") -> tuple[str, str]:
    """The slice's rows in start order, as two statements: for a slice whose sessions are all
    settled (a plain read of the summary; arguments ``$1``, ``$2``, then the ``n_args`` others), and
    for any slice (the unsettled sessions' figures from their samples, whose span follows those
    arguments). ``fields``: what ``t`` carries (``t.``/``c.``/… columns, after the session key);
    ``columns``: the output, over ``f`` (those fields and ``peak_power_w``, ``start_soc``,
    ``end_soc``: the figures whatever their source) and ``outer_joins``' tables."""
    lo, hi = f"${n_args + 3}", f"${n_args + 4}"
    settled = f"""
SELECT {columns}
FROM (SELECT t.charge_point_id, t.transaction_uid, t.started_at, t.stopped_at, {fields},
             s.peak_power_w, s.start_soc, s.end_soc
      {from_sql(joins, where)}) f {outer_joins}
ORDER BY f.started_at, f.charge_point_id, f.transaction_uid
"""
    return settled, f"""
WITH t AS MATERIALIZED (
    SELECT t.charge_point_id, t.transaction_uid, t.started_at, t.stopped_at, {fields},
           {SETTLED_SQL} AS settled, s.peak_power_w AS s_peak, s.start_soc AS s_soc0, s.end_soc AS s_soc1
    {from_sql(joins, where)}),
x AS (
    -- the unsettled sessions' figures, from their samples (only the chunks of [{lo}, {hi}] are read)
    SELECT t.charge_point_id, t.transaction_uid, {SESSION_FIGURES_SQL}
    FROM t JOIN meter_samples m ON m.charge_point_id = t.charge_point_id AND m.transaction_uid = t.transaction_uid
        AND m.time >= t.started_at AND (t.stopped_at IS NULL OR m.time <= t.stopped_at)
    WHERE NOT t.settled AND m.time >= {lo}::timestamptz AND m.time <= {hi}::timestamptz
      AND {SESSION_FIGURES_SAMPLES_SQL}
    GROUP BY 1, 2),
f AS (
    SELECT t.*, CASE WHEN t.settled THEN t.s_peak ELSE x.peak_power_w END AS peak_power_w,
           CASE WHEN t.settled THEN t.s_soc0 ELSE x.start_soc END AS start_soc,
           CASE WHEN t.settled THEN t.s_soc1 ELSE x.end_soc END AS end_soc
    FROM t LEFT JOIN x ON x.charge_point_id = t.charge_point_id AND x.transaction_uid = t.transaction_uid)
SELECT {columns}
FROM f {outer_joins}
ORDER BY f.started_at, f.charge_point_id, f.transaction_uid
"""
