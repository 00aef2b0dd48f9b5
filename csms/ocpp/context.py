"""What a handler sees: the connection's protocol state and the services it may ask.

Handlers are plain async functions ``(ctx, payload) -> Reply``. They decide the
response payload and the events to publish; they never write the database or touch
the socket. The only I/O they may do goes through ``Services`` (registry look-ups and
the 1.6 transaction-id allocator), which tests replace with an in-memory version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import msgspec
import orjson

from csms.ocpp.normalise import RegisterTracker
from csms.ocpp.types import ChargePointId, IdToken, OcppVersion
from schemas.events import Event

RegistrationStatus = Literal["Accepted", "Pending", "Rejected"]
AuthorizationStatus = Literal["Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx", "Unknown"]


@dataclass(frozen=True, slots=True)
class BootInfo:
    vendor: str
    model: str
    serial_number: str | None
    firmware_version: str | None


@dataclass(frozen=True, slots=True)
class BootDecision:
    status: RegistrationStatus
    interval_s: int


@dataclass(frozen=True, slots=True)
class TokenDecision:
    status: AuthorizationStatus
    expiry: datetime | None = None
    group_id: str | None = None


class Services(Protocol):
    """Registry look-ups a handler may await (implemented over PostgreSQL in csms.store.registry)."""

    async def boot(self, charge_point_id: ChargePointId, info: BootInfo) -> BootDecision:
        """Decide and persist the registration status for a BootNotification."""

    async def authorize(self, charge_point_id: ChargePointId, id_token: IdToken) -> TokenDecision: ...

    async def allocate_transaction_id(self, charge_point_id: ChargePointId, start_key: str) -> int:
        """The 1.6 transactionId for a StartTransaction; the same key always gets the same id (1.6 §3.7.1;
        R41)."""

    async def transaction_start_key(self, charge_point_id: ChargePointId, transaction_id: int) -> str | None:
        """The start key given to ``allocate_transaction_id`` for this 1.6 transactionId, or None
        when this charger was never given that id: only a known id may change a transaction (R42 [1.6 errata 3.18])."""

    async def open_transactions(self, charge_point_id: ChargePointId) -> dict[str, tuple[int, int | None]]:
        """2.0.1 transactions still open, with their (EVSE, connector): TransactionEvents after a
        reconnect need not repeat ``evse`` (it is required only in the first one, E01.FR.16)."""


@dataclass
class ProtocolState:
    """Per-connection protocol state, owned by the connection's session."""

    charge_point_id: ChargePointId
    version: OcppVersion
    registration: RegistrationStatus
    tolerant: bool = False
    node_id: str = ""
    # Actions the CSMS asked for with TriggerMessage: allowed even before Accepted (2.0.1 B02.FR.09,
    # 1.6J errata 3.10; R33).
    triggered: dict[str, None] = field(default_factory=dict)   # a set by its keys (64 bytes empty, a set 216)
    # 1.6: transaction running on each connector, and each transaction's meterStart (Wh).
    open_tx_by_connector: dict[int, int] = field(default_factory=dict)
    meter_start_wh: dict[str, float] = field(default_factory=dict)
    # 1.6: transactionIds this charger was never given (looked up once per connection, bounded).
    unknown_tx_ids: dict[int, None] = field(default_factory=dict)   # a set by its keys, as above
    # 2.0.1: (evse, connector) of each transaction; `evse` is sent only once (E01.FR.16).
    tx_evse: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    registers: RegisterTracker = field(default_factory=RegisterTracker)
    # Known window (start, stop) of recent transactions, to flag samples outside it.
    tx_window: dict[str, tuple[datetime | None, datetime | None]] = field(default_factory=dict)

    def remember_window(self, tx: str, *, start: datetime | None = None, stop: datetime | None = None) -> None:
        old_start, old_stop = self.tx_window.get(tx, (None, None))
        self.tx_window[tx] = (start or old_start, stop or old_stop)
        if len(self.tx_window) > 64:  # bounded: only recent transactions matter
            self.tx_window.pop(next(iter(self.tx_window)))

    def remember_tx_evse(self, tx: str, evse: tuple[int, int | None]) -> None:
        self.tx_evse[tx] = evse
        if len(self.tx_evse) > 64:  # bounded: only recent transactions matter
            self.tx_evse.pop(next(iter(self.tx_evse)))


# Context and Reply are built once per CALL: msgspec Structs, for the reason given at framing.Call.
class Context(msgspec.Struct, frozen=True):
    state: ProtocolState
    services: Services
    received_at: datetime
    message_id: str


class Reply(msgspec.Struct, frozen=True):
    """A handler's decision: the CALLRESULT payload and the events that must be durable first."""

    payload: dict[str, Any]
    events: list[Event] = msgspec.field(default_factory=list)


def digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def clean_text(value: object, max_chars: int = 512) -> str:
    """Text safe for PostgreSQL: no NUL, no lone surrogates (R56, derived: PostgreSQL text refuses both),
    bounded length."""
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    text = text.replace("\x00", "\ufffd")
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:max_chars]


def clean_json(value: Any) -> Any:
    """A JSON value with every string cleaned, for storage as jsonb. Nothing is cut: nesting is
    bounded once, at parse (csms.ocpp.framing.MAX_JSON_DEPTH), for everything a charger sends."""
    if isinstance(value, str):
        return clean_text(value, 10_000)
    if isinstance(value, dict):
        return {clean_text(k, 256): clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    return value
