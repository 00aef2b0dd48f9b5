"""Write the simulated fleet into our registry, so that our central system admits it.

Locations (coordinates, IANA time zones), charge points with EVSEs and connectors, and the
id-token pool go through ``csms.store.registry``. One cost needs care: ``add_charge_point`` hashes
each password with Argon2id (~30 ms of CPU), 5 minutes for 10,000 chargers. When the whole
fleet shares one password it is hashed once: the charge points are written without a
credential by the registry code, then given that one hash in a single UPDATE (before any
simulated charger connects). Per-charger passwords (a credentials file) are hashed one by one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from csms.security.credentials import hash_password
from csms.simulate.config import FleetShape
from csms.simulate.fleet import ChargerProfile, plan_fleet, plan_locations, token_pool
from csms.store.registry import (
    ChargePointSpec,
    ConnectorSpec,
    EvseSpec,
    LocationSpec,
    add_charge_point,
    add_id_token,
    upsert_location,
)

logger = logging.getLogger(__name__)

CONCURRENCY = 4


def connector_spec(profile: ChargerProfile) -> ConnectorSpec:
    if profile.dc:
        return ConnectorSpec(standard="IEC_62196_T2_COMBO", format="CABLE", power_type="DC", max_voltage_v=1000,
                             max_amperage_a=max(1, int(profile.rated_power_w / 400)),
                             rated_power_w=profile.rated_power_w)
    three_phase = profile.rated_power_w > 7_400
    return ConnectorSpec(standard="IEC_62196_T2", format="SOCKET",
                         power_type="AC_3_PHASE" if three_phase else "AC_1_PHASE",
                         max_voltage_v=400 if three_phase else 230,
                         max_amperage_a=max(1, round(profile.rated_power_w / (690 if three_phase else 230))),
                         rated_power_w=profile.rated_power_w)


def charge_point_spec(profile: ChargerProfile, *, password: str | None, security_profile: int) -> ChargePointSpec:
    evses = tuple(EvseSpec(evse_id=n, connectors=(connector_spec(profile),)) for n in range(1, profile.evses + 1))
    return ChargePointSpec(id=profile.id, location_id=profile.location_id, evses=evses, password=password,
                           security_profile=security_profile, admission="accept")


async def _in_parallel(items: Sequence[Any], work: Callable[[Any], Awaitable[None]]) -> None:
    queue = list(reversed(items))

    async def worker() -> None:
        while queue:
            await work(queue.pop())

    async with asyncio.TaskGroup() as tg:
        for n in range(CONCURRENCY):
            tg.create_task(worker(), name=f"sim-register-{n}")


async def register_fleet(pool: asyncpg.Pool, shape: FleetShape, *, password: str | None,
                         credentials: dict[str, str] | None = None, public: bool = True,
                         operational_since: datetime | None = None) -> dict[str, int]:
    """Upsert the fleet's locations, charge points (admission accept) and id tokens."""
    credentials = credentials or {}
    for loc in plan_locations(shape):
        await upsert_location(pool, LocationSpec(
            id=loc.id, name=loc.name, address=f"{loc.name} charging hub", city=loc.city, country=loc.country,
            latitude=loc.latitude, longitude=loc.longitude, time_zone=loc.time_zone, is_public=public,
            operational_since=operational_since))
    profiles = plan_fleet(shape)
    shared = [p for p in profiles if p.id not in credentials]
    own = [p for p in profiles if p.id in credentials]

    async def add_shared(p: ChargerProfile) -> None:
        await add_charge_point(pool, charge_point_spec(p, password=None, security_profile=0))

    async def add_own(p: ChargerProfile) -> None:
        await add_charge_point(pool, charge_point_spec(p, password=credentials[p.id], security_profile=1))

    await _in_parallel(shared, add_shared)
    if shared:
        if password is not None:
            digest = await asyncio.to_thread(hash_password, password)
            await pool.execute("UPDATE charge_points SET credential_hash = $1, security_profile = 1, "
                               "updated_at = now() WHERE id = ANY($2::text[])", digest, [p.id for p in shared])
        else:
            logger.warning("no password given: %d simulated chargers are registered without credentials "
                           "(only a --security-profile 0 endpoint admits them)", len(shared))
    if own:
        logger.info("hashing %d per-charger passwords (Argon2id, ~30 ms each)", len(own))
    await _in_parallel(own, add_own)
    tokens = token_pool(shape)

    async def add_token(token: str) -> None:
        await add_id_token(pool, token, status="Accepted")

    await _in_parallel(tokens, add_token)
    return {"locations": shape.location_count, "charge_points": len(profiles), "id_tokens": len(tokens)}


async def stored_registers(pool: asyncpg.Pool, ids: list[str]) -> dict[str, dict[int, float]]:
    """The last energy register of every demo EVSE, so that a restarted demo continues from it."""
    rows = await pool.fetch(
        """SELECT charge_point_id, evse_id, max(wh) AS wh FROM (
               SELECT charge_point_id, evse_id, max(value) AS wh FROM meter_samples
               WHERE charge_point_id = ANY($1::text[]) AND measurand = 'Energy.Active.Import.Register'
               GROUP BY 1, 2
               UNION ALL
               SELECT charge_point_id, evse_id, max(meter_stop_wh)::float8 FROM transactions
               WHERE charge_point_id = ANY($1::text[]) AND evse_id IS NOT NULL GROUP BY 1, 2) r
           GROUP BY 1, 2""", ids)
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        if r["wh"] is not None:
            out.setdefault(r["charge_point_id"], {})[int(r["evse_id"])] = float(r["wh"])
    return out
