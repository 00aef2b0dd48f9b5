-- 0003: pre-aggregated port state for utilization reports (reporting.md §7.1 "port_state_15m").
-- The Apache-2 TimescaleDB edition has no continuous aggregates, so the ingest side keeps
-- these up to date (ingest/rollup.py): the writer marks a port dirty in the same transaction
-- as the rows it stores, and the roll-up recomputes from there. 15 minutes because every
-- IANA offset in use (+05:30, +05:45 …) is a multiple of it: local hours, days, weeks and
-- months are exact sums of 15-minute buckets.
CREATE TABLE port_state_15m (
    charge_point_id text NOT NULL,
    evse_id         integer NOT NULL,
    bucket          timestamptz NOT NULL,
    occupied_s      real NOT NULL CHECK (occupied_s BETWEEN 0 AND 900),
    charging_s      real NOT NULL CHECK (charging_s BETWEEN 0 AND 900),
    PRIMARY KEY (charge_point_id, evse_id, bucket)
);
-- Sparse: a bucket with neither occupancy nor charging has no row.
SELECT create_hypertable('port_state_15m', by_range('bucket', INTERVAL '30 days'));

-- The same per station-local day (the station's IANA zone when the day was rolled up):
-- day, week and month reports over many ports read a row per port and day.
CREATE TABLE port_state_day (
    charge_point_id text NOT NULL,
    evse_id         integer NOT NULL,
    day             date NOT NULL,
    time_zone       text NOT NULL,
    occupied_s      double precision NOT NULL DEFAULT 0,
    charging_s      double precision NOT NULL DEFAULT 0,
    -- sessions that started that day: how many, how many succeeded, their energy
    sessions        integer NOT NULL DEFAULT 0,
    successes       integer NOT NULL DEFAULT 0,
    energy_wh       double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (charge_point_id, evse_id, day)
);

-- One row per finished occupancy (plug-in → plug-out): post-charge idle and session length.
CREATE TABLE port_occupancy_spans (
    charge_point_id text NOT NULL,
    evse_id         integer NOT NULL,
    ended_at        timestamptz NOT NULL,
    started_at      timestamptz NOT NULL,
    charging_s      real NOT NULL,
    -- plug-out minus the end of the last charging inside the span; NULL when nothing charged
    post_charge_idle_s real,
    PRIMARY KEY (charge_point_id, evse_id, ended_at)
);
CREATE INDEX port_occupancy_spans_ended_idx ON port_occupancy_spans (ended_at);

-- Ports with rows stored behind the roll-up's watermark (late or replayed data). evse_id 0
-- means every port of the charge point (2.0.1 TransactionEvents often carry no EVSE).
CREATE TABLE port_state_dirty (
    charge_point_id text NOT NULL,
    evse_id         integer NOT NULL,
    since           timestamptz NOT NULL,
    -- bumped by every mark: the roll-up clears only the marks it has seen
    version         bigint NOT NULL DEFAULT 1,
    PRIMARY KEY (charge_point_id, evse_id)
);

-- Everything before rolled_until is in port_state_15m, except what port_state_dirty names.
CREATE TABLE port_state_watermark (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    rolled_until timestamptz NOT NULL
);

-- A year of status history in 13 chunks rather than 52: per-port look-ups (the latest status
-- before a moment, the row after an outage) visit every chunk's index once per look-up.
SELECT set_chunk_time_interval('connector_status', INTERVAL '28 days');

-- Uptime reads only the outage rows of a port (and the row after each): sparse by design.
CREATE INDEX connector_status_down_idx ON connector_status (charge_point_id, evse_id, time)
    WHERE status IN ('Faulted', 'Unavailable');
CREATE INDEX transaction_events_cp_time_idx ON transaction_events (charge_point_id, time);
-- The roll-up reads a port's recent transactions (2.0.1 chargingState spans).
CREATE INDEX transactions_port_started_idx ON transactions (charge_point_id, evse_id, started_at);
