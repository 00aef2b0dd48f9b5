"""``csms simulate``: the command line of the fleet simulator."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import sys
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from csms.simulate.config import (
    Behaviour,
    FleetShape,
    LinkOptions,
    SimulationConfigError,
    parse_mix,
    parse_range,
    read_credentials,
    source_address_range,
)
from csms.simulate.procs import RunSpec, default_processes, run
from schemas.settings import Settings

logger = logging.getLogger("csms.simulate")

# A lab default so that `--register` and the run agree without typing a secret; pass
# --password (or a credentials file) for anything shared.
DEFAULT_PASSWORD = "simulated-charger-password"  # noqa: S105
# Our server admits 50 handshakes/s per source address by default: stay below that per address.
PER_ADDRESS_RATE_PER_S = 40.0
PORTS_PER_ADDRESS = 20_000

HELP = "run simulated OCPP 1.6J/2.0.1 chargers against an OCPP-J endpoint (ours or another)"


def add_simulate_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("simulate", help=HELP, description=HELP + ". Prints a JSON summary at the end.")
    g = p.add_argument_group("fleet")
    g.add_argument("--url", default="ws://127.0.0.1:9000/ocpp", help="OCPP-J base URL; chargers append /<id>")
    g.add_argument("--chargers", type=int, default=None,
                   help="number of chargers (default 10, or every id of --credentials-file)")
    g.add_argument("--mix", default="16=0.5,201=0.5", help="OCPP versions, e.g. 16=0.7,201=0.3")
    g.add_argument("--evses", default="1-4", help="EVSEs (1.6: connectors) per charger, LOW-HIGH within 1-4")
    g.add_argument("--dc-share", type=float, default=0.3, help="share of DC fast chargers (default 0.3)")
    g.add_argument("--id-prefix", default="SIM-", help="charge point ids are PREFIX00000, PREFIX00001, ...")
    g.add_argument("--seed", type=int, default=1, help="same seed, same fleet and schedule of events")
    g.add_argument("--password", help=f"Basic-auth password of every charger (default {DEFAULT_PASSWORD!r})")
    g.add_argument("--credentials-file", type=Path, help="ID,PASSWORD per line: these ids and passwords")
    g.add_argument("--no-auth", action="store_true", help="send no Basic-auth header")
    g.add_argument("--tokens", type=int, default=0, help="id tokens in the pool (default: chargers / 4)")
    g.add_argument("--locations", type=int, default=0, help="locations (default: chargers / 20)")
    b = p.add_argument_group("behaviour (seconds of charger time)")
    b.add_argument("--meter-interval-s", type=float, default=60.0)
    b.add_argument("--heartbeat-interval-s", type=float, default=0.0, help="0 = the interval given at boot")
    b.add_argument("--first-plug-in-s", default="0-600", help="first session this long after power-on")
    b.add_argument("--session-s", default="900-3600", help="how long a car stays (DC leaves at its target SoC)")
    b.add_argument("--idle-s", default="600-3600", help="gap between sessions on a connector")
    b.add_argument("--handling-s", default="5-30", help="plug-in to start, and stop to unplugged")
    b.add_argument("--fault-rate-per-h", type=float, default=0.02, help="faults per connector-hour")
    b.add_argument("--fault-s", default="60-900")
    b.add_argument("--offline-rate-per-h", type=float, default=0.05, help="offline periods per charger-hour")
    b.add_argument("--offline-s", default="30-300")
    n = p.add_argument_group("network")
    n.add_argument("--connect-rate-per-s", type=float, default=25.0,
                   help="connection attempts per second, whole fleet (default 25; see docs/simulator.md)")
    n.add_argument("--processes", type=int, default=0, help="worker processes (default: one per 10,000 chargers)")
    n.add_argument("--source-addresses", type=int, default=-1,
                   help="bind to this many local addresses from 127.0.0.2 (default: enough for the ports and "
                        f"{PER_ADDRESS_RATE_PER_S:.0f} connects/s per address on a loopback URL; 0 = let the OS "
                        "choose)")
    n.add_argument("--call-timeout-s", type=float, default=30.0)
    n.add_argument("--call-attempts", type=int, default=3, help="sends of a CALL before the link is dropped")
    n.add_argument("--open-timeout-s", type=float, default=30.0)
    n.add_argument("--backoff-min-s", type=float, default=1.0)
    n.add_argument("--backoff-max-s", type=float, default=120.0)
    n.add_argument("--backoff-random-range-s", type=float, default=5.0)
    n.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    r = p.add_argument_group("run")
    r.add_argument("--duration-s", type=float, default=60.0, help="stop after this long (default 60)")
    r.add_argument("--max-messages", type=int, default=0, help="stop after this many CALLs sent (0: no limit)")
    r.add_argument("--summary-file", type=Path, help="also write the JSON summary here")
    r.add_argument("--log-level", dest="log_level", default=None)
    reg = p.add_argument_group("registry (our central system)")
    reg.add_argument("--register", action="store_true",
                     help="first write locations, charge points and id tokens into our registry")
    reg.add_argument("--register-only", action="store_true", help="register, then exit without simulating")
    reg.add_argument("--resume-registers", action="store_true",
                     help="start every energy register at its last stored value in our database (repeated runs "
                          "of the same ids then never step a register back)")
    reg.add_argument("--database-url", dest="database_url", default=None,
                     help="registry database (env CSMS_DATABASE_URL); unset = the embedded one in --data-dir")
    reg.add_argument("--data-dir", dest="data_dir", default=None, help="embedded database directory (.csms)")


def _auto_source_addresses(url: str, chargers: int, rate: float) -> int:
    host = urlsplit(url).hostname or ""
    if not (host.startswith("127.") or host == "localhost"):
        return 0
    return max(math.ceil(chargers / PORTS_PER_ADDRESS), math.ceil(rate / PER_ADDRESS_RATE_PER_S))


def build_spec(args: argparse.Namespace, log_level: str) -> RunSpec:
    credentials: dict[str, str] = {}
    if args.credentials_file is not None:
        credentials = read_credentials(args.credentials_file.read_text("utf-8"))
    count = args.chargers if args.chargers is not None else 10
    ids: tuple[str, ...] = ()
    if credentials:
        ids = tuple(credentials)
        count = min(args.chargers, len(ids)) if args.chargers is not None else len(ids)
    evses = parse_range(args.evses, name="--evses")
    shape = FleetShape(count=count, mix=parse_mix(args.mix), evses=(int(evses[0]), int(evses[1])),
                       dc_share=args.dc_share, id_prefix=args.id_prefix, seed=args.seed, tokens=args.tokens,
                       locations=args.locations, ids=ids)
    behaviour = Behaviour(
        meter_interval_s=args.meter_interval_s, heartbeat_interval_s=args.heartbeat_interval_s,
        first_plug_in_s=parse_range(args.first_plug_in_s, name="--first-plug-in-s"),
        session_s=parse_range(args.session_s, name="--session-s"), idle_s=parse_range(args.idle_s, name="--idle-s"),
        handling_s=parse_range(args.handling_s, name="--handling-s"),
        fault_rate_per_h=args.fault_rate_per_h, fault_s=parse_range(args.fault_s, name="--fault-s"),
        offline_rate_per_h=args.offline_rate_per_h, offline_s=parse_range(args.offline_s, name="--offline-s"))
    n_addresses = args.source_addresses if args.source_addresses >= 0 else \
        _auto_source_addresses(args.url, count, args.connect_rate_per_s)
    options = LinkOptions(
        url=args.url, password=None if args.no_auth else (args.password or DEFAULT_PASSWORD),
        credentials={} if args.no_auth else credentials, open_timeout_s=args.open_timeout_s,
        call_timeout_s=args.call_timeout_s, call_attempts=args.call_attempts, backoff_min_s=args.backoff_min_s,
        backoff_max_s=args.backoff_max_s, backoff_random_range_s=args.backoff_random_range_s,
        connect_rate_per_s=args.connect_rate_per_s, source_addresses=source_address_range(n_addresses),
        deflate=args.deflate)
    if args.duration_s <= 0:
        raise SimulationConfigError("--duration-s must be positive")
    processes = args.processes or default_processes(count)
    if processes < 1 or processes > count:
        raise SimulationConfigError("--processes must be between 1 and the number of chargers")
    return RunSpec(shape=shape, behaviour=behaviour, options=options, duration_s=args.duration_s,
                   max_messages=max(0, args.max_messages), processes=processes, log_level=log_level)


async def _stored_registers(spec: RunSpec, settings: Settings) -> dict[str, dict[int, float]]:
    from csms.run.admin import registry_database
    from csms.simulate.fleet import charger_ids
    from csms.simulate.register import stored_registers

    async with registry_database(settings, apply_migrations=False, max_size=4) as pool:   # read-only
        return await stored_registers(pool, charger_ids(spec.shape))


async def _register(spec: RunSpec, settings: Settings) -> dict[str, int]:
    from csms.run.admin import registry_database
    from csms.simulate.register import register_fleet

    async with registry_database(settings, max_size=4) as pool:
        return await register_fleet(pool, spec.shape, password=spec.options.password,
                                    credentials=spec.options.credentials, public=True)


def run_simulate(args: argparse.Namespace, settings: Settings) -> int:
    try:
        spec = build_spec(args, settings.log_level)
    except (SimulationConfigError, OSError) as exc:
        print(f"csms simulate: {exc}", file=sys.stderr)
        return 2
    if args.register or args.register_only:
        try:
            done = asyncio.run(_register(spec, settings))
        except (OSError, asyncpg.PostgresError, ValueError) as exc:
            print(f"csms simulate: registration failed: {exc}", file=sys.stderr)
            return 1
        logger.info("registered %d locations, %d charge points, %d id tokens", done["locations"],
                    done["charge_points"], done["id_tokens"])
        if args.register_only:
            print(json.dumps({"registered": done}))
            return 0
    if args.resume_registers:
        try:
            registers = asyncio.run(_stored_registers(spec, settings))
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"csms simulate: cannot read the stored registers: {exc}", file=sys.stderr)
            return 1
        spec = dataclasses.replace(spec, initial_registers=registers)
        logger.info("continuing the energy registers of %d chargers", len(registers))
    logger.info("simulating %d chargers against %s for %.0f s (%d process(es), %d source address(es), "
                "%.0f connects/s)", spec.shape.count, spec.options.url, spec.duration_s, spec.processes,
                len(spec.options.source_addresses), spec.options.connect_rate_per_s)
    try:
        result = run(spec)
    except SimulationConfigError as exc:
        print(f"csms simulate: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if args.summary_file is not None:
        args.summary_file.write_text(text + "\n", "utf-8")
    return 0
