"""The registry: locations, charge points with their EVSEs/connectors and credentials,
id tokens; and the database side of the handlers' ``Services``.

Registry rows are the central system's own state and are written here directly; the
data chargers send (status, samples, sessions) goes over the bus to ingest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from csms.credentials import generate_password, hash_password
from csms.ocpp.context import BootDecision, BootInfo, ChargePointId, IdToken, RegistrationStatus, TokenDecision

logger = logging.getLogger(__name__)

_ADMISSION_TO_STATUS: dict[str, RegistrationStatus] = {"accept": "Accepted", "pending": "Pending",
                                                       "reject": "Rejected"}


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

    @property
    def vendor_model(self) -> tuple[str, str]:
        return (self.vendor.lower(), self.model.lower())


@dataclass(frozen=True, slots=True)
class ConnectorSpec:
    connector_id: int = 1
    standard: str = "IEC_62196_T2"
    format: str = "SOCKET"
    power_type: str = "AC_3_PHASE"
    max_voltage_v: int = 400
    max_amperage_a: int = 32
    rated_power_w: float = 22000.0


@dataclass(frozen=True, slots=True)
class EvseSpec:
    evse_id: int
    connectors: tuple[ConnectorSpec, ...] = (ConnectorSpec(),)
    emi3_id: str | None = None
    federally_funded: bool = False


@dataclass(frozen=True, slots=True)
class ChargePointSpec:
    id: str
    location_id: str | None = None
    evses: tuple[EvseSpec, ...] = (EvseSpec(1),)
    password: str | None = None          # None: generate one (returned once)
    security_profile: int = 1
    admission: str = "accept"
    tolerant: bool = False
    vendor: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class LocationSpec:
    id: str
    name: str
    address: str = ""
    city: str = ""
    postal_code: str | None = None
    country: str = "USA"
    latitude: float | None = None
    longitude: float | None = None
    time_zone: str = "UTC"
    is_public: bool = False
    opening_hours: dict[str, Any] | None = None
    operational_since: datetime | None = None


Db = asyncpg.Pool | asyncpg.Connection


async def fetch_charger(db: Db, charge_point_id: str) -> ChargerRecord | None:
    row = await db.fetchrow(
        "SELECT id, credential_hash, security_profile, registration_status, admission, tolerant, vendor, model "
        "FROM charge_points WHERE id = $1", charge_point_id)
    if row is None:
        return None
    return ChargerRecord(row["id"], row["credential_hash"], row["security_profile"], row["registration_status"],
                         row["admission"], row["tolerant"], row["vendor"] or "", row["model"] or "")


async def onboard_unknown(db: Db, charge_point_id: str) -> ChargerRecord:
    """Admit an unknown id for onboarding: registered as 'pending' until an operator accepts it."""
    await db.execute("INSERT INTO charge_points (id, admission, registration_status, security_profile) "
                     "VALUES ($1, 'pending', 'Pending', 0) ON CONFLICT (id) DO NOTHING", charge_point_id)
    record = await fetch_charger(db, charge_point_id)
    assert record is not None
    return record


async def upsert_location(db: Db, spec: LocationSpec) -> None:
    await db.execute(
        """INSERT INTO locations (id, name, address, city, postal_code, country, latitude, longitude, time_zone,
                                  is_public, opening_hours, operational_since)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::text::jsonb, $12)
           ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, address = EXCLUDED.address, city = EXCLUDED.city,
               postal_code = EXCLUDED.postal_code, country = EXCLUDED.country, latitude = EXCLUDED.latitude,
               longitude = EXCLUDED.longitude, time_zone = EXCLUDED.time_zone, is_public = EXCLUDED.is_public,
               opening_hours = EXCLUDED.opening_hours, operational_since = EXCLUDED.operational_since,
               last_updated = now()""",
        spec.id, spec.name, spec.address, spec.city, spec.postal_code, spec.country, spec.latitude, spec.longitude,
        spec.time_zone, spec.is_public, None if spec.opening_hours is None else _json(spec.opening_hours),
        spec.operational_since)


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


async def add_charge_point(pool: asyncpg.Pool, spec: ChargePointSpec) -> str | None:
    """Register (or update) a charge point with its EVSEs; return the generated password, if any."""
    generated = None
    password = spec.password
    if password is None and spec.security_profile in (1, 2):
        password = generated = generate_password()
    credential_hash = hash_password(password) if password is not None else None
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """INSERT INTO charge_points (id, location_id, credential_hash, security_profile, admission, tolerant,
                                          vendor, model, registration_status)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'Pending')
               ON CONFLICT (id) DO UPDATE SET location_id = EXCLUDED.location_id,
                   credential_hash = COALESCE(EXCLUDED.credential_hash, charge_points.credential_hash),
                   security_profile = EXCLUDED.security_profile, admission = EXCLUDED.admission,
                   tolerant = EXCLUDED.tolerant, updated_at = now()""",
            spec.id, spec.location_id, credential_hash, spec.security_profile, spec.admission, spec.tolerant,
            spec.vendor, spec.model)
        for evse in spec.evses:
            await conn.execute(
                """INSERT INTO evses (charge_point_id, evse_id, uid, emi3_id, federally_funded)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (charge_point_id, evse_id) DO UPDATE SET emi3_id = EXCLUDED.emi3_id,
                       federally_funded = EXCLUDED.federally_funded, last_updated = now()""",
                spec.id, evse.evse_id, f"{spec.id}*{evse.evse_id}"[:36], evse.emi3_id, evse.federally_funded)
            for c in evse.connectors:
                await conn.execute(
                    """INSERT INTO connectors (charge_point_id, evse_id, connector_id, standard, format, power_type,
                                               max_voltage_v, max_amperage_a, rated_power_w)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                       ON CONFLICT (charge_point_id, evse_id, connector_id) DO UPDATE SET
                           standard = EXCLUDED.standard, format = EXCLUDED.format,
                           power_type = EXCLUDED.power_type, max_voltage_v = EXCLUDED.max_voltage_v,
                           max_amperage_a = EXCLUDED.max_amperage_a, rated_power_w = EXCLUDED.rated_power_w,
                           last_updated = now()""",
                    spec.id, evse.evse_id, c.connector_id, c.standard, c.format, c.power_type, c.max_voltage_v,
                    c.max_amperage_a, c.rated_power_w)
    return generated


async def set_password(db: Db, charge_point_id: str, password: str) -> bool:
    status = await db.execute("UPDATE charge_points SET credential_hash = $2, updated_at = now() WHERE id = $1",
                              charge_point_id, hash_password(password))
    return status.endswith(" 1")


async def set_admission(db: Db, charge_point_id: str, admission: str) -> bool:
    status = await db.execute("UPDATE charge_points SET admission = $2, updated_at = now() WHERE id = $1",
                              charge_point_id, admission)
    return status.endswith(" 1")


async def add_id_token(db: Db, id_token: str, *, status: str = "Accepted", token_type: str = "ISO14443",  # noqa: S107
                       expiry: datetime | None = None, group_id: str | None = None) -> None:
    await db.execute(
        """INSERT INTO id_tokens (id_token, token_type, status, expiry_date, group_id) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (id_token) DO UPDATE SET token_type = EXCLUDED.token_type, status = EXCLUDED.status,
               expiry_date = EXCLUDED.expiry_date, group_id = EXCLUDED.group_id""",
        id_token, token_type, status, expiry, group_id)


@dataclass
class DbServices:
    """``csms.ocpp.context.Services`` over PostgreSQL."""

    pool: asyncpg.Pool
    heartbeat_interval_s: int
    boot_retry_interval_s: int = 60
    free_vend: bool = False

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
