"""The registry: locations, charge points with their EVSEs/connectors, id tokens.

A charger's credentials and admission: ``csms.store.chargers``; the database side of the
handlers' ``Services``: ``csms.store.services``.

Registry rows are the central system's own state and are written here directly; the
data chargers send (status, samples, sessions) goes over the bus to ingest.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any, Final, Literal, TypeAlias, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from csms.ocpp.context import RegistrationStatus
from csms.security.credentials import generate_password, hash_password
from csms.security.secret import CredentialSecret
from csms.store import countries
from csms.store.chargers import cancel_rotation, writing_key

logger = logging.getLogger(__name__)

_ADMISSION_TO_STATUS: dict[str, RegistrationStatus] = {"accept": "Accepted", "pending": "Pending",
                                                       "reject": "Rejected"}

Db = asyncpg.Pool | asyncpg.Connection


class Unset(enum.Enum):
    """A field the caller did not give: an existing row keeps its value, a new row gets the default.

    Re-registering an existing id changes only what is given (``None`` given for a nullable field
    clears it); nothing is reset to a default by omission.
    """

    UNSET = "unset"


UNSET: Final = Unset.UNSET
_T = TypeVar("_T")
Given: TypeAlias = _T | Literal[Unset.UNSET]


class RegistryError(ValueError):
    """A registration that cannot be applied as given (the message says why)."""


class UnknownLocationError(RegistryError):
    pass


@dataclass(frozen=True, slots=True)
class ConnectorSpec:
    """One connector. Left UNSET: kept when the connector exists; on a new connector, or when its power
    type changes, standard and format follow the power type and the site's country
    (:func:`csms.countries.default_standard`), voltage and amperage the power type and rated power."""

    connector_id: int = 1
    standard: Given[str] = UNSET
    format: Given[str] = UNSET
    power_type: Given[str] = UNSET
    max_voltage_v: Given[int] = UNSET
    max_amperage_a: Given[int] = UNSET
    rated_power_w: Given[float] = UNSET


@dataclass(frozen=True, slots=True)
class EvseSpec:
    """One EVSE (a port). ``connectors`` UNSET: an existing EVSE keeps its connectors, a new one gets one
    default connector. ``operational_since`` as a ``date`` (or a datetime without offset) is station-local."""

    evse_id: int
    connectors: Given[tuple[ConnectorSpec, ...]] = UNSET
    emi3_id: Given[str | None] = UNSET
    federally_funded: Given[bool] = UNSET
    operational_since: Given[datetime | date | None] = UNSET


@dataclass(frozen=True, slots=True)
class ChargePointSpec:
    """A charge point. ``evses`` UNSET: an existing charger keeps its EVSEs, a new one gets EVSE 1; given
    EVSEs are added or updated, others are never removed (OCPI: an EVSE uid is never reused)."""

    id: str
    location_id: Given[str | None] = UNSET
    evses: Given[tuple[EvseSpec, ...]] = UNSET
    password: str | None = None          # None: keep the stored credential, or generate one (returned once)
    security_profile: Given[int] = UNSET
    admission: Given[str] = UNSET
    tolerant: Given[bool] = UNSET
    vendor: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class LocationSpec:
    """A location (station). ``name`` is required to create one. ``operational_since`` as a ``date`` (or a
    datetime without offset) is midnight/that time in the location's time zone."""

    id: str
    name: Given[str] = UNSET
    address: Given[str] = UNSET
    city: Given[str] = UNSET
    postal_code: Given[str | None] = UNSET
    country: Given[str] = UNSET
    latitude: Given[float | None] = UNSET
    longitude: Given[float | None] = UNSET
    time_zone: Given[str] = UNSET
    is_public: Given[bool] = UNSET
    opening_hours: Given[dict[str, Any] | None] = UNSET
    operational_since: Given[datetime | date | None] = UNSET




_Conn: TypeAlias = asyncpg.Connection | PoolConnectionProxy


@dataclass(frozen=True, slots=True)
class Saved:
    """What a registration did: created the row, or changed these fields of an existing one (maybe none)."""

    created: bool
    changed: tuple[str, ...] = ()


@asynccontextmanager
async def _locked(db: Db, key: str) -> AsyncIterator[_Conn]:
    """A transaction holding the advisory lock of one registry id, so that two concurrent registrations
    of the same new id cannot both take the "create" path (a row that does not exist yet cannot be
    locked with FOR UPDATE)."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _REGISTRY_LOCK_SPACE, key)
            yield conn
    else:
        async with db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _REGISTRY_LOCK_SPACE, key)
            yield db


# First key of the two-key advisory locks above ("csmr"); two-key and one-key locks never overlap.
_REGISTRY_LOCK_SPACE: Final = 0x63736D72


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _instant(value: datetime | date | None, time_zone: str | None) -> datetime | None:
    """A stored ``operational_since``: a date is midnight and a datetime without offset is that wall time,
    both in the station's zone, so that a port counted from 2025-01-01 is in the NEVI window that starts
    at 2025-01-01 00:00 station time (the windows are station-local, reporting.md §5.4)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        return datetime.combine(value, time(), tzinfo=_zone(time_zone))
    return value.replace(tzinfo=_zone(time_zone)) if value.tzinfo is None else value


_LOCATION_DEFAULTS: dict[str, Any] = {
    "name": None, "address": "", "city": "", "postal_code": None, "country": "USA", "latitude": None,
    "longitude": None, "time_zone": "UTC", "is_public": False, "opening_hours": None, "operational_since": None}


async def upsert_location(db: Db, spec: LocationSpec) -> Saved:
    """Create a location, or change the given fields of an existing one (UNSET fields are kept)."""
    given = {f: getattr(spec, f) for f in _LOCATION_DEFAULTS if getattr(spec, f) is not UNSET}
    if "country" in given and not countries.is_alpha3(given["country"]):
        raise RegistryError(f"country {given['country']!r} is not an ISO 3166-1 alpha-3 code (e.g. USA, IND, DEU)")
    async with _locked(db, f"location:{spec.id}") as conn:
        row = await conn.fetchrow(
            "SELECT name, address, city, postal_code, country, latitude, longitude, time_zone, is_public, "
            "opening_hours::text AS opening_hours, operational_since FROM locations WHERE id = $1", spec.id)
        if row is None and "name" not in given:
            raise RegistryError(f"no location {spec.id}: a name is required to create it")
        old = None if row is None else {**dict(row), "opening_hours": _unjson(row["opening_hours"])}
        new = {**(old or _LOCATION_DEFAULTS), **given}
        new["operational_since"] = _instant(new["operational_since"], new["time_zone"])
        hours = None if new["opening_hours"] is None else _json(new["opening_hours"])
        values = [new[f] for f in _LOCATION_DEFAULTS if f != "opening_hours"]
        if old is None:
            await conn.execute(
                """INSERT INTO locations (id, name, address, city, postal_code, country, latitude, longitude,
                                          time_zone, is_public, operational_since, opening_hours)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::text::jsonb)""",
                spec.id, *values, hours)
            return Saved(True, tuple(given))
        changed = tuple(f for f in _LOCATION_DEFAULTS if new[f] != old[f])
        if changed:
            await conn.execute(
                """UPDATE locations SET name = $2, address = $3, city = $4, postal_code = $5, country = $6,
                          latitude = $7, longitude = $8, time_zone = $9, is_public = $10, operational_since = $11,
                          opening_hours = $12::text::jsonb, last_updated = now()
                   WHERE id = $1""", spec.id, *values, hours)
        return Saved(False, changed)


def _json(value: Any) -> str:
    return json.dumps(value)


def _unjson(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _given(value: Given[_T], stored: _T) -> _T:
    return stored if value is UNSET else value


async def port_layout(db: Db, charge_point_id: str) -> dict[int, list[int]] | None:
    """The charge point's EVSE ids with their connector ids, or None if it is not registered."""
    rows = await db.fetch(
        """SELECT e.evse_id, c.connector_id FROM charge_points cp
           LEFT JOIN evses e ON e.charge_point_id = cp.id
           LEFT JOIN connectors c ON c.charge_point_id = e.charge_point_id AND c.evse_id = e.evse_id
           WHERE cp.id = $1 ORDER BY e.evse_id, c.connector_id""", charge_point_id)
    if not rows:
        return None
    layout: dict[int, list[int]] = {}
    for r in rows:
        if r["evse_id"] is not None:
            ids = layout.setdefault(r["evse_id"], [])
            if r["connector_id"] is not None:
                ids.append(r["connector_id"])
    return layout


async def add_charge_point(pool: asyncpg.Pool, spec: ChargePointSpec, *,
                           credentials: CredentialSecret | None = None) -> str | None:
    """Register a charge point, or change the given fields of an existing one (UNSET fields, and a password
    that is not given, are kept); return the generated password, if one was generated.

    A password is generated only when the charger has none and its profile (1 or 2) needs one; it is stored as
    HMAC-SHA-256 under ``credentials`` (required then). An operator's password is stored as Argon2id.
    """
    credential_hash = None if spec.password is None else await asyncio.to_thread(hash_password, spec.password)
    generated = None
    async with _locked(pool, f"charge_point:{spec.id}") as conn:
        row = await conn.fetchrow("SELECT location_id, credential_hash, security_profile, admission, tolerant, "
                                  "credential_origin FROM charge_points WHERE id = $1", spec.id)
        old = None if row is None else dict(row)
        location_id = _given(spec.location_id, old["location_id"] if old else None)
        country, zone = None, "UTC"
        if location_id is not None:
            site = await conn.fetchrow("SELECT country, time_zone FROM locations WHERE id = $1", location_id)
            if site is None:
                raise UnknownLocationError(f"unknown location {location_id}")
            country, zone = site["country"], site["time_zone"]
        new = {"location_id": location_id,
               "credential_hash": credential_hash or (old["credential_hash"] if old else None),
               "security_profile": _given(spec.security_profile, old["security_profile"] if old else 1),
               "admission": _given(spec.admission, old["admission"] if old else "accept"),
               "tolerant": _given(spec.tolerant, old["tolerant"] if old else False),
               "credential_origin": "operator" if credential_hash else (old["credential_origin"] if old else None)}
        if new["credential_hash"] is None and new["security_profile"] in (1, 2):
            if credentials is None:
                raise RegistryError("generating a charger password needs the credential secret "
                                    "(credential_secret / credential_secret_file); or give a password")
            # 240 random bits: HMAC under the server secret, no key stretching (csms.security.secret).
            key = await writing_key(conn, credentials)
            generated = generate_password()
            new["credential_hash"] = key.digest(spec.id, generated)
            new["credential_origin"] = "generated"
        if old is None:
            await conn.execute(
                """INSERT INTO charge_points (id, location_id, credential_hash, security_profile, admission,
                                              tolerant, credential_origin, vendor, model, registration_status)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'Pending')""",
                spec.id, *new.values(), spec.vendor, spec.model)
        elif new != old:
            await conn.execute(
                """UPDATE charge_points SET location_id = $2, credential_hash = $3, security_profile = $4,
                          admission = $5, tolerant = $6, credential_origin = $7, updated_at = now()
                   WHERE id = $1""",
                spec.id, *new.values())
            if new["credential_hash"] != old["credential_hash"]:   # a new password ends a key rotation
                await cancel_rotation(conn, spec.id)
        evses = _given(spec.evses, (EvseSpec(1),) if old is None else ())
        for evse in evses:
            await _save_evse(conn, spec.id, evse, country=country, time_zone=zone)
    return generated


async def _save_evse(conn: _Conn, cp_id: str, evse: EvseSpec, *, country: str | None,
                     time_zone: str) -> None:
    row = await conn.fetchrow("SELECT emi3_id, federally_funded, operational_since FROM evses "
                              "WHERE charge_point_id = $1 AND evse_id = $2", cp_id, evse.evse_id)
    old = None if row is None else dict(row)
    base = old or {"emi3_id": None, "federally_funded": False, "operational_since": None}
    new = {"emi3_id": _given(evse.emi3_id, base["emi3_id"]),
           "federally_funded": _given(evse.federally_funded, base["federally_funded"]),
           "operational_since": _instant(_given(evse.operational_since, base["operational_since"]), time_zone)}
    if old is None:
        await conn.execute(
            """INSERT INTO evses (charge_point_id, evse_id, uid, emi3_id, federally_funded, operational_since)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            cp_id, evse.evse_id, f"{cp_id}*{evse.evse_id}"[:36], *new.values())
    elif new != old:
        await conn.execute(
            """UPDATE evses SET emi3_id = $3, federally_funded = $4, operational_since = $5, last_updated = now()
               WHERE charge_point_id = $1 AND evse_id = $2""", cp_id, evse.evse_id, *new.values())
    for connector in _given(evse.connectors, (ConnectorSpec(),) if old is None else ()):
        await _save_connector(conn, cp_id, evse.evse_id, connector, country=country)


def _default_voltage_v(power_type: str) -> int:
    return 1000 if power_type == "DC" else 400


def _default_amperage_a(power_type: str, rated_power_w: float) -> int:
    return max(1, round(rated_power_w / (1000 if power_type == "DC" else 690)))


async def _save_connector(conn: _Conn, cp_id: str, evse_id: int, spec: ConnectorSpec, *,
                          country: str | None) -> None:
    row = await conn.fetchrow(
        "SELECT standard, format, power_type, max_voltage_v, max_amperage_a, rated_power_w FROM connectors "
        "WHERE charge_point_id = $1 AND evse_id = $2 AND connector_id = $3", cp_id, evse_id, spec.connector_id)
    old = None if row is None else dict(row)
    power_type = _given(spec.power_type, old["power_type"] if old else "AC_3_PHASE")
    rated = _given(spec.rated_power_w, old["rated_power_w"] if old else 22000.0)
    # What the operator did not give follows what it depends on when that is new or changes: the
    # standard the power type and the site's country (a DC charger never defaults to a Type 2 socket),
    # the format the standard, voltage and amperage the power type and rated power.
    kept = old if old is not None and old["power_type"] == power_type else None
    standard = _given(spec.standard, kept["standard"] if kept else countries.default_standard(power_type, country))
    fmt = _given(spec.format, old["format"] if old and old["standard"] == standard
                 else countries.default_format(standard))
    voltage = _given(spec.max_voltage_v, kept["max_voltage_v"] if kept else _default_voltage_v(power_type))
    amperage = _given(spec.max_amperage_a, kept["max_amperage_a"] if kept and kept["rated_power_w"] == rated
                      else _default_amperage_a(power_type, rated))
    new = {"standard": standard, "format": fmt, "power_type": power_type, "max_voltage_v": voltage,
           "max_amperage_a": amperage, "rated_power_w": rated}
    if old is None:
        await conn.execute(
            """INSERT INTO connectors (charge_point_id, evse_id, connector_id, standard, format, power_type,
                                       max_voltage_v, max_amperage_a, rated_power_w)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""", cp_id, evse_id, spec.connector_id, *new.values())
    elif new != old:
        await conn.execute(
            """UPDATE connectors SET standard = $4, format = $5, power_type = $6, max_voltage_v = $7,
                      max_amperage_a = $8, rated_power_w = $9, last_updated = now()
               WHERE charge_point_id = $1 AND evse_id = $2 AND connector_id = $3""",
            cp_id, evse_id, spec.connector_id, *new.values())


async def add_id_token(db: Db, id_token: str, *, status: Given[str] = UNSET, token_type: Given[str] = UNSET,
                       expiry: Given[datetime | None] = UNSET, group_id: Given[str | None] = UNSET) -> Saved:
    """Add an id token (Accepted, ISO14443 by default), or change the given fields of an existing one."""
    given = {k: v for k, v in (("status", status), ("token_type", token_type), ("expiry_date", expiry),
                               ("group_id", group_id)) if v is not UNSET}
    defaults = {"status": "Accepted", "token_type": "ISO14443", "expiry_date": None, "group_id": None}
    async with _locked(db, f"id_token:{id_token}") as conn:
        row = await conn.fetchrow("SELECT status, token_type, expiry_date, group_id FROM id_tokens "
                                  "WHERE id_token = $1", id_token)
        old = None if row is None else dict(row)
        new = {**(old or defaults), **given}
        if old is None:
            await conn.execute("INSERT INTO id_tokens (id_token, status, token_type, expiry_date, group_id) "
                               "VALUES ($1, $2, $3, $4, $5)", id_token, *new.values())
            return Saved(True, tuple(given))
        changed = tuple(k for k in new if new[k] != old[k])
        if changed:
            await conn.execute("UPDATE id_tokens SET status = $2, token_type = $3, expiry_date = $4, group_id = $5 "
                               "WHERE id_token = $1", id_token, *new.values())
        return Saved(False, changed)


