-- Certificate signing and management (issue 14 item 4) and security events (item 5).
-- OCPP 2.0.1 A02/A03 (SignCertificate → CertificateSigned), M03-M05 (GetInstalledCertificateIds,
-- DeleteCertificate, InstallCertificate), A04 (SecurityEventNotification); 1.6 Security Whitepaper ed. 3.

-- Every SignCertificate: how it was answered (Rejected with the reason), and for an accepted one what was
-- signed and what the charger answered to the CertificateSigned.
CREATE TABLE certificate_requests (
    id                bigserial PRIMARY KEY,
    charge_point_id   text NOT NULL,
    received_at       timestamptz NOT NULL,
    ocpp_version      text NOT NULL,
    certificate_type  text NOT NULL,
    csr_subject       text NOT NULL DEFAULT '',
    status            text NOT NULL CHECK (status IN ('Accepted', 'Rejected')),
    reason            text NOT NULL DEFAULT '',
    signed_serial     text,
    sent_at           timestamptz,
    charger_status    text,           -- CertificateSignedResponse.status, or the failure to deliver it
    charger_detail    text NOT NULL DEFAULT ''
);
CREATE INDEX certificate_requests_cp_idx ON certificate_requests (charge_point_id, received_at DESC);

-- Certificates signed for a charger (the CA's view): serial, subject, validity; `accepted` once the charger
-- answered CertificateSigned Accepted. The charger's current certificate is its accepted one that expires
-- last; renewal_requested_at bounds the renewal triggers (one per charger and check interval).
CREATE TABLE charger_certificates (
    charge_point_id      text NOT NULL,
    serial               text NOT NULL,
    certificate_type     text NOT NULL,
    subject              text NOT NULL,
    issuer               text NOT NULL,
    not_before           timestamptz NOT NULL,
    not_after            timestamptz NOT NULL,
    certificate_pem      text NOT NULL,
    issued_at            timestamptz NOT NULL DEFAULT now(),
    accepted             boolean NOT NULL DEFAULT false,
    renewal_requested_at timestamptz,
    PRIMARY KEY (charge_point_id, serial)
);
CREATE INDEX charger_certificates_expiry_idx ON charger_certificates (not_after) WHERE accepted;

-- Install/Delete/GetInstalledCertificateIds sent through the API, with the charger's answer.
CREATE TABLE certificate_commands (
    id              bigserial PRIMARY KEY,
    charge_point_id text NOT NULL,
    action          text NOT NULL,
    request         jsonb NOT NULL,
    response        jsonb,
    error           text NOT NULL DEFAULT '',
    sent_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX certificate_commands_cp_idx ON certificate_commands (charge_point_id, sent_at DESC);

-- SecurityEventNotification, stored before it is confirmed; event_key (type, timestamp as sent, techInfo)
-- makes a retry of the same notification one row.
CREATE TABLE security_events (
    id              bigserial PRIMARY KEY,
    charge_point_id text NOT NULL,
    event_key       text NOT NULL,
    type            text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    tech_info       text,
    critical        boolean NOT NULL,
    flags           integer NOT NULL DEFAULT 0,
    ocpp_version    text NOT NULL,
    received_at     timestamptz NOT NULL,
    UNIQUE (charge_point_id, event_key)
);
CREATE INDEX security_events_time_idx ON security_events (occurred_at);
CREATE INDEX security_events_cp_idx ON security_events (charge_point_id, id DESC);
