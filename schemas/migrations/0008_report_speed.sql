-- 0008: what the bulk session exports read per session, kept by the roll-up (issue 11 item 12).
--
-- The sessions CSV and EV-ChART module 2 give each session its peak power and (the EV Charging Use
-- Specification layout) its first and last state of charge. Computing them means reading every meter
-- sample of the quarter; the roll-up (ingest/rollup.py) computes them once per finished session, with
-- the same dirty marks as the port state, so that an export is a plain read of this table joined to
-- the sessions. A row counts for an export only while it describes the session as it is stored now
-- (same start and stop) and the session stopped before its charge point's roll-up cut-off (the
-- watermark, or an earlier dirty mark): otherwise the export computes the figures from the samples,
-- with the same definitions (schemas/port_state.py SESSION_FIGURES_SQL). Nothing here is the only copy
-- of anything: without its rows the exports compute every figure from the samples (slower, the same).
CREATE TABLE session_summary (
    charge_point_id text NOT NULL,
    transaction_uid text NOT NULL,
    started_at      timestamptz NOT NULL,
    stopped_at      timestamptz NOT NULL,
    -- highest phase-less Power.Active.Import sample of the session in [started_at, stopped_at], W
    peak_power_w    double precision,
    -- the first and the last trusted phase-less SoC sample in [started_at, stopped_at], %
    start_soc       double precision,
    end_soc         double precision,
    -- Exports read a slice of sessions by start: one index serves them and the roll-up's upsert (and,
    -- with stopped_at, their check of which rows can be used, from the index alone). A session whose
    -- start changed after it was summarised leaves a row that matches nothing.
    PRIMARY KEY (started_at, charge_point_id, transaction_uid) INCLUDE (stopped_at)
);
-- The same check reads the slice's sessions from this index alone, in the summary's order (a merge
-- join on the whole key).
CREATE INDEX transactions_started_key_idx ON transactions (started_at, charge_point_id, transaction_uid)
    INCLUDE (stopped_at);

-- Uptime reads, per port and window, only the status rows outages depend on: every Faulted/
-- Unavailable row and the row that follows it (csms/reporting/queries.py). Looking each following
-- row up costs more than everything else a fleet report does, so the roll-up keeps it per
-- Faulted/Unavailable row of every registered port and of its charge point (evse_id 0). A row here
-- counts only while its successor lies before the charge point's roll-up cut-off (the watermark, or
-- an earlier dirty mark): a status stored between the two marks the port dirty from its own time,
-- and the next roll-up recomputes the pair. Otherwise the report looks the row up as before.
CREATE TABLE status_successor (
    charge_point_id  text NOT NULL,
    evse_id          integer NOT NULL,
    time             timestamptz NOT NULL,   -- the Faulted/Unavailable row (time, received_at)
    received_at      timestamptz NOT NULL,
    next_time        timestamptz NOT NULL,   -- the port's next status row after it
    next_received_at timestamptz NOT NULL,
    next_status      text NOT NULL,
    next_error_code  text NOT NULL,
    PRIMARY KEY (charge_point_id, evse_id, time, received_at)
);

-- Without these rows every export and report computes from raw rows: the next roll-up rebuilds
-- everything from the first data (as after 0005).
DELETE FROM port_state_watermark;
