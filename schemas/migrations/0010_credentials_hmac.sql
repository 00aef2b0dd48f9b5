-- Generated charger passwords are stored as HMAC-SHA-256 under a server secret kept outside the database
-- (scale-out issue, item 6; README "Charger passwords").
--
-- credential_keys: the key id (a one-way fingerprint, never the secret) of the one secret this database's HMAC
-- credentials are made with, claimed by the first process that stores one. A process whose secret has another
-- key id refuses to start (or to store a credential) instead of refusing every charger.
CREATE TABLE credential_keys (
    key_id     text PRIMARY KEY,
    claimed_by text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    only_one   boolean NOT NULL DEFAULT true UNIQUE CHECK (only_one)
);

-- Where the stored credential came from: 'generated' (HMAC), 'operator' (an operator's password, Argon2id),
-- 'onboarded' (pinned at first use, Argon2id). NULL: stored before this migration (Argon2id); such a
-- credential of an operator-registered charger is re-stored as HMAC after a successful login with a password
-- of the generated form.
ALTER TABLE charge_points ADD COLUMN credential_origin text
    CHECK (credential_origin IN ('generated', 'operator', 'onboarded'));

-- csms_chargers_slow_hash counts the Argon2id credentials on this index (bounded by their number).
CREATE INDEX charge_points_slow_hash_idx ON charge_points (credential_origin, (onboarded_at IS NOT NULL))
    WHERE credential_hash LIKE '$argon2%';
