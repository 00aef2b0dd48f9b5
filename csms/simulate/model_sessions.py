"""The simulated charger's sessions and the messages they produce: scheduling, statuses, meter
readings, plug-in to departure. ``ChargerModel`` (``csms.simulate.model``) is built on this and
sets the state declared here."""

from __future__ import annotations

import heapq
import random
import uuid
from collections import Counter, deque
from typing import Any

from csms.simulate import curves, frames
from csms.simulate.config import Behaviour
from csms.simulate.fleet import ChargerProfile
from csms.simulate.model_types import TRANSACTION_ACTIONS, Connector, Outgoing, Session


class ChargerSessions:
    """State (set by ``ChargerModel``) and the session half of its behaviour."""

    profile: ChargerProfile
    behaviour: Behaviour
    start: float
    tokens: tuple[str, ...]
    counters: Counter[str]
    version: str
    rng: random.Random
    horizon: float
    outbox: deque[Outgoing]
    connectors: dict[int, Connector]
    _events: list[tuple[float, int, str, int, int]]
    _event_seq: int
    _sessions: int

    def can_send(self, t: float) -> bool:
        raise NotImplementedError

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
