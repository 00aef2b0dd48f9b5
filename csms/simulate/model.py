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
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from csms.simulate import curves, frames
from csms.simulate.config import Behaviour
from csms.simulate.fleet import ChargerProfile

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


@dataclass
class ChargerModel:
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

    # -- schedule ---------------------------------------------------------------------------

    def _schedule(self, t: float, kind: str, evse_id: int = 0, ref: int = 0) -> None:
        self._event_seq += 1
        heapq.heappush(self._events, (t, self._event_seq, kind, evse_id, ref))

    def _schedule_fault(self, t: float, evse_id: int) -> None:
        rate = self.behaviour.fault_rate_per_h
        if rate > 0:
            self._schedule(t + self.rng.expovariate(rate / 3600.0), "fault", evse_id)

    def _schedule_offline(self, t: float) -> None:
        rate = self.behaviour.offline_rate_per_h
        if rate > 0:
            self._schedule(t + self.rng.expovariate(rate / 3600.0), "offline")

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

    # -- messages ---------------------------------------------------------------------------

    def _emit(self, action: str, payload: dict[str, Any], t: float, session: Session | None = None) -> None:
        transactional = action in TRANSACTION_ACTIONS and (action != "MeterValues" or session is not None)
        online = self.can_send(t)
        if not online and not transactional:
            self.counters["dropped_offline"] += 1
            return
        self.outbox.append(Outgoing(action, payload, t, transactional, session, generated_offline=not online))

    def _set_status(self, c: Connector, status: str, t: float, *, error_code: str = "NoError",
                    vendor_error_code: str = "") -> None:
        c.status = status
        wire = frames.wire_status(self.version, status)
        if wire == c.reported and error_code == "NoError":
            return
        if self.can_send(t):
            c.reported = wire
            self._emit("StatusNotification", frames.status(self.version, c.evse_id, status, t, error_code=error_code,
                                                           vendor_error_code=vendor_error_code), t)

    def _report_changed_statuses(self, t: float) -> None:
        for c in self.connectors.values():
            if frames.wire_status(self.version, c.status) != c.reported:
                c.reported = None
                self._set_status(c, c.status, t)

    def _reading(self, c: Connector, session: Session | None) -> frames.Reading:
        soc = session.soc if session is not None else 0.0
        vehicle = session.vehicle if session is not None else None
        power = 0.0
        if vehicle is not None and session is not None and session.started and not session.suspended:
            power = curves.power_w(soc, dc=self.profile.dc, charger_w=self.profile.rated_power_w, vehicle=vehicle)
            power *= 1.0 + self.rng.uniform(-0.01, 0.01)
            power = min(power, self.profile.rated_power_w)
        if self.profile.dc:
            voltage = curves.dc_voltage_v(soc)
            current = power / voltage
        else:
            voltage = curves.AC_VOLTAGE_V + self.rng.uniform(-2.0, 2.0)
            phases = 3 if self.profile.rated_power_w > 7_400 else 1
            current = power / (curves.AC_VOLTAGE_V * phases)
        return frames.Reading(energy_wh=c.register_wh, power_w=power, current_a=current, voltage_v=voltage,
                              soc=soc if self.profile.dc and session is not None else None)

    def _integrate(self, c: Connector, t: float) -> None:
        s = c.session
        if s is not None and s.started and not s.suspended and t > c.last_t:
            limit = s.target_soc if self.profile.dc else 100.0
            s.soc, wh = curves.integrate(s.soc, t - c.last_t, dc=self.profile.dc,
                                         charger_w=self.profile.rated_power_w, vehicle=s.vehicle, soc_limit=limit)
            c.register_wh += wh
        c.last_t = max(c.last_t, t)

    def _meter_interval(self, t: float) -> float:
        if self.horizon - t > self.behaviour.catch_up_threshold_s:
            return self.behaviour.catch_up_meter_interval_s
        return self.behaviour.meter_interval_s

    # -- sessions ---------------------------------------------------------------------------

    def _idle(self, c: Connector) -> bool:
        return c.session is None and not c.faulted and not c.inoperative and c.status == "Available"

    def _begin_session(self, c: Connector, t: float, token: str, *, remote_start_id: int | None = None) -> None:
        self._sessions += 1
        dc = self.profile.dc
        vehicle = curves.draw_vehicle(self.rng)
        tx_bits = self.rng.getrandbits(128) ^ int(self.start * 1000)  # unique across runs of the same seed
        c.session = Session(
            number=self._sessions, evse_id=c.evse_id, token=token,
            transaction_id=str(uuid.UUID(int=tx_bits, version=4)), vehicle=vehicle,
            soc=self.rng.uniform(10.0, 50.0) if dc else self.rng.uniform(20.0, 70.0),
            target_soc=self.rng.uniform(80.0, 100.0) if dc else 100.0,
            dwell_s=self.rng.uniform(*self.behaviour.session_s), remote_start_id=remote_start_id)
        c.last_t = t
        self._set_status(c, "Preparing", t)
        if remote_start_id is not None:
            c.session.authorized = True
        elif self.can_send(t):
            self._emit("Authorize", frames.authorize(self.version, token), t, c.session)
        else:
            c.session.authorized = True   # offline: local authorization (1.6 AllowOfflineTxForUnknownId-like)
        delay = self.rng.uniform(*self.behaviour.handling_s)
        self._schedule(t + (delay if remote_start_id is None else min(delay, 1.0)), "start", c.evse_id,
                       c.session.number)

    def _on_plug(self, t: float, evse_id: int, ref: int) -> None:
        c = self.connectors[evse_id]
        if not self._idle(c):
            self._schedule(t + self.rng.uniform(*self.behaviour.idle_s) + 1.0, "plug", evse_id)
            return
        self._begin_session(c, t, self.rng.choice(self.tokens))

    def _on_start(self, t: float, evse_id: int, ref: int) -> None:
        c = self.connectors[evse_id]
        s = c.session
        if s is None or s.number != ref or s.started:
            return
        if s.authorized is False:
            self.counters["sessions_refused"] += 1
            c.session = None
            self._set_status(c, "Available", t)
            self._schedule(t + self.rng.uniform(*self.behaviour.idle_s) + 1.0, "plug", evse_id)
            return
        s.started = True
        s.start_t = t
        s.depart_at = t + s.dwell_s
        s.meter_start_wh = c.register_wh
        c.last_t = t
        self.counters["sessions_started"] += 1
        if self.version == "1.6":
            self._emit("StartTransaction", frames.start_transaction_v16(evse_id, s.token, c.register_wh, t), t, s)
            self._set_status(c, "Charging", t)
        else:
            self._tx_event(c, s, "Started", t, "RemoteStart" if s.remote_start_id is not None else "Authorized",
                           charging_state="Charging", evse_id=evse_id, token=s.token,
                           remote_start_id=s.remote_start_id)
            c.status = "Charging"
        self._schedule(t + self._meter_interval(t), "meter", evse_id, s.number)
        self._schedule(s.depart_at, "depart", evse_id, s.number)

    def _tx_event(self, c: Connector, s: Session, event_type: str, t: float, trigger: str, *,
                  reading: bool = True, **extra: Any) -> None:
        payload = frames.transaction_event(
            event_type=event_type, t=t, trigger=trigger, seq_no=s.seq_no, transaction_id=s.transaction_id,
            reading=self._reading(c, s) if reading else None, offline=not self.can_send(t), **extra)
        s.seq_no += 1
        self._emit("TransactionEvent", payload, t, s)

    def _on_meter(self, t: float, evse_id: int, ref: int) -> None:
        c = self.connectors[evse_id]
        s = c.session
        if s is None or s.number != ref or not s.started:
            return
        self._integrate(c, t)
        if self.version == "1.6":
            self._emit("MeterValues", frames.meter_values_v16(evse_id, t, self._reading(c, s)), t, s)
        else:
            self._tx_event(c, s, "Updated", t, "MeterValuePeriodic")
        limit = s.target_soc if self.profile.dc else 100.0
        if not s.suspended and s.soc >= limit - 1e-9:
            # The vehicle stops drawing power; a DC driver leaves soon after reaching the target.
            s.suspended = True
            if self.version == "1.6":
                self._set_status(c, "SuspendedEV", t)
            else:
                c.status = "SuspendedEV"
                self._tx_event(c, s, "Updated", t, "ChargingStateChanged", reading=False,
                               charging_state="SuspendedEV")
            if self.profile.dc:
                leave = t + self.rng.uniform(60.0, 600.0)
                if leave < s.depart_at:
                    s.depart_at = leave
                    self._schedule(leave, "depart", evse_id, s.number)
        self._schedule(t + self._meter_interval(t), "meter", evse_id, s.number)

    def _on_depart(self, t: float, evse_id: int, ref: int) -> None:
        c = self.connectors[evse_id]
        s = c.session
        if s is None or s.number != ref or not s.started or t < s.depart_at:
            return
        self._end_session(c, s, t, reason="EVDisconnected",
                          trigger="EVDeparted")
        self._schedule(t + self.rng.uniform(*self.behaviour.idle_s) + 1.0, "plug", evse_id)

    def _end_session(self, c: Connector, s: Session, t: float, *, reason: str, trigger: str) -> None:
        self._integrate(c, t)
        self.counters["sessions_completed"] += 1
        if self.version == "1.6":
            self._emit("StopTransaction", frames.stop_transaction_v16(c.register_wh, t, reason, s.token), t, s)
            c.session = None
            self._set_status(c, "Finishing", t)
            self._schedule(t + self.rng.uniform(*self.behaviour.handling_s), "free", c.evse_id)
        else:
            s.suspended = True
            self._tx_event(c, s, "Ended", t, trigger, stopped_reason=reason, charging_state="Idle")
            c.session = None
            self._after_session(c, t)

    def _after_session(self, c: Connector, t: float) -> None:
        if c.inoperative_pending:
            c.inoperative, c.inoperative_pending = True, False
        self._set_status(c, "Unavailable" if c.inoperative else "Available", t)

    def _on_free(self, t: float, evse_id: int, ref: int) -> None:
        c = self.connectors[evse_id]
        if c.session is None and c.status == "Finishing":
            self._after_session(c, t)

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
        handler = getattr(self, f"_cmd_{action}", None)
        if handler is None:
            return CommandAnswer(error="NotImplemented")
        answer: CommandAnswer = handler(payload, now)
        return answer

    def _pick_connector(self, evse_id: int | None) -> Connector | None:
        if evse_id:
            c = self.connectors.get(evse_id)
            return c if c is not None and self._idle(c) else None
        return next((c for c in self.connectors.values() if self._idle(c)), None)

    def _remote_start(self, evse_id: int | None, token: str, remote_start_id: int, now: float) -> CommandAnswer:
        c = self._pick_connector(evse_id)
        if c is None:
            return CommandAnswer({"status": "Rejected"})
        self._begin_session(c, now, token, remote_start_id=remote_start_id)
        return CommandAnswer({"status": "Accepted"})

    def _cmd_RemoteStartTransaction(self, p: dict[str, Any], now: float) -> CommandAnswer:
        return self._remote_start(p.get("connectorId"), str(p.get("idTag", "")), 0, now)

    def _cmd_RequestStartTransaction(self, p: dict[str, Any], now: float) -> CommandAnswer:
        token = str((p.get("idToken") or {}).get("idToken", ""))
        return self._remote_start(p.get("evseId"), token, int(p.get("remoteStartId", 0)), now)

    def _remote_stop(self, match: Any, now: float) -> CommandAnswer:
        for c in self.connectors.values():
            s = c.session
            if s is not None and s.started and match(s):
                self._integrate(c, now)
                s.depart_at = now
                self._end_session(c, s, now, reason="Remote", trigger="RemoteStop")
                self._schedule(now + self.rng.uniform(*self.behaviour.idle_s) + 1.0, "plug", c.evse_id)
                return CommandAnswer({"status": "Accepted"})
        return CommandAnswer({"status": "Rejected"})

    def _cmd_RemoteStopTransaction(self, p: dict[str, Any], now: float) -> CommandAnswer:
        return self._remote_stop(lambda s: s.ocpp16_id == p.get("transactionId"), now)

    def _cmd_RequestStopTransaction(self, p: dict[str, Any], now: float) -> CommandAnswer:
        return self._remote_stop(lambda s: s.transaction_id == p.get("transactionId"), now)

    def _cmd_Reset(self, p: dict[str, Any], now: float) -> CommandAnswer:
        busy = any(c.session is not None for c in self.connectors.values())
        if p.get("type") == "OnIdle" and busy:
            return CommandAnswer({"status": "Rejected"})
        self._schedule(now + 1.0, "reboot", 0, 1 if p.get("type") in ("Hard", "Immediate") else 0)
        return CommandAnswer({"status": "Accepted"})

    def _cmd_ChangeAvailability(self, p: dict[str, Any], now: float) -> CommandAnswer:
        if self.version == "1.6":
            target, operative = int(p.get("connectorId", 0)), p.get("type") == "Operative"
        else:
            target, operative = int((p.get("evse") or {}).get("id", 0)), p.get("operationalStatus") == "Operative"
        chosen = [c for c in self.connectors.values() if target in (0, c.evse_id)]
        if not chosen:
            return CommandAnswer({"status": "Rejected"})
        scheduled = False
        for c in chosen:
            if operative:
                c.inoperative = c.inoperative_pending = False
                if c.session is None and not c.faulted and c.status == "Unavailable":
                    self._set_status(c, "Available", now)
            elif c.session is not None:
                c.inoperative_pending = scheduled = True
            else:
                c.inoperative = True
                if not c.faulted:
                    self._set_status(c, "Unavailable", now)
        return CommandAnswer({"status": "Scheduled" if scheduled else "Accepted"})

    def _cmd_TriggerMessage(self, p: dict[str, Any], now: float) -> CommandAnswer:
        requested = p.get("requestedMessage")
        if requested == "Heartbeat":
            self._emit("Heartbeat", {}, now)
        elif requested == "StatusNotification":
            for c in self.connectors.values():
                c.reported = None
                self._set_status(c, c.status, now)
        else:
            return CommandAnswer({"status": "NotImplemented"})
        return CommandAnswer({"status": "Accepted"})

    def _cmd_GetConfiguration(self, p: dict[str, Any], now: float) -> CommandAnswer:
        known = {"HeartbeatInterval": str(int(self.heartbeat_s)),
                 "MeterValueSampleInterval": str(int(self.behaviour.meter_interval_s)),
                 "NumberOfConnectors": str(self.profile.evses)}
        asked = p.get("key") or list(known)
        out: dict[str, Any] = {"configurationKey": [{"key": k, "readonly": True, "value": known[k]}
                                                    for k in asked if k in known]}
        unknown = [k for k in asked if k not in known]
        if unknown:
            out["unknownKey"] = unknown
        return CommandAnswer(out)

    def _cmd_ChangeConfiguration(self, p: dict[str, Any], now: float) -> CommandAnswer:
        return CommandAnswer({"status": "NotSupported"})

    def _cmd_GetVariables(self, p: dict[str, Any], now: float) -> CommandAnswer:
        return CommandAnswer({"getVariableResult": [
            {"attributeStatus": "UnknownComponent", "component": d.get("component", {}),
             "variable": d.get("variable", {})} for d in p.get("getVariableData", [])]})

    def _cmd_SetVariables(self, p: dict[str, Any], now: float) -> CommandAnswer:
        return CommandAnswer({"setVariableResult": [
            {"attributeStatus": "Rejected", "component": d.get("component", {}), "variable": d.get("variable", {})}
            for d in p.get("setVariableData", [])]})

    def _cmd_ClearCache(self, p: dict[str, Any], now: float) -> CommandAnswer:
        return CommandAnswer({"status": "Accepted"})

    def _cmd_DataTransfer(self, p: dict[str, Any], now: float) -> CommandAnswer:
        return CommandAnswer({"status": "UnknownVendorId"})

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
