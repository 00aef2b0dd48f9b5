-- 0008: what the bulk session exports read per session, kept by the roll-up (issue 11 item 12).
--
-- The sessions CSV and EV-ChART module 2 give each session its peak power and (the EV Charging Use
-- Specification layout) its first and last state of charge. Computing them means reading every meter
-- sample of the quarter; the roll-up (ingest/rollup.py) computes them once per finished session, with
-- the same dirty marks as the port state, so that an export is a plain read of this table joined to
-- the sessions. A row counts for an export only while it describes the session as it is stored now
-- (same start and stop) and the session stopped before its charge point's roll-up cut-off (the
-- watermark, or an earlier dirty mark): otherwise the export computes the figures from the samples,
-- with the same definitions (csms/reporting/session_figures.py). Nothing here is ever the only copy:
-- the table can be emptied at any time (the next roll-up refills it from the watermark on, and the
-- exports meanwhile read the samples).
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
    PRIMARY KEY (charge_point_id, transaction_uid)
);
-- Exports read a slice of sessions by start.
CREATE INDEX session_summary_started_idx ON session_summary (started_at);
