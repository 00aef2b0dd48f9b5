"""The deterministic fleet plan: which chargers, where, with what hardware.

``plan_fleet`` and ``plan_locations`` depend only on the ``FleetShape`` (seed included), so the
simulator and ``--register`` (possibly run separately) agree on every charger.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from csms.simulate.config import FleetShape

# AC: single-phase 32 A, three-phase 16 A and 32 A; DC: common fast-charger classes.
AC_POWERS_W = (7_400.0, 11_000.0, 22_000.0)
DC_POWERS_W = (50_000.0, 150_000.0, 180_000.0)


@dataclass(frozen=True, slots=True)
class City:
    name: str
    city: str
    country: str       # ISO 3166-1 alpha-3
    latitude: float
    longitude: float
    time_zone: str     # IANA


# The first three are the demo's sites; different UTC offsets (incl. a half-hour one).
CITIES = (
    City("Bengaluru Tech Park", "Bengaluru", "IND", 12.9716, 77.5946, "Asia/Kolkata"),
    City("Los Angeles Arts District", "Los Angeles", "USA", 34.0407, -118.2353, "America/Los_Angeles"),
    City("Berlin Mitte", "Berlin", "DEU", 52.5200, 13.4050, "Europe/Berlin"),
    City("London Docklands", "London", "GBR", 51.5055, -0.0235, "Europe/London"),
    City("New York Hudson Yards", "New York", "USA", 40.7539, -74.0021, "America/New_York"),
    City("Chicago Loop", "Chicago", "USA", 41.8837, -87.6325, "America/Chicago"),
    City("Denver Union Station", "Denver", "USA", 39.7527, -105.0002, "America/Denver"),
    City("Mumbai Bandra Kurla", "Mumbai", "IND", 19.0674, 72.8675, "Asia/Kolkata"),
    City("Amsterdam Zuidas", "Amsterdam", "NLD", 52.3380, 4.8720, "Europe/Amsterdam"),
    City("Oslo Bjørvika", "Oslo", "NOR", 59.9075, 10.7600, "Europe/Oslo"),
    City("Sydney Barangaroo", "Sydney", "AUS", -33.8611, 151.2010, "Australia/Sydney"),
    City("Tokyo Shinagawa", "Tokyo", "JPN", 35.6285, 139.7387, "Asia/Tokyo"),
)


@dataclass(frozen=True, slots=True)
class LocationPlan:
    id: str
    name: str
    city: str
    country: str
    latitude: float
    longitude: float
    time_zone: str


@dataclass(frozen=True, slots=True)
class ChargerProfile:
    index: int               # position in the fleet, 0-based
    id: str
    version: str             # "1.6" or "2.0.1"
    evses: int               # 1.6: connectors 1..n; 2.0.1: EVSEs 1..n with connector 1 each
    dc: bool
    rated_power_w: float     # per EVSE
    location_id: str
    vendor: str
    model: str
    serial_number: str
    firmware_version: str


def _rng(shape: FleetShape, *parts: object) -> random.Random:
    # A string seed is hashed with SHA-512 by random.seed: stable across runs and processes.
    return random.Random(":".join(str(p) for p in (shape.seed, *parts)))  # noqa: S311 - simulation, not secrets


def location_id(shape: FleetShape, k: int) -> str:
    return f"{shape.id_prefix}LOC-{k + 1:03d}"[:36]


def plan_locations(shape: FleetShape) -> list[LocationPlan]:
    out = []
    for k in range(shape.location_count):
        city = CITIES[k % len(CITIES)]
        rng = _rng(shape, "location", k)
        lap = k // len(CITIES)
        name = city.name if lap == 0 else f"{city.name} {lap + 1}"
        # Sites of the same city a few kilometres apart.
        lat = city.latitude if lap == 0 else city.latitude + rng.uniform(-0.05, 0.05)
        lon = city.longitude if lap == 0 else city.longitude + rng.uniform(-0.05, 0.05)
        out.append(LocationPlan(location_id(shape, k), name, city.city, city.country, round(lat, 6),
                                round(lon, 6), city.time_zone))
    return out


def charger_ids(shape: FleetShape) -> list[str]:
    if shape.ids:
        return list(shape.ids[:shape.count])
    width = max(5, len(str(shape.count - 1)))
    return [f"{shape.id_prefix}{i:0{width}d}" for i in range(shape.count)]


def _versions(shape: FleetShape) -> list[str]:
    """Exact counts per version (largest remainder), in a seeded order."""
    n = shape.count
    quotas = [(v, share * n) for v, share in shape.mix]
    counts = {v: int(q) for v, q in quotas}
    rest = n - sum(counts.values())
    for v, _ in sorted(quotas, key=lambda item: item[1] - int(item[1]), reverse=True)[:rest]:
        counts[v] += 1
    versions = [v for v, _ in shape.mix for _ in range(counts[v])]
    _rng(shape, "versions").shuffle(versions)
    return versions


def plan_fleet(shape: FleetShape) -> list[ChargerProfile]:
    ids = charger_ids(shape)
    versions = _versions(shape)
    locations = shape.location_count
    per_location = -(-shape.count // locations)
    out = []
    for i, (cp_id, version) in enumerate(zip(ids, versions, strict=True)):
        rng = _rng(shape, "charger", i)
        dc = rng.random() < shape.dc_share
        # DC fast chargers rarely have more than two outlets.
        high = max(shape.evses[0], min(shape.evses[1], 2)) if dc else shape.evses[1]
        evses = rng.randint(shape.evses[0], high)
        power = rng.choice(DC_POWERS_W if dc else AC_POWERS_W)
        kind = "DC" if dc else "AC"
        out.append(ChargerProfile(
            index=i, id=cp_id, version=version, evses=evses, dc=dc, rated_power_w=power,
            location_id=location_id(shape, min(i // per_location, locations - 1)),
            vendor="Simulated", model=f"SIM-{kind}{int(power / 1000)}-{version.replace('.', '')}",
            serial_number=f"SIM{shape.seed % 10000:04d}{i:07d}", firmware_version="sim-1.0"))
    return out


def token_pool(shape: FleetShape) -> list[str]:
    return [f"{shape.token_prefix}{j:05d}" for j in range(shape.token_count)]
