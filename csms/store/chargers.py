"""A charger's identity in the database: its credential, admission, onboarding and connection epoch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from csms.ocpp.context import RegistrationStatus
from csms.security.credentials import generate_password, hash_password
from csms.security.secret import PREFIX, CredentialKey, CredentialKeyError, CredentialSecret

Db = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True, slots=True)
class ChargerRecord:
    id: str
    credential_hash: str | None
    security_profile: int
    registration_status: RegistrationStatus
    admission: str
    tolerant: bool
    vendor: str = ""
    model: str = ""
    # Registered by --onboard-unknown (not by an operator): its credential is the one pinned at first use.
    onboarded: bool = False
    # 'generated' (HMAC), 'operator', 'onboarded' (Argon2id); None: stored before migration 0010 (Argon2id).
    credential_origin: str | None = None
    # The HMAC of a new password sent by a key rotation and not yet used (csms.store.rotation): accepted beside
    # credential_hash until the first login with it retires the old one (A01).
    pending_credential_hash: str | None = None

    @property
    def vendor_model(self) -> tuple[str, str]:
        return (self.vendor.lower(), self.model.lower())


async def fetch_charger(db: Db | PoolConnectionProxy, charge_point_id: str) -> ChargerRecord | None:
    row = await db.fetchrow(
        "SELECT id, credential_hash, security_profile, registration_status, admission, tolerant, vendor, model, "
        "onboarded_at IS NOT NULL AS onboarded, credential_origin, pending_credential_hash FROM charge_points "
        "WHERE id = $1",
        charge_point_id)
    if row is None:
        return None
    return ChargerRecord(row["id"], row["credential_hash"], row["security_profile"], row["registration_status"],
                         row["admission"], row["tolerant"], row["vendor"] or "", row["model"] or "",
                         row["onboarded"], row["credential_origin"], row["pending_credential_hash"])


async def pending_onboarded(db: Db | PoolConnectionProxy) -> int:
    """Onboarded ids still waiting for an operator's decision (counted on a partial index, at most the cap)."""
    return int(await db.fetchval("SELECT count(*) FROM charge_points "
                                 "WHERE onboarded_at IS NOT NULL AND admission = 'pending'"))


# pg_advisory_xact_lock key ("csmsonb1") that serialises onboardings on every node, so the pending cap holds.
_ONBOARD_LOCK_KEY: Final = 0x63736D736F6E6231


async def onboard_unknown(pool: asyncpg.Pool, charge_point_id: str, *, credential_hash: str | None,
                          security_profile: int, max_pending: int) -> ChargerRecord | None:
    """Admit an id for onboarding with the credential it presented (trust on first use).

    A new id is registered 'pending' until an operator accepts it, with ``credential_hash`` pinned (None only
    where the endpoint binds the id otherwise: profile 3 certificates, a profile-0 lab endpoint). An id that an
    earlier onboarding registered without a credential gets it pinned now. An id that has a credential is left
    as it is: the caller verifies the presented password against it. None: ``max_pending`` onboarded ids are
    already waiting for an operator's decision, and nothing was written (1.6J §6.2.2: watch onboarding rates).
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _ONBOARD_LOCK_KEY)
        row = await conn.fetchrow("SELECT credential_hash, onboarded_at FROM charge_points WHERE id = $1 FOR UPDATE",
                                  charge_point_id)
        if row is None:
            if await pending_onboarded(conn) >= max_pending:
                return None
            await conn.execute(
                "INSERT INTO charge_points (id, admission, registration_status, security_profile, credential_hash, "
                "credential_origin, onboarded_at) VALUES ($1, 'pending', 'Pending', $2, $3, "
                "CASE WHEN $3::text IS NULL THEN NULL ELSE 'onboarded' END, now()) ON CONFLICT (id) DO NOTHING",
                charge_point_id, security_profile, credential_hash)
        elif row["credential_hash"] is None and row["onboarded_at"] is not None and credential_hash is not None:
            await conn.execute("UPDATE charge_points SET credential_hash = $2, credential_origin = 'onboarded', "
                               "security_profile = GREATEST(security_profile, $3), updated_at = now() WHERE id = $1",
                               charge_point_id, credential_hash, security_profile)
        return await fetch_charger(conn, charge_point_id)


# A credential an operator sets ends a key rotation in progress: its pending key is discarded and the rotation
# recorded cancelled (csms.store.rotation), in the same statement.
_CANCEL_ROTATION = (
    "WITH cancelled AS (UPDATE credential_rotations SET state = 'cancelled', updated_at = now(), "
    "detail = 'an operator set the charger''s password' WHERE charge_point_id = $1 "
    "AND state IN ('queued', 'sending', 'sent', 'accepted') RETURNING id), "
    "audit AS (INSERT INTO credential_rotation_events (rotation_id, step, actor, detail) "
    "SELECT id, 'cancelled', 'operator', 'password set by an operator' FROM cancelled) ")
_NO_PENDING = "pending_credential_hash = NULL, pending_rotation_id = NULL, "


async def cancel_rotation(db: Db | PoolConnectionProxy, charge_point_id: str) -> None:
    """End the charger's key rotation in progress, if any: its credential was just replaced by an operator."""
    await db.execute(_CANCEL_ROTATION + "UPDATE charge_points SET " + _NO_PENDING.rstrip(", ") + " WHERE id = $1 "
                     "AND pending_rotation_id IS NOT NULL", charge_point_id)


async def set_password(db: Db, charge_point_id: str, password: str) -> bool:
    """Replace a charger's credential (also a password pinned at onboarding) with an operator's password: Argon2id
    (its entropy is unknown). The KDF runs in a thread."""
    digest = await asyncio.to_thread(hash_password, password)
    status = await db.execute(_CANCEL_ROTATION + "UPDATE charge_points SET credential_hash = $2, "
                              "credential_origin = 'operator', " + _NO_PENDING + "updated_at = now() WHERE id = $1",
                              charge_point_id, digest)
    return status.endswith(" 1")


async def set_generated_password(pool: asyncpg.Pool, charge_point_id: str, secret: CredentialSecret) -> str | None:
    """Rotate a charger's credential to a new generated password, stored as HMAC; the password (shown once), or
    None if there is no such charger."""
    password = generate_password()
    async with pool.acquire() as conn, conn.transaction():
        key = await writing_key(conn, secret)
        status = await conn.execute(_CANCEL_ROTATION + "UPDATE charge_points SET credential_hash = $2, "
                                    "credential_origin = 'generated', " + _NO_PENDING + "updated_at = now() "
                                    "WHERE id = $1",
                                    charge_point_id, key.digest(charge_point_id, password))
    return password if status.endswith(" 1") else None


# --- The credential secret and the database (csms.security.secret) ---------------------------------------

async def _claimed_key(db: Db | PoolConnectionProxy) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT key_id, claimed_by, claimed_at FROM credential_keys")


def _mismatch(claimed: asyncpg.Record, secret: CredentialSecret, key: CredentialKey | None) -> CredentialKeyError:
    where = (f"this process has no credential secret ({secret.describe()} does not exist)" if key is None
             else f"this process's secret ({secret.describe()}) has key id {key.key_id}")
    return CredentialKeyError(
        f"the database's generated charger passwords are stored under the credential secret with key id "
        f"{claimed['key_id']} (first used by {claimed['claimed_by']} at {claimed['claimed_at']:%Y-%m-%d %H:%M:%S %Z}),"
        f" but {where}: give every node on this database the same secret (copy the credential-secret file of "
        f"that node, or set credential_secret_file / CSMS_CREDENTIAL_SECRET)")


async def writing_key(db: Db | PoolConnectionProxy, secret: CredentialSecret) -> CredentialKey:
    """The key to store a new HMAC credential with: this process's secret (the file is created on first use),
    claimed for the database unless another secret already is (then CredentialKeyError, nothing stored)."""
    key = secret.load_or_create()
    if secret.claimed:
        return key
    inserted = await db.fetchval("INSERT INTO credential_keys (key_id, claimed_by) VALUES ($1, $2) "
                                 "ON CONFLICT DO NOTHING RETURNING key_id", key.key_id, secret.owner or "csms")
    if inserted is None:    # claimed before (ours or another's): remembered only once it is committed
        claimed = await _claimed_key(db)
        assert claimed is not None
        if claimed["key_id"] != key.key_id:
            raise _mismatch(claimed, secret, key)
        secret.claimed = True
    return key


async def check_credential_key(db: Db, secret: CredentialSecret) -> CredentialKey | None:
    """At start-up: this process's key, or None when it has none and the database needs none.

    Raises CredentialKeyError, so that the process refuses to start, when the database holds HMAC credentials
    (or has a claimed key) and this process has no secret, or one with another key id.
    """
    claimed = await _claimed_key(db)
    key_ids = {r["k"] for r in await db.fetch(
        "SELECT DISTINCT split_part(credential_hash, '$', 2) AS k FROM charge_points "
        "WHERE credential_hash LIKE $1", PREFIX + "%")}
    key = secret.load()
    if claimed is None:
        if not key_ids:
            return key
        # HMAC credentials without a claim (the row was deleted): still, they must be this secret's.
        if key is None or key_ids != {key.key_id}:
            raise CredentialKeyError(
                f"the database holds HMAC charger credentials under key id(s) {', '.join(sorted(key_ids))} but "
                + (f"this process has no credential secret ({secret.describe()} does not exist)" if key is None
                   else f"this process's secret ({secret.describe()}) has key id {key.key_id}")
                + ": give every node on this database the same secret")
        return key
    if key is None or claimed["key_id"] != key.key_id or not key_ids <= {key.key_id}:
        raise _mismatch(claimed, secret, key)
    secret.claimed = True
    return key


async def store_migrated_credentials(pool: asyncpg.Pool, rows: Sequence[tuple[str, str, str]]) -> int:
    """Re-store legacy Argon2id credentials as HMAC: (id, the Argon2id hash that was verified, the new HMAC).
    A row whose credential changed meanwhile (an operator set a password) is left alone. Returns rows changed."""
    status = await pool.execute(
        "UPDATE charge_points cp SET credential_hash = m.new_hash, credential_origin = 'generated', "
        "updated_at = now() FROM unnest($1::text[], $2::text[], $3::text[]) AS m(id, old_hash, new_hash) "
        "WHERE cp.id = m.id AND cp.credential_hash = m.old_hash AND cp.credential_origin IS NULL",
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    return int(status.rsplit(" ", 1)[1])


async def count_slow_hashes(db: Db) -> dict[str, int]:
    """Chargers whose credential is an Argon2id hash, by origin ('operator', 'onboarded', 'legacy': stored before
    HMAC credentials existed and not yet migrated). Counted on a partial index: the cost is bounded by their
    number."""
    rows = await db.fetch(
        "SELECT coalesce(credential_origin, CASE WHEN onboarded_at IS NOT NULL THEN 'onboarded' ELSE 'legacy' END) "
        "AS origin, count(*) AS n FROM charge_points WHERE credential_hash LIKE '$argon2%' GROUP BY 1")
    counts = dict.fromkeys(("operator", "onboarded", "legacy"), 0)
    counts.update({r["origin"]: int(r["n"]) for r in rows})
    return counts


async def set_admission(db: Db, charge_point_id: str, admission: str) -> bool:
    status = await db.execute("UPDATE charge_points SET admission = $2, updated_at = now() WHERE id = $1",
                              charge_point_id, admission)
    return status.endswith(" 1")



_ALLOCATE_EPOCH = "UPDATE charge_points SET connection_epoch = connection_epoch + 1 WHERE id = $1 " \
                  "RETURNING connection_epoch"


async def allocate_connection_epoch(pool: asyncpg.Pool, charge_point_id: str) -> int | None:
    """The charger's next connection epoch, allocated by the database (None: no such row).

    One counter per charger in ``charge_points``, shared by every node on the database: a
    newer admitted websocket always has a higher epoch, so the events of a replaced socket
    (R28) can be told from the live one's whatever order they are stored in.
    """
    epoch = await pool.fetchval(_ALLOCATE_EPOCH, charge_point_id)
    return int(epoch) if epoch is not None else None
