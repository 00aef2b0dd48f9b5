"""The simulated charger's state: sessions, connectors, queued messages, command answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from csms.simulate import curves

# Registers start higher the later a run starts (a fixed growth per connector since an epoch), so
# that runs of the same ids one after the other mostly keep each register increasing. It cannot be
# a strict bound — rated power × time would overflow the 32-bit 1.6 meterStart within two years
# for a 180 kW charger — so a run that delivered more than this on average since the previous one
# started shows up as "register decreased" in the data-quality flags; use another --id-prefix, or
# hand the stored registers in (``initial_registers``, as the demo does).
REGISTER_EPOCH_S = 1_735_689_600.0   # 2025-01-01T00:00:00Z
REGISTER_GROWTH_W = 10_000.0

TRANSACTION_ACTIONS = frozenset({"StartTransaction", "StopTransaction", "MeterValues", "TransactionEvent"})
IDLE_STATES = frozenset({"Available", "Unavailable"})


@dataclass(slots=True, eq=False)
class Session:
    number: int
    evse_id: int
    token: str
    transaction_id: str            # 2.0.1 transactionId
    vehicle: curves.Vehicle
    soc: float
    target_soc: float
    dwell_s: float
    remote_start_id: int | None = None
    authorized: bool | None = None  # None: no answer (yet), or started offline (local authorization)
    started: bool = False
    start_t: float = 0.0
    depart_at: float = float("inf")
    ocpp16_id: int | None = None   # from the StartTransaction answer
    seq_no: int = 0
    suspended: bool = False
    meter_start_wh: float = 0.0


@dataclass(slots=True, eq=False)
class Connector:
    evse_id: int
    register_wh: float
    last_t: float
    status: str = "Available"
    reported: str | None = None     # wire status last queued (None: never)
    session: Session | None = None
    faulted: bool = False
    inoperative: bool = False
    inoperative_pending: bool = False


@dataclass(slots=True, eq=False)
class Outgoing:
    action: str
    payload: dict[str, Any]
    at: float                           # charger time the message stands for
    transactional: bool
    session: Session | None = None      # 1.6: transactionId filled in when sent
    generated_offline: bool = False
    attempts: int = 0                   # CALLERROR answers so far
    not_before: float = 0.0


@dataclass(slots=True)
class CommandAnswer:
    payload: dict[str, Any] | None = None   # CALLRESULT payload
    error: str | None = None                # else a CALLERROR code
