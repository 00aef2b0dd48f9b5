"""One simulated charger as a discrete-event state machine (pure: no sockets, no clock).

The driver tells the model what time it is (``advance(now)``) and whether it is connected;
the model keeps a schedule of its own events (plug-ins, session starts, meter samples,
departures, faults, offline periods, heartbeats) and turns each into OCPP messages in its
``outbox``, stamped with the charger-side time of the event. The driver sends the head of the
outbox, one CALL at a time (OCPP-J §4.1.1: one outstanding CALL), and reports the answer.

Determinism: every random draw comes from one ``random.Random`` seeded with the fleet seed and
the charger's index, and is made while handling a scheduled event in time order, so the same
seed gives the same schedule of events and messages whatever the network does — except where
the central system's answers change what a real charger would do (a refused id token, the
heartbeat interval from BootNotification, operator commands).

Offline (OCPP 1.6 §3.7 / 2.0.1 E04, F-series "queuing"): while the charger cannot send —
not connected, not yet accepted at boot, or inside a planned offline period — transaction
messages (1.6 StartTransaction, StopTransaction, MeterValues of a transaction; 2.0.1
TransactionEvent, with ``offline: true``) stay queued and are sent after the reconnect in the
order they were generated, with their original timestamps. Other messages are dropped; the
connector statuses that changed meanwhile are reported again after the reconnect.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from csms.simulate import frames
from csms.simulate.config import Behaviour
from csms.simulate.fleet import ChargerProfile
from csms.simulate.model_commands import CommandResponder
from csms.simulate.model_sessions import ChargerSessions
from csms.simulate.model_types import (
    REGISTER_EPOCH_S,
    REGISTER_GROWTH_W,
    CommandAnswer,
    Connector,
    Outgoing,
    Session,
)

__all__ = ["ChargerModel", "CommandAnswer", "Connector", "Outgoing", "Session"]

@dataclass
class ChargerModel(ChargerSessions):
    profile: ChargerProfile
    behaviour: Behaviour
    start: float                       # power-on, charger time (epoch seconds)
    tokens: tuple[str, ...]
    seed: int
    counters: Counter[str] = field(default_factory=Counter)
    initial_registers: dict[int, float] = field(default_factory=dict)   # by EVSE id: continue from these

    def __post_init__(self) -> None:
        self.version = self.profile.version
        self.rng = random.Random(f"{self.seed}:model:{self.profile.index}")  # noqa: S311 - simulation
        self.connected = False
        self.registration: str | None = None    # the last BootNotification answer in this power cycle
        self.booted_once = False                # accepted at least once since the simulation began
        self.boot_reason = "PowerUp"
        self.boot_due_at = self.start
        self.heartbeat_s = self.behaviour.heartbeat_interval_s
        self._heartbeat_scheduled = False
        self.offline_until = 0.0
        self.horizon = self.start
        self.outbox: deque[Outgoing] = deque()
        self.message_seq = 0
        self._evse_told: set[str] = set()     # 2.0.1 transactions whose EVSE this connection was told
        self._events: list[tuple[float, int, str, int, int]] = []
        self._event_seq = 0
        self._sessions = 0
        self.connectors: dict[int, Connector] = {}
        for evse_id in range(1, self.profile.evses + 1):
            base = self.rng.uniform(0.0, 50_000.0)
            growth = min(REGISTER_GROWTH_W, self.profile.rated_power_w)
            register = round(base + max(0.0, self.start - REGISTER_EPOCH_S) * growth / 3600.0)
            register = max(register, math.ceil(self.initial_registers.get(evse_id, 0.0)))
            self.connectors[evse_id] = Connector(evse_id, register_wh=register, last_t=self.start)
            self._schedule(self.start + self.rng.uniform(*self.behaviour.first_plug_in_s), "plug", evse_id)
            self._schedule_fault(self.start, evse_id)
        self._schedule_offline(self.start)

    def next_wakeup(self) -> float:
        """When ``advance`` has something to do next (or a queued message may be retried)."""
        t = self._events[0][0] if self._events else float("inf")
        if self.outbox and self.outbox[0].not_before > self.horizon:
            t = min(t, self.outbox[0].not_before)
        if self.connected and self.registration != "Accepted":
            t = min(t, self.boot_due_at)
        return t

    def advance(self, now: float) -> None:
        """Handle every scheduled event up to ``now``, in time order."""
        self.horizon = max(self.horizon, now)
        while self._events and self._events[0][0] <= now:
            t, _, kind, evse_id, ref = heapq.heappop(self._events)
            getattr(self, f"_on_{kind}")(t, evse_id, ref)

    # -- connectivity -----------------------------------------------------------------------

    def can_send(self, t: float) -> bool:
        return self.connected and self.registration == "Accepted" and t >= self.offline_until

    def on_connected(self, now: float) -> None:
        self.connected = True
        self._evse_told.clear()
        self.horizon = max(self.horizon, now)
        if self.registration == "Accepted":
            # A reconnect without a reboot: no BootNotification (the registration status stands,
            # 1.6J §5.4 / 2.0.1 B01), but report what changed while away.
            self._report_changed_statuses(now)

    def on_disconnected(self, now: float, *, shutting_down: bool = False) -> None:
        self.connected = False
        kept = deque(m for m in self.outbox if m.transactional)
        if not shutting_down:
            self.counters["dropped_offline"] += len(self.outbox) - len(kept)
        for m in kept:
            m.not_before = 0.0
        self.outbox = kept

    def needs_boot(self) -> bool:
        return self.registration != "Accepted"

    def head(self, now: float) -> Outgoing | None:
        """The next message to send now, if any (BootNotification first until it is Accepted)."""
        if not self.connected or now < self.offline_until:
            return None
        if self.registration != "Accepted":
            if now < self.boot_due_at:
                return None
            return Outgoing("BootNotification", frames.boot(self.profile, self.boot_reason), now, False)
        if self.outbox and self.outbox[0].not_before <= now:
            return self.outbox[0]
        return None

    def materialize(self, msg: Outgoing) -> dict[str, Any]:
        """The payload as sent: 1.6 transaction messages get their transactionId now, which was
        unknown while they were queued behind their StartTransaction."""
        if self.version == "1.6" and msg.session is not None and msg.action in ("MeterValues", "StopTransaction"):
            tx = msg.session.ocpp16_id
            # -1: the StartTransaction never got an answer (1.6 errata 3.18).
            return {**msg.payload, "transactionId": tx if tx is not None else -1}
        if msg.action == "TransactionEvent" and msg.session is not None:
            # evse is required only in the first event of a transaction (E01); a central system may
            # keep that per connection, so the first event on every connection repeats it.
            tx_id = msg.session.transaction_id
            if tx_id not in self._evse_told:
                self._evse_told.add(tx_id)
                if "evse" not in msg.payload:
                    return {**msg.payload, "evse": {"id": msg.session.evse_id, "connectorId": 1}}
        return msg.payload

    def next_message_id(self) -> str:
        self.message_seq += 1
        return str(self.message_seq)

    # -- answers ----------------------------------------------------------------------------

    def on_result(self, msg: Outgoing, answer: dict[str, Any], now: float) -> None:
        """The CALLRESULT to ``msg`` arrived."""
        if msg.action == "BootNotification":   # never queued: head() makes it while not Accepted
            self._on_boot_answer(answer, now)
            return
        if self.outbox and self.outbox[0] is msg:
            self.outbox.popleft()
        if msg.generated_offline:
            self.counters["replayed"] += 1
        status = _token_status(answer)
        if msg.action == "Authorize" and msg.session is not None:
            if not msg.session.started:
                msg.session.authorized = status == "Accepted"
        elif msg.action == "StartTransaction" and msg.session is not None:
            tx = answer.get("transactionId")
            if isinstance(tx, int):
                msg.session.ocpp16_id = tx
        if msg.action in ("StartTransaction", "TransactionEvent") and status not in (None, "Accepted"):
            self.counters["token_not_accepted"] += 1

    def on_call_error(self, msg: Outgoing, code: str, now: float) -> None:
        """The CALLERROR to ``msg`` arrived: transaction messages are retried a few times
        (1.6 §3.7 TransactionMessageAttempts/RetryInterval; 2.0.1 E13), the rest dropped."""
        if msg.action == "BootNotification":
            self.boot_due_at = now + self.behaviour.min_boot_retry_s
            return
        if not self.outbox or self.outbox[0] is not msg:
            return
        if msg.transactional:
            msg.attempts += 1
            if msg.attempts < self.behaviour.transaction_attempts:
                msg.not_before = now + self.behaviour.transaction_retry_interval_s
                return
            self.counters["transaction_messages_dropped"] += 1
        self.outbox.popleft()

    def drop_head_if_not_transactional(self, msg: Outgoing) -> None:
        """The central system never answered ``msg``: a non-transaction message is given up."""
        if self.outbox and self.outbox[0] is msg and not msg.transactional:
            self.outbox.popleft()

    def _on_boot_answer(self, answer: dict[str, Any], now: float) -> None:
        status = str(answer.get("status", ""))
        interval = answer.get("interval")
        interval_s = float(interval) if isinstance(interval, int | float) and interval > 0 else 0.0
        if status != "Accepted":
            # Pending/Rejected: boot again after the given interval (1.6 §4.2; 2.0.1 B02/B03).
            self.registration = status
            self.boot_due_at = now + max(self.behaviour.min_boot_retry_s, interval_s)
            self.counters[f"boot_{status.lower() or 'unknown'}"] += 1
            return
        self.registration = "Accepted"
        self.booted_once = True
        self.counters["boots_accepted"] += 1
        if self.behaviour.heartbeat_interval_s <= 0 and interval_s > 0:
            self.heartbeat_s = interval_s
        if not self._heartbeat_scheduled and self.heartbeat_s > 0:
            self._heartbeat_scheduled = True
            self._schedule(now + self.heartbeat_s, "heartbeat")
        # After a boot every connector's status is reported (1.6 §4.9; 2.0.1 B01.FR.05).
        if self.version == "1.6":
            self._emit("StatusNotification", frames.status("1.6", 0, "Available", now), now)
        for c in self.connectors.values():
            c.reported = None
        self._report_changed_statuses(now)

    # -- faults, heartbeats, offline periods, reboots ---------------------------------------

    def _on_fault(self, t: float, evse_id: int, ref: int) -> None:
        c = self.connectors[evse_id]
        if not self._idle(c):
            self._schedule(t + 600.0, "fault", evse_id)   # faults are simulated on idle connectors only
            return
        c.faulted = True
        self.counters["faults"] += 1
        code = self.rng.choice(frames.FAULT_CODES_V16)
        self._set_status(c, "Faulted", t, error_code=code if self.version == "1.6" else "NoError",
                         vendor_error_code=f"SIM-{code[:8].upper()}" if self.version == "1.6" else "")
        self._schedule(t + self.rng.uniform(*self.behaviour.fault_s), "recover", evse_id)

    def _on_recover(self, t: float, evse_id: int, ref: int) -> None:
        c = self.connectors[evse_id]
        if not c.faulted:
            return
        c.faulted = False
        self._set_status(c, "Unavailable" if c.inoperative else "Available", t)
        self._schedule_fault(t, evse_id)

    def _on_heartbeat(self, t: float, evse_id: int, ref: int) -> None:
        # A heartbeat only says "alive now": none for the past while catching up on history.
        if self.can_send(t) and self.horizon - t <= self.heartbeat_s:
            self._emit("Heartbeat", {}, t)
        self._schedule(t + self.heartbeat_s, "heartbeat")

    def _on_offline(self, t: float, evse_id: int, ref: int) -> None:
        if t < self.offline_until:
            return
        self.offline_until = t + self.rng.uniform(*self.behaviour.offline_s)
        self.counters["offline_periods"] += 1
        self._schedule_offline(self.offline_until)

    def _on_reboot(self, t: float, evse_id: int, hard: int) -> None:
        self.counters["reboots"] += 1
        for c in self.connectors.values():
            s = c.session
            if s is not None and s.started:
                if self.version == "1.6":
                    self._end_session(c, s, t, reason="HardReset" if hard else "SoftReset", trigger="ResetCommand")
                else:
                    self._end_session(c, s, t, reason="ImmediateReset", trigger="ResetCommand")
            c.session = None
            c.faulted = False
            c.status = "Unavailable" if c.inoperative else "Available"
            self._schedule(t + self.rng.uniform(*self.behaviour.idle_s) + 1.0, "plug", c.evse_id)
        self.registration = None
        self.boot_reason = "RemoteReset"
        self.offline_until = max(self.offline_until, t + self.rng.uniform(5.0, 15.0))
        self.boot_due_at = self.offline_until

    def power_off(self, now: float) -> None:
        """The charger is switched off: its transactions end (PowerLoss) and are queued to be sent."""
        self.advance(now)
        for c in self.connectors.values():
            s = c.session
            if s is not None and s.started:
                trigger = "AbnormalCondition"
                self._end_session(c, s, max(now, c.last_t), reason="PowerLoss", trigger=trigger)
            c.session = None

    # -- commands from the central system -----------------------------------------------------

    def handle_call(self, action: str, payload: dict[str, Any], now: float) -> CommandAnswer:
        """Answer a CSMS-initiated CALL (a subset; the rest is NotImplemented)."""
        self.horizon = max(self.horizon, now)
        return CommandResponder(self).answer(action, payload, now)

    # -- views --------------------------------------------------------------------------------

    @property
    def active_sessions(self) -> int:
        return sum(1 for c in self.connectors.values() if c.session is not None and c.session.started)


def _token_status(answer: dict[str, Any]) -> str | None:
    info = answer.get("idTagInfo") or answer.get("idTokenInfo")
    if isinstance(info, dict):
        status = info.get("status")
        return str(status) if status is not None else None
    return None
