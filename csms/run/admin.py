"""``csms charge-points|locations|id-tokens …``: registry administration from the shell.

Works against ``--database-url``, or the embedded database in ``--data-dir`` (started
for the duration of the command if ``csms run`` is not running).

``add`` on an id that exists changes only the fields given on the command line; every other
field keeps its stored value (nothing is reset to a default by omission, see ``csms.store.registry``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import zoneinfo
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime

import asyncpg

from csms.run.central import migrate
from csms.run.compose import credential_secret
from csms.run.embedded_pg import EmbeddedPostgres
from csms.security.credentials import SLOW_HASH_WARNING
from csms.security.secret import CredentialSecret
from csms.store import countries
from csms.store.chargers import set_admission, set_generated_password, set_password
from csms.store.registry import (
    UNSET,
    ChargePointSpec,
    ConnectorSpec,
    EvseSpec,
    Given,
    LocationSpec,
    add_charge_point,
    add_id_token,
    port_layout,
    upsert_location,
)
from schemas.settings import Settings, add_setting_flags

POWER_TYPES = ("AC_1_PHASE", "AC_2_PHASE", "AC_2_PHASE_SPLIT", "AC_3_PHASE", "DC")
_BOOL = argparse.BooleanOptionalAction


def _moment(text: str) -> date | datetime | None:
    """``--operational-since``: a date (station-local midnight), an ISO 8601 time (station-local
    without an offset), or ``none`` to clear it."""
    if text.strip().lower() == "none":
        return None
    try:
        if len(text.strip()) == 10:
            return date.fromisoformat(text.strip())
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (2025-01-31), an ISO 8601 time or 'none'") from None


def _expiry(text: str) -> datetime | None:
    if text.strip().lower() == "none":
        return None
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time or 'none'") from None


def _country(text: str) -> str:
    code = text.strip().upper()
    if not countries.is_alpha3(code):
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 3166-1 alpha-3 country code (e.g. USA, IND, DEU)")
    return code


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _time_zone(text: str) -> str:
    # Reports cut days and months in this zone: an unknown name must not get in.
    if text not in _zones():
        raise argparse.ArgumentTypeError(f"unknown IANA time zone {text!r} (e.g. Asia/Kolkata)")
    return text


def add_admin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cp = sub.add_parser("charge-points", help="register and manage charge points")
    cp_sub = cp.add_subparsers(dest="action", required=True)
    add = cp_sub.add_parser(
        "add", help="register a charge point with its EVSEs and credentials, or change the options given",
        description="A new charge point gets the defaults below; for an existing one only the options given "
                    "change. Port options (--operational-since, --federally-funded) and connector options apply "
                    "to the EVSEs named by --evses/--evse-id, or to all of the charger's EVSEs.")
    add.add_argument("id")
    add.add_argument("--location", dest="location_id", default=UNSET)
    ports = add.add_mutually_exclusive_group()
    ports.add_argument("--evses", type=int, help="EVSEs (ports) 1..N, added where missing (new charger: 1)")
    ports.add_argument("--evse-id", type=int, action="append", help="only this EVSE (repeatable)")
    add.add_argument("--connectors-per-evse", type=int, help="connectors 1..N of each EVSE (new EVSE: 1)")
    add.add_argument("--rated-power-w", type=float, default=UNSET, help="default 22000")
    add.add_argument("--power-type", choices=POWER_TYPES, default=UNSET, help="default AC_3_PHASE")
    add.add_argument("--standard", default=UNSET,
                     help="OCPI connector standard; default by power type and the location's country: DC "
                          "IEC_62196_T1_COMBO (CCS1) in USA/CAN/MEX/KOR, CHADEMO in JPN, GBT_DC in CHN, "
                          "IEC_62196_T2_COMBO (CCS2) elsewhere; AC IEC_62196_T1 there, GBT_AC in CHN, "
                          "IEC_62196_T2 elsewhere")
    add.add_argument("--format", choices=("SOCKET", "CABLE"), default=UNSET,
                     help="default CABLE for DC and Type 1, SOCKET for Type 2 / GB/T AC")
    add.add_argument("--cable", dest="format", action="store_const", const="CABLE", help="the same as --format CABLE")
    add.add_argument("--password", help="Basic-auth password (16–64 characters), stored as Argon2id (slow at "
                                        "every first login); generated when the charger has none (new charger, "
                                        "profile 1 or 2): 240 bits, stored as HMAC-SHA-256 under the "
                                        "credential secret")
    add.add_argument("--security-profile", type=int, choices=(0, 1, 2, 3), default=UNSET, help="default 1")
    add.add_argument("--admission", choices=("accept", "pending", "reject"), default=UNSET, help="default accept")
    add.add_argument("--tolerant", action=_BOOL, default=UNSET, help="tolerate (and flag) schema violations")
    add.add_argument("--federally-funded", action=_BOOL, default=UNSET)
    add.add_argument("--operational-since", type=_moment, default=UNSET,
                     help="when the ports entered service (NEVI counts uptime from 12 months on): a date "
                          "(midnight in the location's time zone), an ISO 8601 time, or 'none'")
    add_setting_flags(add, role="admin")
    pw = cp_sub.add_parser("set-password", help="replace a charge point's Basic-auth password")
    pw.add_argument("id")
    new_pw = pw.add_mutually_exclusive_group(required=True)
    new_pw.add_argument("--password", help="the operator's password (Argon2id)")
    new_pw.add_argument("--generate", action="store_true",
                        help="generate one (printed once; HMAC-SHA-256 under the credential secret)")
    add_setting_flags(pw, role="admin")
    for verb in ("accept", "reject", "pending"):
        p = cp_sub.add_parser(verb, help=f"set the BootNotification answer to {verb}")
        p.add_argument("id")
        add_setting_flags(p, role="admin")
    ls = cp_sub.add_parser("list", help="list registered charge points")
    add_setting_flags(ls, role="admin")

    loc = sub.add_parser("locations", help="register locations (stations)")
    loc_sub = loc.add_subparsers(dest="action", required=True)
    ladd = loc_sub.add_parser("add", help="add a location, or change the options given of an existing one")
    ladd.add_argument("id")
    ladd.add_argument("--name", default=UNSET, help="required for a new location")
    ladd.add_argument("--address", default=UNSET)
    ladd.add_argument("--city", default=UNSET)
    ladd.add_argument("--postal-code", default=UNSET)
    ladd.add_argument("--country", type=_country, default=UNSET, help="ISO 3166-1 alpha-3 (default USA)")
    ladd.add_argument("--latitude", type=float, default=UNSET)
    ladd.add_argument("--longitude", type=float, default=UNSET)
    ladd.add_argument("--time-zone", type=_time_zone, default=UNSET, help="IANA time zone (default UTC)")
    ladd.add_argument("--public", dest="is_public", action=_BOOL, default=UNSET,
                      help="publish in the open-data feed (default no)")
    ladd.add_argument("--operational-since", type=_moment, default=UNSET,
                      help="when the station entered service, for ports without their own: a date (midnight "
                           "in the location's time zone), an ISO 8601 time, or 'none'")
    add_setting_flags(ladd, role="admin")

    tok = sub.add_parser("id-tokens", help="manage id tokens (RFID cards, app users)")
    tok_sub = tok.add_subparsers(dest="action", required=True)
    tadd = tok_sub.add_parser("add", help="add an id token, or change the options given of an existing one")
    tadd.add_argument("token")
    tadd.add_argument("--status", choices=("Accepted", "Blocked", "Expired", "Invalid"), default=UNSET,
                      help="default Accepted")
    tadd.add_argument("--type", dest="token_type", default=UNSET, help="default ISO14443")
    tadd.add_argument("--expiry", type=_expiry, default=UNSET, help="ISO 8601 expiry time, or 'none'")
    add_setting_flags(tadd, role="admin")


ADMIN_COMMANDS = ("charge-points", "locations", "id-tokens")


@asynccontextmanager
async def registry_database(settings: Settings, *, apply_migrations: bool = True,
                            max_size: int = 2) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the configured database, or on the embedded one in ``--data-dir`` (started
    for the command and stopped after it). Used by the registry commands and ``csms simulate``."""
    pg: EmbeddedPostgres | None = None
    url = settings.database_url
    if url is None:
        pg = EmbeddedPostgres(data_dir=settings.data_dir, port=settings.embedded_pg_port)
        url = (await asyncio.to_thread(pg.start)).url()
    try:
        if apply_migrations:
            await migrate(url, timeout_s=settings.db_connect_timeout_s)
        pool = await asyncpg.create_pool(url, min_size=1, max_size=max_size)
        try:
            yield pool
        finally:
            await pool.close()
    finally:
        if pg is not None:
            await asyncio.to_thread(pg.stop)


async def run_admin(args: argparse.Namespace, settings: Settings) -> int:
    async with registry_database(settings) as pool:
        try:
            if args.command == "charge-points":
                return await _charge_points(args, pool, credential_secret(settings))
            if args.command == "locations":
                return await _add_location(args, pool)
            saved = await add_id_token(pool, args.token, status=args.status, token_type=args.token_type,
                                       expiry=args.expiry)
        except (ValueError, asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            # RegistryError, a password outside the rules, or a value the database refuses (a latitude
            # beyond ±90, a date out of range): a message, not a traceback.
            print(f"csms: {exc}", file=sys.stderr)
            return 1
        print(f"id token {args.token} {_outcome(saved.created, saved.changed)}")
        return 0


def _outcome(created: bool, changed: tuple[str, ...]) -> str:
    if created:
        return "created"
    return f"updated: {', '.join(changed)}" if changed else "unchanged"


async def _add_location(args: argparse.Namespace, pool: asyncpg.Pool) -> int:
    saved = await upsert_location(pool, LocationSpec(
        id=args.id, name=args.name, address=args.address, city=args.city, postal_code=args.postal_code,
        country=args.country, latitude=args.latitude, longitude=args.longitude, time_zone=args.time_zone,
        is_public=args.is_public, operational_since=args.operational_since))
    print(f"location {args.id} {_outcome(saved.created, saved.changed)}")
    return 0


async def _add_charge_point(args: argparse.Namespace, pool: asyncpg.Pool, secret: CredentialSecret) -> int:
    layout = await port_layout(pool, args.id)
    connector_given = any(v is not UNSET for v in (args.standard, args.format, args.power_type, args.rated_power_w))
    port_given = args.operational_since is not UNSET or args.federally_funded is not UNSET
    if args.evses is not None:
        evse_ids: list[int] = list(range(1, args.evses + 1))
    elif args.evse_id:
        evse_ids = sorted(set(args.evse_id))
    elif layout is None:
        evse_ids = [1]
    elif connector_given or port_given or args.connectors_per_evse is not None:
        evse_ids = sorted(layout)          # an existing charger: the options apply to all its EVSEs
    else:
        evse_ids = []
    evses: list[EvseSpec] = []
    for evse_id in evse_ids:
        existing = None if layout is None else layout.get(evse_id)
        connector_ids: list[int] | None
        if args.connectors_per_evse is not None:
            connector_ids = list(range(1, args.connectors_per_evse + 1))
        elif existing is None:
            connector_ids = [1]
        elif connector_given:
            connector_ids = existing or [1]
        else:
            connector_ids = None           # the EVSE keeps its connectors as they are
        connectors: Given[tuple[ConnectorSpec, ...]] = UNSET if connector_ids is None else tuple(
            ConnectorSpec(connector_id=i, standard=args.standard, format=args.format, power_type=args.power_type,
                          rated_power_w=args.rated_power_w) for i in connector_ids)
        evses.append(EvseSpec(evse_id=evse_id, connectors=connectors, federally_funded=args.federally_funded,
                              operational_since=args.operational_since))
    generated = await add_charge_point(pool, ChargePointSpec(
        id=args.id, location_id=args.location_id, evses=tuple(evses) if evses else UNSET, password=args.password,
        security_profile=args.security_profile, admission=args.admission, tolerant=args.tolerant),
        credentials=secret)
    if layout is None:
        print(f"charge point {args.id} registered with {len(evses)} EVSE(s)")
    else:
        print(f"charge point {args.id} updated ({len(evses)} EVSE(s) touched; options not given are unchanged)")
    if generated:
        # Shown once; only its HMAC is stored.
        print(f"password: {generated}")
    if args.password is not None:
        print(f"csms: warning: {SLOW_HASH_WARNING}", file=sys.stderr)
    return 0


async def _charge_points(args: argparse.Namespace, pool: asyncpg.Pool, secret: CredentialSecret) -> int:
    if args.action == "add":
        return await _add_charge_point(args, pool, secret)
    if args.action == "set-password":
        generated: str | None = None
        if args.generate:
            generated = await set_generated_password(pool, args.id, secret)
            found = generated is not None
        else:
            found = await set_password(pool, args.id, args.password)
        if not found:
            print(f"csms: no charge point {args.id}", file=sys.stderr)
            return 1
        print(f"password of {args.id} replaced")
        if generated is not None:
            print(f"password: {generated}")   # shown once; only its HMAC is stored
        else:
            print(f"csms: warning: {SLOW_HASH_WARNING}", file=sys.stderr)
        return 0
    if args.action in ("accept", "reject", "pending"):
        if not await set_admission(pool, args.id, args.action):
            print(f"csms: no charge point {args.id}", file=sys.stderr)
            return 1
        print(f"{args.id}: next BootNotification is answered {args.action}")
        return 0
    rows = await pool.fetch("SELECT id, location_id, ocpp_version, admission, registration_status, last_boot_at "
                            "FROM charge_points ORDER BY id")
    for r in rows:
        print(json.dumps({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in dict(r).items()}))
    return 0
