-- 0002: reporting. Outage exclusions are an append-only audit trail (NEVI T_excluded needs
-- the operator to "demonstrate the port would otherwise be operational": who, why, evidence).
CREATE TABLE outage_exclusions (
    id              bigserial PRIMARY KEY,
    charge_point_id text NOT NULL,
    evse_id         integer NOT NULL CHECK (evse_id > 0),
    starts_at       timestamptz NOT NULL,
    ends_at         timestamptz NOT NULL CHECK (ends_at > starts_at),
    -- EV-ChART excluded_outage_reason 1–6, or 'withdrawn' to cancel an earlier entry.
    reason          text NOT NULL CHECK (reason IN ('utility_interruption', 'vehicle_fault',
                        'scheduled_maintenance', 'vandalism', 'natural_disaster', 'outside_hours', 'withdrawn')),
    notes           text NOT NULL DEFAULT '' CHECK (length(notes) <= 2000),
    evidence_urls   text[] NOT NULL DEFAULT '{}',
    claimed_by      text NOT NULL CHECK (length(claimed_by) BETWEEN 1 AND 200),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outage_exclusions_port_idx ON outage_exclusions (charge_point_id, evse_id, starts_at);

CREATE FUNCTION outage_exclusions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'outage_exclusions is append-only: add a new entry (reason withdrawn to cancel one)';
END $$;
CREATE TRIGGER outage_exclusions_no_update BEFORE UPDATE OR DELETE ON outage_exclusions
    FOR EACH ROW EXECUTE FUNCTION outage_exclusions_append_only();

-- Looking up a port's status at a moment: the latest row at or before it.
CREATE INDEX connector_status_port_time_idx ON connector_status (charge_point_id, evse_id, time DESC);
CREATE INDEX connection_events_cp_time_idx ON connection_events (charge_point_id, time DESC);

-- 2.0.1 has no Charging connector status: charging time comes from TransactionEvent chargingState.
ALTER TABLE transaction_events ADD COLUMN charging_state text;
