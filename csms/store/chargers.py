"""A charger's identity in the database: its credential, admission, onboarding and connection epoch."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from csms.ocpp.context import RegistrationStatus
from csms.security.credentials import hash_password

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

    @property
    def vendor_model(self) -> tuple[str, str]:
        return (self.vendor.lower(), self.model.lower())


async def fetch_charger(db: Db | PoolConnectionProxy, charge_point_id: str) -> ChargerRecord | None:
    row = await db.fetchrow(
        "SELECT id, credential_hash, security_profile, registration_status, admission, tolerant, vendor, model, "
        "onboarded_at IS NOT NULL AS onboarded FROM charge_points WHERE id = $1", charge_point_id)
    if row is None:
        return None
    return ChargerRecord(row["id"], row["credential_hash"], row["security_profile"], row["registration_status"],
                         row["admission"], row["tolerant"], row["vendor"] or "", row["model"] or "",
                         row["onboarded"])


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
                "onboarded_at) VALUES ($1, 'pending', 'Pending', $2, $3, now()) ON CONFLICT (id) DO NOTHING",
                charge_point_id, security_profile, credential_hash)
        elif row["credential_hash"] is None and row["onboarded_at"] is not None and credential_hash is not None:
            await conn.execute("UPDATE charge_points SET credential_hash = $2, security_profile = "
                               "GREATEST(security_profile, $3), updated_at = now() WHERE id = $1",
                               charge_point_id, credential_hash, security_profile)
        return await fetch_charger(conn, charge_point_id)


async def set_password(db: Db, charge_point_id: str, password: str) -> bool:
    """Replace a charger's credential (also a password pinned at onboarding). The KDF runs in a thread."""
    digest = await asyncio.to_thread(hash_password, password)
    status = await db.execute("UPDATE charge_points SET credential_hash = $2, updated_at = now() WHERE id = $1",
                              charge_point_id, digest)
    return status.endswith(" 1")


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
