"""``csms charge-points|locations|id-tokens …``: registry administration from the shell.

Works against ``--database-url``, or the embedded database in ``--data-dir`` (started
for the duration of the command if ``csms run`` is not running).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg

from csms.app import migrate
from csms.embedded_pg import EmbeddedPostgres
from csms.registry import (
    ChargePointSpec,
    ConnectorSpec,
    EvseSpec,
    LocationSpec,
    add_charge_point,
    add_id_token,
    set_admission,
    set_password,
    upsert_location,
)
from schemas.settings import Settings, add_setting_flags

POWER_TYPES = ("AC_1_PHASE", "AC_2_PHASE", "AC_2_PHASE_SPLIT", "AC_3_PHASE", "DC")


def add_admin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cp = sub.add_parser("charge-points", help="register and manage charge points")
    cp_sub = cp.add_subparsers(dest="action", required=True)
    add = cp_sub.add_parser("add", help="register a charge point (or update it) with its EVSEs and credentials")
    add.add_argument("id")
    add.add_argument("--location", dest="location_id")
    add.add_argument("--evses", type=int, default=1, help="number of EVSEs (ports), numbered from 1")
    add.add_argument("--connectors-per-evse", type=int, default=1)
    add.add_argument("--rated-power-w", type=float, default=22000.0)
    add.add_argument("--power-type", choices=POWER_TYPES, default="AC_3_PHASE")
    add.add_argument("--standard", default="IEC_62196_T2", help="OCPI connector standard")
    add.add_argument("--cable", action="store_true", help="connectors have an attached cable")
    add.add_argument("--password", help="Basic-auth password (16–64 characters); generated when omitted")
    add.add_argument("--security-profile", type=int, choices=(0, 1, 2, 3), default=1)
    add.add_argument("--admission", choices=("accept", "pending", "reject"), default="accept")
    add.add_argument("--tolerant", action="store_true", help="tolerate (and flag) schema violations")
    add.add_argument("--federally-funded", action="store_true")
    add_setting_flags(add, role="admin")
    pw = cp_sub.add_parser("set-password", help="replace a charge point's Basic-auth password")
    pw.add_argument("id")
    pw.add_argument("--password", required=True)
    add_setting_flags(pw, role="admin")
    for verb in ("accept", "reject", "pending"):
        p = cp_sub.add_parser(verb, help=f"set the BootNotification answer to {verb}")
        p.add_argument("id")
        add_setting_flags(p, role="admin")
    ls = cp_sub.add_parser("list", help="list registered charge points")
    add_setting_flags(ls, role="admin")

    loc = sub.add_parser("locations", help="register locations (stations)")
    loc_sub = loc.add_subparsers(dest="action", required=True)
    ladd = loc_sub.add_parser("add", help="add or update a location")
    ladd.add_argument("id")
    ladd.add_argument("--name", required=True)
    ladd.add_argument("--address", default="")
    ladd.add_argument("--city", default="")
    ladd.add_argument("--postal-code")
    ladd.add_argument("--country", default="USA", help="ISO 3166-1 alpha-3")
    ladd.add_argument("--latitude", type=float)
    ladd.add_argument("--longitude", type=float)
    ladd.add_argument("--time-zone", default="UTC", help="IANA time zone")
    ladd.add_argument("--public", action="store_true", help="publish in the open-data feed")
    add_setting_flags(ladd, role="admin")

    tok = sub.add_parser("id-tokens", help="manage id tokens (RFID cards, app users)")
    tok_sub = tok.add_subparsers(dest="action", required=True)
    tadd = tok_sub.add_parser("add", help="add or update an id token")
    tadd.add_argument("token")
    tadd.add_argument("--status", choices=("Accepted", "Blocked", "Expired", "Invalid"), default="Accepted")
    tadd.add_argument("--type", dest="token_type", default="ISO14443")
    tadd.add_argument("--expiry", help="ISO 8601 expiry date")
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
        if args.command == "charge-points":
            return await _charge_points(args, pool)
        if args.command == "locations":
            await upsert_location(pool, LocationSpec(
                id=args.id, name=args.name, address=args.address, city=args.city, postal_code=args.postal_code,
                country=args.country, latitude=args.latitude, longitude=args.longitude, time_zone=args.time_zone,
                is_public=args.public))
            print(f"location {args.id} saved")
            return 0
        expiry = datetime.fromisoformat(args.expiry) if args.expiry else None
        await add_id_token(pool, args.token, status=args.status, token_type=args.token_type, expiry=expiry)
        print(f"id token {args.token} saved ({args.status})")
        return 0


async def _charge_points(args: argparse.Namespace, pool: asyncpg.Pool) -> int:
    if args.action == "add":
        connectors = tuple(
            ConnectorSpec(connector_id=i + 1, standard=args.standard, format="CABLE" if args.cable else "SOCKET",
                          power_type=args.power_type, rated_power_w=args.rated_power_w,
                          max_voltage_v=1000 if args.power_type == "DC" else 400,
                          max_amperage_a=max(1, int(args.rated_power_w / (1000 if args.power_type == "DC" else 690))))
            for i in range(args.connectors_per_evse))
        evses = tuple(EvseSpec(evse_id=n + 1, connectors=connectors, federally_funded=args.federally_funded)
                      for n in range(args.evses))
        generated = await add_charge_point(pool, ChargePointSpec(
            id=args.id, location_id=args.location_id, evses=evses, password=args.password,
            security_profile=args.security_profile, admission=args.admission, tolerant=args.tolerant))
        print(f"charge point {args.id} registered with {args.evses} EVSE(s)")
        if generated:
            # Shown once; only its Argon2id hash is stored.
            print(f"password: {generated}")
        return 0
    if args.action == "set-password":
        if not await set_password(pool, args.id, args.password):
            print(f"csms: no charge point {args.id}", file=sys.stderr)
            return 1
        print(f"password of {args.id} replaced")
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
