"""``csms.ocpp.context.Services`` over PostgreSQL: what the protocol handlers may ask."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from csms.ocpp.context import BootDecision, BootInfo, RegistrationStatus, TokenDecision
from csms.ocpp.types import ChargePointId, IdToken

logger = logging.getLogger(__name__)


@dataclass
class DbServices:
    """``csms.ocpp.context.Services`` over PostgreSQL."""

    pool: asyncpg.Pool
    heartbeat_interval_s: int
    boot_retry_interval_s: int = 60
    free_vend: bool = False
    # Certificate signing and security events (issue 14 items 4-5): csms.gateway.certificates.SecurityDesk.
    security: object | None = None

    async def boot(self, charge_point_id: ChargePointId, info: BootInfo) -> BootDecision:
        row = await self.pool.fetchrow(
            """UPDATE charge_points SET
                   registration_status = CASE admission WHEN 'accept' THEN 'Accepted'
                                                        WHEN 'reject' THEN 'Rejected' ELSE 'Pending' END,
                   vendor = $2, model = $3, serial_number = COALESCE($4, serial_number),
                   firmware_version = COALESCE($5, firmware_version), last_boot_at = now(), updated_at = now()
               WHERE id = $1 RETURNING registration_status""",
            charge_point_id, info.vendor, info.model, info.serial_number, info.firmware_version)
        status: RegistrationStatus = row["registration_status"] if row else "Rejected"
        # Accepted: heartbeat interval; Pending/Rejected: the minimum wait before the next
        # BootNotification (1.6 §4.2; B02.FR.07/08, B03.FR.05/06).
        interval = self.heartbeat_interval_s if status == "Accepted" else self.boot_retry_interval_s
        return BootDecision(status, interval)

    async def authorize(self, charge_point_id: ChargePointId, id_token: IdToken) -> TokenDecision:
        if self.free_vend:
            return TokenDecision("Accepted")
        row = await self.pool.fetchrow("SELECT status, expiry_date, group_id FROM id_tokens WHERE id_token = $1",
                                       id_token)
        if row is None:
            return TokenDecision("Unknown")
        if row["expiry_date"] is not None and row["expiry_date"] < datetime.now(UTC):
            return TokenDecision("Expired", row["expiry_date"], row["group_id"])
        return TokenDecision(row["status"], row["expiry_date"], row["group_id"])

    async def open_transactions(self, charge_point_id: ChargePointId) -> dict[str, tuple[int, int | None]]:
        try:
            rows = await self.pool.fetch(
                """SELECT transaction_uid, evse_id, connector_id FROM transactions
                   WHERE charge_point_id = $1 AND stopped_at IS NULL AND evse_id IS NOT NULL
                     AND started_at > now() - interval '7 days'
                   ORDER BY started_at DESC LIMIT 64""", charge_point_id)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            # Best effort: the connection goes on; such events are then flagged, not lost.
            logger.warning("open transactions of %s not read: %s", charge_point_id, exc)
            return {}
        return {r["transaction_uid"]: (r["evse_id"], r["connector_id"]) for r in rows}

    async def allocate_transaction_id(self, charge_point_id: ChargePointId, start_key: str) -> int:
        tx_id = await self.pool.fetchval(
            """INSERT INTO ocpp16_transaction_ids (charge_point_id, start_key) VALUES ($1, $2)
               ON CONFLICT (charge_point_id, start_key) DO NOTHING RETURNING transaction_id""",
            charge_point_id, start_key)
        if tx_id is None:
            tx_id = await self.pool.fetchval(
                "SELECT transaction_id FROM ocpp16_transaction_ids WHERE charge_point_id = $1 AND start_key = $2",
                charge_point_id, start_key)
        return int(tx_id)

    async def transaction_start_key(self, charge_point_id: ChargePointId, transaction_id: int) -> str | None:
        # The allocation row is committed before the StartTransaction is answered, so every id a
        # charger can know is here (ocpp16_transaction_ids.transaction_id is unique: one index probe).
        key: str | None = await self.pool.fetchval(
            "SELECT start_key FROM ocpp16_transaction_ids WHERE transaction_id = $1 AND charge_point_id = $2",
            transaction_id, charge_point_id)
        return key
