"""How a simulated charger answers the central system's CALLs (a subset; the rest is NotImplemented)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from csms.simulate.model_types import CommandAnswer, Connector

if TYPE_CHECKING:
    from csms.simulate.model import ChargerModel


class CommandResponder:
    """Answers one CALL on behalf of the model, changing the model as a real charger would."""

    def __init__(self, model: ChargerModel) -> None:
        self.m = model

    def answer(self, action: str, payload: dict[str, Any], now: float) -> CommandAnswer:
        handler = getattr(self, f"_cmd_{action}", None)
        if handler is None:
            return CommandAnswer(error="NotImplemented")
        result: CommandAnswer = handler(payload, now)
        return result

    def _pick_connector(self, evse_id: int | None) -> Connector | None:
        if evse_id:
            c = self.m.connectors.get(evse_id)
            return c if c is not None and self.m._idle(c) else None
        return next((c for c in self.m.connectors.values() if self.m._idle(c)), None)

    def _remote_start(self, evse_id: int | None, token: str, remote_start_id: int, now: float) -> CommandAnswer:
        c = self._pick_connector(evse_id)
        if c is None:
            return CommandAnswer({"status": "Rejected"})
        self.m._begin_session(c, now, token, remote_start_id=remote_start_id)
        return CommandAnswer({"status": "Accepted"})

    def _cmd_RemoteStartTransaction(self, p: dict[str, Any], now: float) -> CommandAnswer:
        return self._remote_start(p.get("connectorId"), str(p.get("idTag", "")), 0, now)

    def _cmd_RequestStartTransaction(self, p: dict[str, Any], now: float) -> CommandAnswer:
        token = str((p.get("idToken") or {}).get("idToken", ""))
        return self._remote_start(p.get("evseId"), token, int(p.get("remoteStartId", 0)), now)

    def _remote_stop(self, match: Any, now: float) -> CommandAnswer:
        for c in self.m.connectors.values():
            s = c.session
            if s is not None and s.started and match(s):
                self.m._integrate(c, now)
                s.depart_at = now
                self.m._end_session(c, s, now, reason="Remote", trigger="RemoteStop")
                self.m._schedule(now + self.m.rng.uniform(*self.m.behaviour.idle_s) + 1.0, "plug", c.evse_id)
                return CommandAnswer({"status": "Accepted"})
        return CommandAnswer({"status": "Rejected"})

    def _cmd_RemoteStopTransaction(self, p: dict[str, Any], now: float) -> CommandAnswer:
        return self._remote_stop(lambda s: s.ocpp16_id == p.get("transactionId"), now)

    def _cmd_RequestStopTransaction(self, p: dict[str, Any], now: float) -> CommandAnswer:
        return self._remote_stop(lambda s: s.transaction_id == p.get("transactionId"), now)

    def _cmd_Reset(self, p: dict[str, Any], now: float) -> CommandAnswer:
        busy = any(c.session is not None for c in self.m.connectors.values())
        if p.get("type") == "OnIdle" and busy:
            return CommandAnswer({"status": "Rejected"})
        self.m._schedule(now + 1.0, "reboot", 0, 1 if p.get("type") in ("Hard", "Immediate") else 0)
        return CommandAnswer({"status": "Accepted"})

    def _cmd_ChangeAvailability(self, p: dict[str, Any], now: float) -> CommandAnswer:
        if self.m.version == "1.6":
            target, operative = int(p.get("connectorId", 0)), p.get("type") == "Operative"
        else:
            target, operative = int((p.get("evse") or {}).get("id", 0)), p.get("operationalStatus") == "Operative"
        chosen = [c for c in self.m.connectors.values() if target in (0, c.evse_id)]
        if not chosen:
            return CommandAnswer({"status": "Rejected"})
        scheduled = False
        for c in chosen:
            if operative:
                c.inoperative = c.inoperative_pending = False
                if c.session is None and not c.faulted and c.status == "Unavailable":
                    self.m._set_status(c, "Available", now)
            elif c.session is not None:
                c.inoperative_pending = scheduled = True
            else:
                c.inoperative = True
                if not c.faulted:
                    self.m._set_status(c, "Unavailable", now)
        return CommandAnswer({"status": "Scheduled" if scheduled else "Accepted"})

    def _cmd_TriggerMessage(self, p: dict[str, Any], now: float) -> CommandAnswer:
        requested = p.get("requestedMessage")
        if requested == "Heartbeat":
            self.m._emit("Heartbeat", {}, now)
        elif requested == "StatusNotification":
            for c in self.m.connectors.values():
                c.reported = None
                self.m._set_status(c, c.status, now)
        else:
            return CommandAnswer({"status": "NotImplemented"})
        return CommandAnswer({"status": "Accepted"})

    def _cmd_GetConfiguration(self, p: dict[str, Any], now: float) -> CommandAnswer:
        known = {"HeartbeatInterval": str(int(self.m.heartbeat_s)),
                 "MeterValueSampleInterval": str(int(self.m.behaviour.meter_interval_s)),
                 "NumberOfConnectors": str(self.m.profile.evses)}
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
