-- 0011: what the OCPP 2.1-only charger messages carry (issue 14 item 1; csms/ocpp/handlers_v21*.py, events in
-- schemas/events.py, written by ingest/writer_ocpp21.py). Every table has a natural unique key, so a retried
-- message is stored once (INSERT ... ON CONFLICT DO NOTHING / DO UPDATE), like the tables of 0001.

-- Payment terminal settlements (2.1 NotifySettlement; Part 2 C18, C21, C22, C24). transaction_uid is the
-- 2.x transactionId ('' when the settlement names none, e.g. a cancellation before a transaction, C19).
CREATE TABLE settlements (
    charge_point_id text NOT NULL,
    transaction_uid text NOT NULL DEFAULT '',
    psp_ref         text NOT NULL,
    status          text NOT NULL,          -- Settled, Canceled, Rejected, Failed
    amount          double precision NOT NULL,
    settled_at      timestamptz NOT NULL,   -- settlementTime
    status_info     text NOT NULL DEFAULT '',
    receipt_id      text NOT NULL DEFAULT '',
    receipt_url     text NOT NULL DEFAULT '',
    vat_number      text NOT NULL DEFAULT '',
    vat_company     jsonb,
    digest          text NOT NULL,
    received_at     timestamptz NOT NULL
);
CREATE UNIQUE INDEX settlements_natural_key ON settlements (charge_point_id, psp_ref, digest);
CREATE INDEX settlements_by_time ON settlements (charge_point_id, settled_at DESC);
CREATE INDEX settlements_by_transaction ON settlements (charge_point_id, transaction_uid)
    WHERE transaction_uid <> '';

-- DER events (2.1 Part 2 R04, R05): alarms (NotifyDERAlarm), controls started/stopped (NotifyDERStartStop),
-- reports of the controls set (ReportDERControl, one row per message part; the controls as sent in detail).
CREATE TABLE der_events (
    time             timestamptz NOT NULL,  -- the message's timestamp; a report has none: its receive time
    charge_point_id  text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('alarm', 'start_stop', 'report')),
    control_type     text NOT NULL DEFAULT '',
    grid_event_fault text NOT NULL DEFAULT '',
    alarm_ended      boolean,
    extra_info       text NOT NULL DEFAULT '',
    control_id       text NOT NULL DEFAULT '',
    started          boolean,
    superseded_ids   text[] NOT NULL DEFAULT '{}',
    request_id       integer,
    tbc              boolean NOT NULL DEFAULT false,
    detail           jsonb,
    digest           text NOT NULL,
    received_at      timestamptz NOT NULL
);
CREATE UNIQUE INDEX der_events_natural_key ON der_events (charge_point_id, kind, digest);
CREATE INDEX der_events_by_time ON der_events (charge_point_id, time DESC);

-- Periodic event streams the chargers opened (2.1 OpenPeriodicEventStream, N11) and closed
-- (ClosePeriodicEventStream, N13). opened_at NULL: a Close arrived for a stream whose Open was never seen.
CREATE TABLE periodic_streams (
    charge_point_id        text NOT NULL,
    stream_id              integer NOT NULL,
    variable_monitoring_id integer,
    interval_s             integer,
    max_values             integer,
    opened_at              timestamptz,
    closed_at              timestamptz,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (charge_point_id, stream_id)
);

-- The data of the streams (2.1 NotifyPeriodicEventStream SEND, N15), stored like meter samples: one row per
-- value, at basetime + t; seq is the value's position in its message, so (basetime, seq) names it.
CREATE TABLE periodic_stream_samples (
    time            timestamptz NOT NULL,
    charge_point_id text NOT NULL,
    stream_id       integer NOT NULL,
    basetime        timestamptz NOT NULL,
    seq             integer NOT NULL,
    value           double precision,      -- NULL when the value is not a number
    raw_value       text NOT NULL,
    pending         integer NOT NULL DEFAULT 0,
    received_at     timestamptz NOT NULL
);
SELECT create_hypertable('periodic_stream_samples', by_range('time', INTERVAL '1 day'));
CREATE UNIQUE INDEX periodic_stream_samples_natural_key ON periodic_stream_samples
    (charge_point_id, stream_id, basetime, seq, time);

-- Battery swaps (2.1 BatterySwap; Part 2 S03): one row per battery of each message.
CREATE TABLE battery_swaps (
    charge_point_id text NOT NULL,
    request_id      integer NOT NULL,
    event_type      text NOT NULL,          -- BatteryIn, BatteryOut, BatteryOutTimeout
    id_token        text NOT NULL,
    id_token_type   text NOT NULL,
    evse_id         integer NOT NULL,
    serial_number   text NOT NULL,
    soc             double precision NOT NULL,
    soh             double precision NOT NULL,
    production_date timestamptz,
    vendor_info     text NOT NULL DEFAULT '',
    digest          text NOT NULL,
    received_at     timestamptz NOT NULL
);
CREATE UNIQUE INDEX battery_swaps_natural_key ON battery_swaps (charge_point_id, digest, evse_id, serial_number);
CREATE INDEX battery_swaps_by_time ON battery_swaps (charge_point_id, received_at DESC);

-- Priority charging activated / ended per transaction (2.1 NotifyPriorityCharging). The message has no
-- timestamp: a retry is recognised by its message id (a retry may reuse it, 2.1 Part 4 §4.1.4).
CREATE TABLE priority_charging (
    charge_point_id text NOT NULL,
    transaction_uid text NOT NULL,
    activated       boolean NOT NULL,
    message_id      text NOT NULL,
    received_at     timestamptz NOT NULL
);
CREATE UNIQUE INDEX priority_charging_natural_key ON priority_charging
    (charge_point_id, transaction_uid, activated, message_id);
