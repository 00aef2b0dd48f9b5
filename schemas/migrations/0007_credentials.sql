-- Onboarding binds a credential (trust on first use; README "Onboarding unknown chargers").
--
-- onboarded_at: when an unknown id registered itself through --onboard-unknown (NULL: registered by an
-- operator). Its credential_hash is then the password it presented first, pinned; later connections must
-- present the same one. Pending onboarded ids are capped (onboard_max_pending), counted on the index below.
ALTER TABLE charge_points ADD COLUMN onboarded_at timestamptz;

CREATE INDEX charge_points_onboarding_pending_idx ON charge_points (id)
    WHERE onboarded_at IS NOT NULL AND admission = 'pending';

-- Rows the earlier onboarding created (security profile 0, no credential, no EVSE: an operator's
-- registration always has an EVSE) were admitted without any Authorization header, even after an
-- operator accepted them. They become onboarded ids without a credential: on a profile 1/2 endpoint with
-- onboarding on, the next connection pins its password; otherwise they get 401 until an operator sets one
-- (`csms charge-points set-password`).
UPDATE charge_points cp SET onboarded_at = cp.created_at, security_profile = 1
 WHERE cp.security_profile = 0 AND cp.credential_hash IS NULL
   AND NOT EXISTS (SELECT 1 FROM evses e WHERE e.charge_point_id = cp.id);
