-- 0001: first schema. Registry tables, sessions, and the time-series hypertables.
-- Every table that receives data from chargers has a natural unique key so that
-- every write can be idempotent (INSERT ... ON CONFLICT DO NOTHING / DO UPDATE).
-- All times are timestamptz and stored in UTC.

CREATE EXTENSION IF NOT EXISTS timescaledb;

-- Locations (OCPI Location / a station site).
CREATE TABLE locations (
    id              text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 36),
    name            text NOT NULL,
    address         text NOT NULL DEFAULT '',
    city            text NOT NULL DEFAULT '',
    postal_code     text,
    state           text,
    country         text NOT NULL DEFAULT 'USA' CHECK (country ~ '^[A-Z]{3}$'),  -- ISO 3166-1 alpha-3
    latitude        double precision CHECK (latitude BETWEEN -90 AND 90),
    longitude       double precision CHECK (longitude BETWEEN -180 AND 180),
    time_zone       text NOT NULL DEFAULT 'UTC',                                  -- IANA name
    is_public       boolean NOT NULL DEFAULT false,
    opening_hours   jsonb,                                                        -- OCPI Hours; NULL = 24/7
    operational_since timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_updated    timestamptz NOT NULL DEFAULT now()
);

-- Charge points (OCPP "charge point" / "charging station").
CREATE TABLE charge_points (
    id                  text PRIMARY KEY
                        CHECK (length(id) BETWEEN 1 AND 48 AND position(':' IN id) = 0),
    location_id         text REFERENCES locations (id) ON DELETE SET NULL,
    vendor              text,
    model               text,
    serial_number       text,
    firmware_version    text,
    ocpp_version        text,
    credential_hash     text,                  -- argon2id hash of the Basic-auth password, never the password
    security_profile    smallint NOT NULL DEFAULT 1 CHECK (security_profile BETWEEN 0 AND 3),
    -- The operator's decision for BootNotification: accept, keep pending, or reject.
    admission           text NOT NULL DEFAULT 'accept' CHECK (admission IN ('accept', 'pending', 'reject')),
    -- What the CSMS last answered to BootNotification; kept across reconnects and restarts
    -- because a reconnecting charger does not boot again (1.6J §5.4; 2.0.1 Part 4 §5.3, R33).
    registration_status text NOT NULL DEFAULT 'Pending'
                        CHECK (registration_status IN ('Accepted', 'Pending', 'Rejected')),
    -- Models known to break the schema in harmless ways: accept and flag instead of refusing.
    tolerant            boolean NOT NULL DEFAULT false,
    last_boot_at        timestamptz,
    last_seen_at        timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX charge_points_location_idx ON charge_points (location_id);

-- EVSEs: one EVSE is one "port" (NEVI, OCPI EVSE). OCPP 1.6 connector N is EVSE N.
CREATE TABLE evses (
    charge_point_id text NOT NULL REFERENCES charge_points (id) ON DELETE CASCADE,
    evse_id         integer NOT NULL CHECK (evse_id > 0),
    uid             text NOT NULL UNIQUE,        -- OCPI EVSE.uid, never reused
    emi3_id         text,                        -- eMI3 EVSE id, e.g. DE*ABC*E123
    federally_funded boolean NOT NULL DEFAULT false,
    operational_since timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_updated    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (charge_point_id, evse_id)
);

CREATE TABLE connectors (
    charge_point_id text NOT NULL,
    evse_id         integer NOT NULL,
    connector_id    integer NOT NULL CHECK (connector_id > 0),
    standard        text NOT NULL DEFAULT 'IEC_62196_T2',   -- OCPI ConnectorType
    format          text NOT NULL DEFAULT 'SOCKET' CHECK (format IN ('SOCKET', 'CABLE')),
    power_type      text NOT NULL DEFAULT 'AC_3_PHASE'
                    CHECK (power_type IN ('AC_1_PHASE', 'AC_2_PHASE', 'AC_2_PHASE_SPLIT', 'AC_3_PHASE', 'DC')),
    max_voltage_v   integer NOT NULL DEFAULT 400,
    max_amperage_a  integer NOT NULL DEFAULT 32,
    rated_power_w   double precision NOT NULL DEFAULT 22000 CHECK (rated_power_w > 0),
    last_updated    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (charge_point_id, evse_id, connector_id),
    FOREIGN KEY (charge_point_id, evse_id) REFERENCES evses (charge_point_id, evse_id) ON DELETE CASCADE
);

-- Identification tokens (1.6 idTag <= 20 chars, 2.0.1 idToken <= 36 chars).
CREATE TABLE id_tokens (
    id_token    text PRIMARY KEY CHECK (length(id_token) BETWEEN 1 AND 36),
    token_type  text NOT NULL DEFAULT 'ISO14443',
    status      text NOT NULL DEFAULT 'Accepted'
                CHECK (status IN ('Accepted', 'Blocked', 'Expired', 'Invalid')),
    expiry_date timestamptz,
    group_id    text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- 1.6 transaction ids are assigned by the CSMS and must fit a signed 32-bit integer.
CREATE SEQUENCE ocpp16_transaction_id_seq AS integer START 1 MAXVALUE 2147483647 CYCLE;

-- Transactions / charging sessions, one row each, keyed by (charge point, transaction uid).
-- transaction_uid: the 2.0.1 transactionId, or the decimal text of the 1.6 id.
CREATE TABLE transactions (
    charge_point_id     text NOT NULL,
    transaction_uid     text NOT NULL CHECK (length(transaction_uid) BETWEEN 1 AND 36),
    ocpp16_transaction_id integer,
    evse_id             integer,
    connector_id        integer,
    id_token            text,
    stop_id_token       text,
    started_at          timestamptz,
    stopped_at          timestamptz,
    meter_start_wh      numeric,
    meter_stop_wh       numeric,
    energy_wh           numeric GENERATED ALWAYS AS (meter_stop_wh - meter_start_wh) STORED,
    peak_power_w        double precision,
    stop_reason         text,
    charging_state      text,
    remote_start_id     integer,
    last_seq_no         integer,
    offline             boolean NOT NULL DEFAULT false,
    quality_flags       integer NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (charge_point_id, transaction_uid)
);
CREATE UNIQUE INDEX transactions_ocpp16_id_idx ON transactions (ocpp16_transaction_id)
    WHERE ocpp16_transaction_id IS NOT NULL;

-- 1.6 transaction ids handed out by the central system, keyed by the StartTransaction's
-- natural key (R41: a retried StartTransaction gets the same transactionId back).
CREATE TABLE ocpp16_transaction_ids (
    charge_point_id text NOT NULL,
    start_key       text NOT NULL,
    transaction_id  integer NOT NULL DEFAULT nextval('ocpp16_transaction_id_seq') UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (charge_point_id, start_key)
);
CREATE INDEX transactions_started_idx ON transactions (started_at);

-- Every 2.0.1 TransactionEvent once, keyed by (charge point, transaction, seqNo) (R45).
CREATE TABLE transaction_events (
    charge_point_id text NOT NULL,
    transaction_uid text NOT NULL,
    seq_no          integer NOT NULL,
    event_type      text NOT NULL CHECK (event_type IN ('Started', 'Updated', 'Ended')),
    time            timestamptz NOT NULL,
    trigger_reason  text NOT NULL,
    offline         boolean NOT NULL DEFAULT false,
    received_at     timestamptz NOT NULL,
    PRIMARY KEY (charge_point_id, transaction_uid, seq_no)
);

-- Meter samples, normalised to SI (Wh, W, A, V, %, °C); raw value and unit kept.
-- transaction_uid / phase / location / context use '' for "absent" so that the
-- natural key below is a real unique key (NULLs never conflict).
CREATE TABLE meter_samples (
    time            timestamptz NOT NULL,
    charge_point_id text NOT NULL,
    evse_id         integer NOT NULL DEFAULT 0,
    connector_id    integer NOT NULL DEFAULT 0,
    transaction_uid text NOT NULL DEFAULT '',
    measurand       text NOT NULL,
    phase           text NOT NULL DEFAULT '',
    location        text NOT NULL DEFAULT '',
    context         text NOT NULL DEFAULT '',
    value           double precision NOT NULL,
    unit            text NOT NULL,
    raw_value       text NOT NULL,
    raw_unit        text NOT NULL DEFAULT '',
    quality_flags   integer NOT NULL DEFAULT 0,
    received_at     timestamptz NOT NULL
);
SELECT create_hypertable('meter_samples', by_range('time', INTERVAL '1 day'));
CREATE UNIQUE INDEX meter_samples_natural_key ON meter_samples
    (charge_point_id, evse_id, connector_id, transaction_uid, measurand, phase, location, context, time);

-- Connector status changes (1.6 / 2.0.1 StatusNotification, 2.0.1 NotifyEvent AvailabilityState).
-- connector_id 0 / evse_id 0 means the whole charge point.
CREATE TABLE connector_status (
    time              timestamptz NOT NULL,
    charge_point_id   text NOT NULL,
    evse_id           integer NOT NULL DEFAULT 0,
    connector_id      integer NOT NULL DEFAULT 0,
    status            text NOT NULL,
    error_code        text NOT NULL DEFAULT '',
    vendor_id         text NOT NULL DEFAULT '',
    vendor_error_code text NOT NULL DEFAULT '',
    info              text NOT NULL DEFAULT '',
    received_at       timestamptz NOT NULL
);
SELECT create_hypertable('connector_status', by_range('time', INTERVAL '7 days'));
CREATE UNIQUE INDEX connector_status_natural_key ON connector_status
    (charge_point_id, evse_id, connector_id, status, error_code, time);

-- Connectivity: websocket connected / disconnected, BootNotification.
CREATE TABLE connection_events (
    time            timestamptz NOT NULL,
    charge_point_id text NOT NULL,
    event           text NOT NULL CHECK (event IN ('connected', 'disconnected', 'boot')),
    reason          text NOT NULL DEFAULT '',
    node_id         text NOT NULL DEFAULT '',
    ocpp_version    text NOT NULL DEFAULT '',
    detail          jsonb
);
SELECT create_hypertable('connection_events', by_range('time', INTERVAL '7 days'));
CREATE UNIQUE INDEX connection_events_natural_key ON connection_events
    (charge_point_id, event, node_id, time);

-- Other charger messages kept as JSON: firmware/diagnostics/log status, security events,
-- DataTransfer, NotifyReport, NotifyEvent ... One row per distinct message.
CREATE TABLE charger_messages (
    time            timestamptz NOT NULL,
    charge_point_id text NOT NULL,
    action          text NOT NULL,
    payload         jsonb NOT NULL,
    digest          text NOT NULL,
    received_at     timestamptz NOT NULL
);
SELECT create_hypertable('charger_messages', by_range('time', INTERVAL '7 days'));
CREATE UNIQUE INDEX charger_messages_natural_key ON charger_messages (charge_point_id, action, digest, time);
