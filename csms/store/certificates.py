"""Certificates in PostgreSQL: SignCertificate requests and their outcome, the certificates signed per charger
(serial, subject, expiry), certificate commands and their answers, the fleet's expiry figures
(schemas/migrations/0013_certificates.sql)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson

from csms.security.ca import IssuedCertificate

# The charger's current certificate: its accepted station certificate that expires last.
_CURRENT = """SELECT DISTINCT ON (charge_point_id) charge_point_id, serial, not_after, renewal_requested_at
              FROM charger_certificates
              WHERE accepted AND certificate_type = 'ChargingStationCertificate' {where}
              ORDER BY charge_point_id, coalesce(last_presented_at, issued_at) DESC, not_after DESC"""
# The charger's current certificate: the one with the latest evidence of use — presented at a handshake, or
# else signed by us (and accepted) after the last one it presented.


async def record_request(pool: asyncpg.Pool, *, charge_point_id: str, received_at: datetime, ocpp_version: str,
                         certificate_type: str, csr_subject: str, status: str, reason: str) -> int:
    request_id: int = await pool.fetchval(
        """INSERT INTO certificate_requests (charge_point_id, received_at, ocpp_version, certificate_type,
                                             csr_subject, status, reason)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
        charge_point_id, received_at, ocpp_version, certificate_type, csr_subject[:512], status, reason[:512])
    return request_id


async def record_signed(pool: asyncpg.Pool, *, request_id: int, charge_point_id: str, certificate_type: str,
                        issued: IssuedCertificate) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """INSERT INTO charger_certificates (charge_point_id, serial, certificate_type, subject, issuer,
                                                 not_before, not_after, certificate_pem)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING""",
            charge_point_id, issued.serial, certificate_type, issued.subject, issued.issuer, issued.not_before,
            issued.not_after, issued.pem_chain)
        await conn.execute("UPDATE certificate_requests SET signed_serial = $2 WHERE id = $1", request_id,
                           issued.serial)


async def record_presented(pool: asyncpg.Pool, *, charge_point_id: str, certificate: IssuedCertificate) -> None:
    """A certificate the charger presented at a profile 3 handshake: recorded (origin 'presented' unless we
    signed it), its last use now."""
    await pool.execute(
        """INSERT INTO charger_certificates (charge_point_id, serial, certificate_type, subject, issuer, not_before,
                                             not_after, certificate_pem, accepted, origin, last_presented_at)
           VALUES ($1, $2, 'ChargingStationCertificate', $3, $4, $5, $6, $7, true, 'presented', now())
           ON CONFLICT (charge_point_id, serial) DO UPDATE SET last_presented_at = now(), accepted = true""",
        charge_point_id, certificate.serial, certificate.subject, certificate.issuer, certificate.not_before,
        certificate.not_after, certificate.pem_chain)


async def record_delivery(pool: asyncpg.Pool, *, request_id: int, charge_point_id: str, serial: str | None,
                          charger_status: str, detail: str = "") -> None:
    """What the charger answered to CertificateSigned (or why it was not delivered); Accepted makes the
    certificate the charger's."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """UPDATE certificate_requests SET sent_at = now(), charger_status = $2, charger_detail = $3
               WHERE id = $1""", request_id, charger_status[:64], detail[:512])
        if serial is not None and charger_status == "Accepted":
            await conn.execute(
                "UPDATE charger_certificates SET accepted = true WHERE charge_point_id = $1 AND serial = $2",
                charge_point_id, serial)


async def record_command(pool: asyncpg.Pool, *, charge_point_id: str, action: str, request: dict[str, Any],
                         response: dict[str, Any] | None, error: str = "") -> None:
    await pool.execute(
        """INSERT INTO certificate_commands (charge_point_id, action, request, response, error)
           VALUES ($1, $2, $3::jsonb, $4::jsonb, $5)""",
        charge_point_id, action, orjson.dumps(request).decode(),
        orjson.dumps(response).decode() if response is not None else None, error[:512])


@dataclass(frozen=True, slots=True)
class RenewalCandidate:
    charge_point_id: str
    serial: str
    not_after: datetime


async def renewal_candidates(pool: asyncpg.Pool, charge_point_ids: Sequence[str], *, lead_time_s: float,
                             retry_after_s: float, limit: int) -> list[RenewalCandidate]:
    """Of these (connected) chargers, those whose current certificate expires within the lead time and whose
    renewal was not requested within ``retry_after_s``; soonest expiry first."""
    if not charge_point_ids:
        return []
    rows = await pool.fetch(
        f"""SELECT charge_point_id, serial, not_after FROM ({_CURRENT.format(where='AND charge_point_id = ANY($1)')}) c
            WHERE not_after < now() + $2::interval
              AND (renewal_requested_at IS NULL OR renewal_requested_at < now() - $3::interval)
            ORDER BY not_after LIMIT $4""",
        list(charge_point_ids), timedelta(seconds=lead_time_s), timedelta(seconds=retry_after_s), limit)
    return [RenewalCandidate(r["charge_point_id"], r["serial"], r["not_after"]) for r in rows]


async def mark_renewal_requested(pool: asyncpg.Pool, charge_point_id: str, serial: str) -> None:
    await pool.execute("""UPDATE charger_certificates SET renewal_requested_at = now()
                          WHERE charge_point_id = $1 AND serial = $2""", charge_point_id, serial)


@dataclass(frozen=True, slots=True)
class FleetExpiry:
    expiring: int                 # chargers whose current certificate expires within the lead time
    soonest: datetime | None      # the soonest expiry of any charger's current certificate


async def fleet_expiry(pool: asyncpg.Pool, *, lead_time_s: float) -> FleetExpiry:
    row = await pool.fetchrow(
        f"""SELECT count(*) FILTER (WHERE not_after < now() + $1::interval) AS expiring, min(not_after) AS soonest
            FROM ({_CURRENT.format(where='')}) c""", timedelta(seconds=lead_time_s))
    return FleetExpiry(int(row["expiring"]) if row else 0, row["soonest"] if row else None)


async def charger_certificates(pool: asyncpg.Pool, charge_point_id: str, *, limit: int = 50
                               ) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """SELECT serial, certificate_type, subject, issuer, not_before, not_after, issued_at, accepted,
                  renewal_requested_at, origin, last_presented_at,
                  coalesce(last_presented_at, issued_at) AS last_evidence_at
           FROM charger_certificates WHERE charge_point_id = $1
           ORDER BY coalesce(last_presented_at, issued_at) DESC LIMIT $2""",
        charge_point_id, limit)
    return [dict(r) for r in rows]


async def charger_requests(pool: asyncpg.Pool, charge_point_id: str, *, limit: int = 50) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """SELECT id, received_at, ocpp_version, certificate_type, csr_subject, status, reason, signed_serial,
                  sent_at, charger_status, charger_detail
           FROM certificate_requests WHERE charge_point_id = $1 ORDER BY received_at DESC, id DESC LIMIT $2""",
        charge_point_id, limit)
    return [dict(r) for r in rows]


async def charger_commands(pool: asyncpg.Pool, charge_point_id: str, *, limit: int = 50) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """SELECT action, request, response, error, sent_at FROM certificate_commands
           WHERE charge_point_id = $1 ORDER BY sent_at DESC, id DESC LIMIT $2""", charge_point_id, limit)
    return [{**dict(r), "request": orjson.loads(r["request"]),
             "response": orjson.loads(r["response"]) if r["response"] is not None else None} for r in rows]
