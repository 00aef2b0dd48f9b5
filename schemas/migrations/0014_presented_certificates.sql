-- A certificate a charger presents as its TLS client certificate (security profile 3) is its certificate,
-- also when this CSMS did not sign it (a factory certificate, one from a previous CSMS): recorded at the
-- handshake, so that its expiry is visible per charger, counted in the expiry metric and renewed like the
-- certificates this CSMS signs (2.0.1 A03: the CSMS may trigger the renewal of any station certificate).
ALTER TABLE charger_certificates
    ADD COLUMN origin text NOT NULL DEFAULT 'signed' CHECK (origin IN ('signed', 'presented')),
    -- the last handshake that presented it (NULL: never seen in use)
    ADD COLUMN last_presented_at timestamptz;
