"""Key rotation in the database: rotations, their audit trail, campaigns (issue 14 item 3; 2.0.1 A01).

Every state lives here, not in a process's memory, so any node or worker may request, send, answer, complete
or sweep a rotation, and a restart loses nothing but the calls that were on the wire (swept as timeouts).

A rotation: queued (a campaign's) → sending (a node claimed it) → sent (the new key is pending beside the old
one in ``charge_points.pending_credential_hash``) → accepted (the charger took it; both keys are accepted) →
completed (its first login with the new key: the old key is retired). Rejected, timeout, error, offline and
cancelled discard the pending key and keep the old one. One rotation is active per charger (a unique index):
a second one while the first is active is a ``RotationConflict``. The password itself is never stored: only
its HMAC, like any generated password (``csms.security.secret``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from csms.security.secret import CredentialSecret
from csms.store.chargers import writing_key

Conn = asyncpg.Connection | PoolConnectionProxy

ACTIVE: Final = ("queued", "sending", "sent", "accepted")
FINAL: Final = ("completed", "rejected", "timeout", "error", "offline", "cancelled")
STATES: Final = ACTIVE + FINAL
_ACTIVE_SQL = "('queued', 'sending', 'sent', 'accepted')"


class RotationError(Exception):
    """A rotation cannot be started or changed as asked."""


class RotationConflict(RotationError):
    """The charger (or the fleet) already has a rotation (campaign) in progress."""

    def __init__(self, message: str, active_id: int | None) -> None:
        super().__init__(message)
        self.active_id = active_id


class RotationRefused(RotationError):
    """A charger without a Basic-auth password to rotate, or a campaign naming unknown chargers."""


class UnknownChargePoint(RotationRefused):
    """No such charger."""


async def _event(conn: Conn, rotation_id: int, step: str, actor: str, detail: str = "") -> None:
    await conn.execute("INSERT INTO credential_rotation_events (rotation_id, step, actor, detail) "
                       "VALUES ($1, $2, $3, $4)", rotation_id, step, actor, detail)


async def _check_rotatable(conn: Conn, charge_point_id: str) -> None:
    row = await conn.fetchrow("SELECT credential_hash IS NOT NULL AS has_password, security_profile "
                              "FROM charge_points WHERE id = $1", charge_point_id)
    if row is None:
        raise UnknownChargePoint(f"no charge point {charge_point_id}")
    if not row["has_password"] or row["security_profile"] == 0:
        raise RotationRefused(f"charge point {charge_point_id} has no Basic-auth password to rotate (security "
                              "profile 0 or none set: set one first)")


async def _active_id(conn: Conn, charge_point_id: str) -> int | None:
    value = await conn.fetchval(f"SELECT id FROM credential_rotations WHERE charge_point_id = $1 "
                                f"AND state IN {_ACTIVE_SQL}", charge_point_id)
    return int(value) if value is not None else None


async def request_rotation(pool: asyncpg.Pool, charge_point_id: str, *, requested_by: str) -> int:
    """Record an operator's request for one charger (state 'sending': the caller sends it now)."""
    async with pool.acquire() as conn, conn.transaction():
        await _check_rotatable(conn, charge_point_id)
        try:
            async with conn.transaction():
                rotation_id = int(await conn.fetchval(
                    "INSERT INTO credential_rotations (charge_point_id, state, requested_by) "
                    "VALUES ($1, 'sending', $2) RETURNING id", charge_point_id, requested_by))
        except asyncpg.UniqueViolationError:
            active = await _active_id(conn, charge_point_id)
            raise RotationConflict(f"charge point {charge_point_id} has a key rotation in progress (rotation "
                                   f"{active}); it ends at the charger's first login with the new key, or with "
                                   "its refusal or timeout", active) from None
        await _event(conn, rotation_id, "requested", requested_by)
    return rotation_id


async def mark_sent(pool: asyncpg.Pool, rotation_id: int, *, secret: CredentialSecret, password: str,
                    ocpp_version: str, actor: str) -> bool:
    """Store the new key's HMAC as pending beside the current credential, just before it is sent (from here on
    the handshake accepts it). False: the rotation is no longer 'sending' (cancelled, swept): do not send."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow("SELECT charge_point_id FROM credential_rotations WHERE id = $1 "
                                  "AND state = 'sending' FOR UPDATE", rotation_id)
        if row is None:
            return False
        cp_id = row["charge_point_id"]
        key = await writing_key(conn, secret)
        await conn.execute("UPDATE charge_points SET pending_credential_hash = $2, pending_rotation_id = $3 "
                           "WHERE id = $1", cp_id, key.digest(cp_id, password), rotation_id)
        await conn.execute("UPDATE credential_rotations SET state = 'sent', sent_at = now(), updated_at = now(), "
                           "ocpp_version = $2 WHERE id = $1", rotation_id, ocpp_version)
        await _event(conn, rotation_id, "sent", actor,
                     "ChangeConfiguration AuthorizationKey" if ocpp_version == "1.6"
                     else "SetVariables SecurityCtrlr.BasicAuthPassword")
    return True


async def _discard_pending(conn: Conn, rotation_id: int) -> None:
    await conn.execute("UPDATE charge_points SET pending_credential_hash = NULL, pending_rotation_id = NULL "
                       "WHERE pending_rotation_id = $1", rotation_id)


async def record_answer(pool: asyncpg.Pool, rotation_id: int, *, outcome: str, actor: str,
                        charger_status: str | None = None, detail: str = "") -> str | None:
    """The end of the call: 'accepted' keeps both keys; 'rejected', 'timeout', 'error' and 'offline' discard the
    pending key (A01.FR.04: the old one stays). A charger that already logged in with the new key (its answer
    was overtaken by its reconnect) stays completed. Returns the rotation's state after it (None: unknown id)."""
    async with pool.acquire() as conn, conn.transaction():
        state = await conn.fetchval("SELECT state FROM credential_rotations WHERE id = $1 FOR UPDATE", rotation_id)
        if state is None:
            return None
        if state in ("sending", "sent"):
            state = outcome
            await conn.execute("UPDATE credential_rotations SET state = $2, charger_status = $3, detail = $4, "
                               "answered_at = now(), updated_at = now() WHERE id = $1",
                               rotation_id, outcome, charger_status, detail)
            if outcome != "accepted":
                await _discard_pending(conn, rotation_id)
        await _event(conn, rotation_id, outcome, actor,
                     ": ".join(p for p in (charger_status or "", detail) if p))
    return str(state)


async def promote_pending(pool: asyncpg.Pool, charge_point_id: str, pending_hash: str, *,
                          actor: str) -> int | None:
    """The charger logged in with its pending key: it becomes the credential, the old one is retired (A01.FR.03),
    in one transaction. A compare-and-set on the pending hash: a concurrent login or an operator's new password
    wins. Returns the rotation completed (None: nothing changed)."""
    async with pool.acquire() as conn, conn.transaction():
        rotation_id = await conn.fetchval(
            "SELECT pending_rotation_id FROM charge_points WHERE id = $1 AND pending_credential_hash = $2 "
            "FOR UPDATE", charge_point_id, pending_hash)
        if rotation_id is None:
            return None
        await conn.execute("UPDATE charge_points SET credential_hash = pending_credential_hash, "
                           "credential_origin = 'generated', pending_credential_hash = NULL, "
                           "pending_rotation_id = NULL, updated_at = now() WHERE id = $1", charge_point_id)
        await conn.execute("UPDATE credential_rotations SET state = 'completed', completed_at = now(), "
                           "updated_at = now() WHERE id = $1", rotation_id)
        await _event(conn, rotation_id, "new_key_login", actor)
        await _event(conn, rotation_id, "old_key_retired", actor)
    return int(rotation_id)


async def note_old_key_login(pool: asyncpg.Pool, charge_point_id: str, *, actor: str) -> None:
    """Audit a login with the old key while a new one is pending (both are accepted; the rotation goes on)."""
    await pool.execute(
        "INSERT INTO credential_rotation_events (rotation_id, step, actor) SELECT pending_rotation_id, "
        "'old_key_login', $2 FROM charge_points WHERE id = $1 AND pending_rotation_id IS NOT NULL",
        charge_point_id, actor)


async def sweep_stale(pool: asyncpg.Pool, *, older_than_s: float, actor: str) -> int:
    """Rotations left 'sending' or 'sent' by a process that stopped (their call ended with it): past every
    command timeout they are timeouts, their pending keys discarded. Returns how many."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "UPDATE credential_rotations SET state = 'timeout', answered_at = now(), updated_at = now(), "
            "detail = 'no answer recorded: the process sending it stopped' WHERE state IN ('sending', 'sent') "
            "AND updated_at < now() - make_interval(secs => $1) RETURNING id", older_than_s)
        for row in rows:
            await _discard_pending(conn, row["id"])
            await _event(conn, row["id"], "timeout", actor, "swept: no answer recorded")
    return len(rows)


# --- Campaigns ------------------------------------------------------------------------------------------

async def create_campaign(pool: asyncpg.Pool, *, charge_point_ids: Sequence[str] | None,
                          ocpp_version: str | None, rate_per_s: float | None, requested_by: str) -> int:
    """Queue a rotation for every selected charger with a Basic-auth password (all when neither filter is
    given). Chargers with a rotation in progress are skipped (counted). One campaign runs at a time."""
    selector = {"charge_point_ids": list(charge_point_ids) if charge_point_ids is not None else None,
                "ocpp_version": ocpp_version}
    async with pool.acquire() as conn, conn.transaction():
        if charge_point_ids is not None:
            known = {r["id"] for r in await conn.fetch("SELECT id FROM charge_points WHERE id = ANY($1::text[])",
                                                       list(charge_point_ids))}
            unknown = sorted(set(charge_point_ids) - known)
            if unknown:
                raise RotationRefused(f"unknown charge points: {', '.join(unknown[:20])}")
        try:
            async with conn.transaction():
                campaign_id = int(await conn.fetchval(
                    "INSERT INTO credential_campaigns (selector, rate_per_s, requested_by) VALUES ($1, $2, $3) "
                    "RETURNING id", json.dumps(selector), rate_per_s, requested_by))
        except asyncpg.UniqueViolationError:
            running = await conn.fetchval("SELECT id FROM credential_campaigns WHERE state = 'running'")
            raise RotationConflict(f"campaign {running} is running; one campaign runs at a time",
                                   running) from None
        selected = await conn.fetch(
            "SELECT id FROM charge_points WHERE credential_hash IS NOT NULL AND security_profile > 0 "
            "AND ($1::text[] IS NULL OR id = ANY($1::text[])) AND ($2::text IS NULL OR ocpp_version = $2) "
            "ORDER BY id", list(charge_point_ids) if charge_point_ids is not None else None, ocpp_version)
        inserted = await conn.fetch(
            f"INSERT INTO credential_rotations (charge_point_id, campaign_id, state, requested_by) "
            f"SELECT id, $2, 'queued', $3 FROM unnest($1::text[]) AS s(id) "
            f"ON CONFLICT (charge_point_id) WHERE state IN {_ACTIVE_SQL} DO NOTHING RETURNING id",
            [r["id"] for r in selected], campaign_id, requested_by)
        await conn.execute("INSERT INTO credential_rotation_events (rotation_id, step, actor, detail) "
                           "SELECT id, 'requested', $2, $3 FROM unnest($1::bigint[]) AS r(id)",
                           [r["id"] for r in inserted], requested_by, f"campaign {campaign_id}")
        await conn.execute("UPDATE credential_campaigns SET skipped = $2 WHERE id = $1",
                           campaign_id, len(selected) - len(inserted))
    return campaign_id


async def claim_campaign_rotations(pool: asyncpg.Pool, *, max_rate_per_s: float,
                                   max_rows: int) -> list[tuple[int, str]]:
    """The running campaign's next queued rotations this node may send now, at the campaign's rate (at most
    ``max_rate_per_s``) across every node: ``next_send_at`` moves on by 1/rate per claim, and an idle second
    earns at most rate + 1. Claimed rotations are 'sending'. Also finishes a campaign with nothing left to send
    or answer."""
    async with pool.acquire() as conn, conn.transaction():
        campaign = await conn.fetchrow(
            "SELECT id, rate_per_s, greatest(next_send_at, now() - interval '1 second') AS base, "
            "extract(epoch FROM now() - greatest(next_send_at, now() - interval '1 second')) AS earned_s "
            "FROM credential_campaigns WHERE state = 'running' FOR UPDATE SKIP LOCKED")
        if campaign is None:
            return []
        rate = min(float(campaign["rate_per_s"] or max_rate_per_s), max_rate_per_s)
        earned = float(campaign["earned_s"])
        allowed = min(max_rows, int(earned * rate) + 1) if earned >= 0 else 0
        rows = await conn.fetch(
            "UPDATE credential_rotations SET state = 'sending', updated_at = now() WHERE id IN (SELECT id FROM "
            "credential_rotations WHERE campaign_id = $1 AND state = 'queued' ORDER BY id LIMIT $2 "
            "FOR UPDATE SKIP LOCKED) RETURNING id, charge_point_id", campaign["id"], allowed) if allowed else []
        if rows:
            await conn.execute("UPDATE credential_campaigns SET next_send_at = $2::timestamptz "
                               "+ make_interval(secs => $3) WHERE id = $1",
                               campaign["id"], campaign["base"], len(rows) / rate)
        else:
            await conn.execute(
                "UPDATE credential_campaigns c SET state = 'done', finished_at = now() WHERE c.id = $1 AND NOT "
                "EXISTS (SELECT 1 FROM credential_rotations r WHERE r.campaign_id = c.id "
                "AND r.state IN ('queued', 'sending', 'sent'))", campaign["id"])
    return sorted((int(r["id"]), str(r["charge_point_id"])) for r in rows)


async def cancel_campaign(pool: asyncpg.Pool, campaign_id: int, *, actor: str) -> bool:
    """Stop a running campaign: its queued rotations are cancelled (those already sent run to their end)."""
    async with pool.acquire() as conn, conn.transaction():
        status = await conn.execute("UPDATE credential_campaigns SET state = 'cancelled', finished_at = now() "
                                    "WHERE id = $1 AND state = 'running'", campaign_id)
        if not status.endswith(" 1"):
            return False
        await conn.execute(
            "WITH c AS (UPDATE credential_rotations SET state = 'cancelled', updated_at = now(), "
            "detail = 'campaign cancelled' WHERE campaign_id = $1 AND state = 'queued' RETURNING id) "
            "INSERT INTO credential_rotation_events (rotation_id, step, actor) SELECT id, 'cancelled', $2 FROM c",
            campaign_id, actor)
    return True


# --- Reading ---------------------------------------------------------------------------------------------

_ROTATION_COLUMNS = (
    "r.id, r.charge_point_id, r.campaign_id, r.state, r.ocpp_version, r.charger_status, r.detail, "
    "r.requested_by, r.requested_at, r.sent_at, r.answered_at, r.completed_at, "
    "coalesce((SELECT json_agg(json_build_object('step', e.step, 'at', "
    "to_char(e.at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), 'actor', e.actor, "
    "'detail', e.detail) ORDER BY e.seq) FROM credential_rotation_events e WHERE e.rotation_id = r.id), "
    "'[]'::json) AS events")


def _rotation(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    out["events"] = json.loads(row["events"])
    return out


async def rotations_of(db: asyncpg.Pool, charge_point_id: str, *, limit: int) -> list[dict[str, Any]]:
    """A charger's rotations, newest first, each with its audit trail."""
    rows = await db.fetch(f"SELECT {_ROTATION_COLUMNS} FROM credential_rotations r WHERE r.charge_point_id = $1 "
                          "ORDER BY r.id DESC LIMIT $2", charge_point_id, limit)
    return [_rotation(r) for r in rows]


async def rotation(db: asyncpg.Pool, rotation_id: int) -> dict[str, Any] | None:
    row = await db.fetchrow(f"SELECT {_ROTATION_COLUMNS} FROM credential_rotations r WHERE r.id = $1",
                            rotation_id)
    return _rotation(row) if row is not None else None


async def campaigns(db: asyncpg.Pool, *, campaign_id: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Campaigns (newest first) with their progress: rotations per state."""
    rows = await db.fetch(
        "SELECT c.id, c.state, c.selector, c.rate_per_s, c.requested_by, c.requested_at, c.finished_at, c.skipped, "
        "coalesce((SELECT json_object_agg(s.state, s.n) FROM (SELECT state, count(*) AS n FROM credential_rotations "
        "WHERE campaign_id = c.id GROUP BY state) s), '{}'::json) AS counts FROM credential_campaigns c "
        "WHERE $1::bigint IS NULL OR c.id = $1 ORDER BY c.id DESC LIMIT $2", campaign_id, limit)
    out = []
    for row in rows:
        item = dict(row)
        counts = dict.fromkeys(STATES, 0) | json.loads(row["counts"])
        item["selector"] = json.loads(row["selector"])
        item["counts"] = counts
        item["total"] = sum(counts.values())
        out.append(item)
    return out


async def state_counts(db: asyncpg.Pool) -> dict[str, int]:
    """Rotations per state, fleet-wide (the metrics)."""
    counts = dict.fromkeys(STATES, 0)
    counts.update({r["state"]: int(r["n"]) for r in await db.fetch(
        "SELECT state, count(*) AS n FROM credential_rotations GROUP BY state")})
    return counts
