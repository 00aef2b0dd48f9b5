"""What a simulated fleet looks like and how its chargers behave (frozen, validated)."""

from __future__ import annotations

from dataclasses import dataclass, field

VERSIONS = ("1.6", "2.0.1")
_VERSION_ALIASES = {"16": "1.6", "1.6": "1.6", "201": "2.0.1", "2.0.1": "2.0.1"}

Range = tuple[float, float]


class SimulationConfigError(ValueError):
    """A simulator option has a value that cannot be used."""


def parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    """``16=0.7,201=0.3`` (or ``1.6=70,2.0.1=30``) → shares that sum to 1, in VERSIONS order."""
    shares: dict[str, float] = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        version = _VERSION_ALIASES.get(key.strip())
        if not sep or version is None:
            raise SimulationConfigError(f"--mix: expected VERSION=SHARE with VERSION 16 or 201, got {item!r}")
        try:
            share = float(value)
        except ValueError:
            raise SimulationConfigError(f"--mix: {value!r} is not a number") from None
        if share < 0:
            raise SimulationConfigError("--mix: shares must not be negative")
        shares[version] = shares.get(version, 0.0) + share
    total = sum(shares.values())
    if total <= 0:
        raise SimulationConfigError("--mix: the shares must add up to more than 0")
    return tuple((v, shares.get(v, 0.0) / total) for v in VERSIONS if shares.get(v, 0.0) > 0)


def parse_range(text: str, *, name: str) -> Range:
    """``600-3600`` or ``60`` → (low, high) with 0 ≤ low ≤ high."""
    low_s, sep, high_s = text.partition("-")
    try:
        low = float(low_s)
        high = float(high_s) if sep else low
    except ValueError:
        raise SimulationConfigError(f"{name}: expected LOW-HIGH or a number, got {text!r}") from None
    if low < 0 or high < low:
        raise SimulationConfigError(f"{name}: need 0 <= LOW <= HIGH, got {text!r}")
    return (low, high)


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetShape:
    """Which chargers exist: the same shape and seed always give the same fleet."""

    count: int
    mix: tuple[tuple[str, float], ...] = (("1.6", 0.5), ("2.0.1", 0.5))
    evses: tuple[int, int] = (1, 4)          # EVSEs (1.6: connectors) per charger, inclusive
    dc_share: float = 0.3                    # share of DC fast chargers (the rest is AC)
    id_prefix: str = "SIM-"
    seed: int = 1
    tokens: int = 0                          # id tokens in the pool; 0 = one per four chargers (at least 4)
    token_prefix: str = "SIMTAG"  # noqa: S105 - an id-token name prefix, not a secret
    locations: int = 0                       # 0 = one per 20 chargers (at least 1)
    ids: tuple[str, ...] = ()                # explicit ids (from a credentials file) instead of prefix + number

    def __post_init__(self) -> None:
        if self.count < 1:
            raise SimulationConfigError("the fleet needs at least one charger")
        if not 1 <= self.evses[0] <= self.evses[1] <= 4:
            raise SimulationConfigError("EVSEs per charger: need 1 <= LOW <= HIGH <= 4")
        if not 0.0 <= self.dc_share <= 1.0:
            raise SimulationConfigError("dc_share must be between 0 and 1")
        if self.ids and len(self.ids) < self.count:
            raise SimulationConfigError(f"{self.count} chargers but only {len(self.ids)} ids were given")
        width = len(str(self.count - 1))
        if not self.ids and len(self.id_prefix) + max(5, width) > 48:
            raise SimulationConfigError("id prefix too long: charge point ids have at most 48 characters")
        # 1.6 idTag has at most 20 characters.
        if len(self.token_prefix) + 5 > 20:
            raise SimulationConfigError("token prefix too long: 1.6 idTags have at most 20 characters")

    @property
    def token_count(self) -> int:
        return self.tokens or max(4, self.count // 4)

    @property
    def location_count(self) -> int:
        return self.locations or max(1, -(-self.count // 20))


@dataclass(frozen=True, slots=True, kw_only=True)
class Behaviour:
    """How each charger behaves over time (seconds of charger time)."""

    meter_interval_s: float = 60.0
    # Used instead of meter_interval_s for samples that are already this far in the past when
    # they are generated (history written in fast-forward): keeps a backfill small.
    catch_up_meter_interval_s: float = 900.0
    catch_up_threshold_s: float = 3600.0
    heartbeat_interval_s: float = 0.0        # 0 = the interval the central system gives at boot
    first_plug_in_s: Range = (0.0, 600.0)    # first session starts this long after power-on
    session_s: Range = (900.0, 3600.0)       # how long a car stays plugged in (DC leaves once at its target)
    idle_s: Range = (600.0, 3600.0)          # gap between sessions on a connector
    handling_s: Range = (5.0, 30.0)          # plug-in → authorised start, and stop → unplugged (1.6 Finishing)
    fault_rate_per_h: float = 0.02           # per connector
    fault_s: Range = (60.0, 900.0)
    offline_rate_per_h: float = 0.05         # per charger
    offline_s: Range = (30.0, 300.0)
    min_boot_retry_s: float = 5.0            # lower bound on the Pending/Rejected retry interval
    transaction_retry_interval_s: float = 10.0
    transaction_attempts: int = 5            # a transaction message answered CALLERROR this often is dropped

    def __post_init__(self) -> None:
        if self.meter_interval_s <= 0 or self.catch_up_meter_interval_s <= 0:
            raise SimulationConfigError("meter intervals must be positive")
        if self.heartbeat_interval_s < 0:
            raise SimulationConfigError("heartbeat interval must not be negative")
        if self.session_s[1] <= 0:
            raise SimulationConfigError("sessions must last longer than 0 s")
        if self.fault_rate_per_h < 0 or self.offline_rate_per_h < 0:
            raise SimulationConfigError("rates must not be negative")
        if self.transaction_attempts < 1:
            raise SimulationConfigError("transaction_attempts must be at least 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkOptions:
    """How chargers use the network."""

    url: str = "ws://127.0.0.1:9000/ocpp"
    password: str | None = None                          # one password for every charger
    credentials: dict[str, str] = field(default_factory=dict)  # per-charger passwords (win over password)
    open_timeout_s: float = 30.0
    call_timeout_s: float = 30.0
    call_attempts: int = 3                               # sends of one CALL before the link is deemed broken
    # Reconnect back-off in the shape of OCPP 2.0.1's RetryBackOff* variables (B10 / OCPP-J §5.3):
    # wait min(max, minimum × 2^attempt) plus a random 0…random_range.
    backoff_min_s: float = 1.0
    backoff_max_s: float = 120.0
    backoff_random_range_s: float = 5.0
    connect_rate_per_s: float = 25.0                     # whole fleet, all processes together
    source_addresses: tuple[str, ...] = ()               # local addresses to bind, round-robin by charger
    deflate: bool = False                                # offer permessage-deflate

    def __post_init__(self) -> None:
        if not self.url.startswith(("ws://", "wss://")):
            raise SimulationConfigError(f"the URL must be ws:// or wss://, got {self.url!r}")
        if self.connect_rate_per_s <= 0:
            raise SimulationConfigError("connect rate must be positive")
        if self.call_timeout_s <= 0 or self.open_timeout_s <= 0:
            raise SimulationConfigError("timeouts must be positive")
        if self.call_attempts < 1:
            raise SimulationConfigError("call_attempts must be at least 1")
        if self.backoff_min_s <= 0 or self.backoff_max_s < self.backoff_min_s or self.backoff_random_range_s < 0:
            raise SimulationConfigError("need 0 < backoff minimum <= maximum and a random range >= 0")

    def password_for(self, charge_point_id: str) -> str | None:
        return self.credentials.get(charge_point_id, self.password)


def source_address_range(count: int, *, first: str = "127.0.0.2") -> tuple[str, ...]:
    """``count`` consecutive IPv4 addresses from ``first`` (loopback: 127.0.0.0/8 is all local)."""
    parts = [int(p) for p in first.split(".")]
    base = (parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]
    out = []
    for n in range(count):
        value = base + n
        out.append(".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0)))
    return tuple(out)


def read_credentials(text: str) -> dict[str, str]:
    """``id,password`` per line (``#`` comments and blank lines ignored), in file order."""
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cp_id, sep, password = line.partition(",")
        if not sep or not cp_id.strip() or not password.strip():
            raise SimulationConfigError(f"credentials line {n}: expected ID,PASSWORD")
        out[cp_id.strip()] = password.strip()
    return out
