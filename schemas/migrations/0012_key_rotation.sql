-- Key rotation of charger Basic-auth passwords (issue 14 item 3; OCPP 2.0.1 A01 "Update Charging Station
-- Password for HTTP Basic Authentication", 1.6 Security Whitepaper §2.3/§3.4 AuthorizationKey).
--
-- charge_points.pending_credential_hash: the HMAC of a new generated password sent to the charger and not yet
-- used by it. While it is set the handshake accepts it beside credential_hash; the first login with it makes it
-- the credential (the old one is retired). pending_rotation_id names the rotation it belongs to.
ALTER TABLE charge_points ADD COLUMN pending_credential_hash text,
                          ADD COLUMN pending_rotation_id bigint;

-- A campaign: a fleet-wide rotation at a bounded rate. At most one runs at a time (the partial unique index).
CREATE TABLE credential_campaigns (
    id            bigserial PRIMARY KEY,
    state         text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done', 'cancelled')),
    selector      jsonb NOT NULL,
    -- asked by the operator (NULL: the setting rotation_campaign_per_s, which also bounds an asked rate)
    rate_per_s    double precision CHECK (rate_per_s > 0),
    requested_by  text NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    skipped       integer NOT NULL DEFAULT 0,  -- selected chargers that already had a rotation in progress
    -- The rate across every node: a node may send the next rotation once this time has come, and moves it on.
    next_send_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX credential_campaigns_one_running_idx ON credential_campaigns ((true)) WHERE state = 'running';

-- One rotation of one charger. state: queued (a campaign's, not sent yet) → sending (a node claimed it) →
-- sent → accepted (the charger took the key; both keys work) → completed (first login with the new key, the old
-- one retired); or rejected / timeout / error / offline / cancelled (the new key discarded, the old one kept).
CREATE TABLE credential_rotations (
    id              bigserial PRIMARY KEY,
    charge_point_id text NOT NULL REFERENCES charge_points (id) ON DELETE CASCADE,
    campaign_id     bigint REFERENCES credential_campaigns (id) ON DELETE SET NULL,
    state           text NOT NULL CHECK (state IN ('queued', 'sending', 'sent', 'accepted', 'completed',
                                                   'rejected', 'timeout', 'error', 'offline', 'cancelled')),
    ocpp_version    text,
    charger_status  text,        -- the charger's answer (Accepted, Rejected, RebootRequired, …)
    detail          text NOT NULL DEFAULT '',
    requested_by    text NOT NULL,
    requested_at    timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    answered_at     timestamptz,
    completed_at    timestamptz, -- first login with the new key = the old key retired
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- One rotation in progress per charger (two in a row: the second gets 409 while the first is active).
CREATE UNIQUE INDEX credential_rotations_active_idx ON credential_rotations (charge_point_id)
    WHERE state IN ('queued', 'sending', 'sent', 'accepted');
CREATE INDEX credential_rotations_cp_idx ON credential_rotations (charge_point_id, id);
CREATE INDEX credential_rotations_campaign_idx ON credential_rotations (campaign_id, state)
    WHERE campaign_id IS NOT NULL;

-- The audit trail: every step, who did it and when (never the password or its hash).
CREATE TABLE credential_rotation_events (
    rotation_id bigint NOT NULL REFERENCES credential_rotations (id) ON DELETE CASCADE,
    seq         bigserial,
    at          timestamptz NOT NULL DEFAULT now(),
    step        text NOT NULL,   -- requested, sent, accepted, rejected, timeout, error, offline, old_key_login,
                                 -- new_key_login, old_key_retired, cancelled
    actor       text NOT NULL,   -- operator:<name>, node:<node id>, charger:<id>@<source>
    detail      text NOT NULL DEFAULT '',
    PRIMARY KEY (rotation_id, seq)
);
