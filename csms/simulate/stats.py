"""What a simulation counts, merged across processes, and the JSON summary at the end.

Counter keys: ``sent:<action>`` (CALLs sent, retries included), ``answered:<action>``
(CALLRESULTs), ``error:<kind>`` (anything that went wrong on the client side: connection
failures by cause, CALL timeouts, CALLERRORs by code, unexpected closes), ``command:<action>``
(CALLs the central system sent us), and the models' own counters (sessions, faults, ...).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_BASE = 1.1            # bucket width: 10 %, so a percentile is within about 5 % of the truth
_MIN_S = 1e-5


class LatencyHistogram:
    """Log-spaced buckets, mergeable across processes (a list of all latencies is not)."""

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.count = 0
        self.max_s = 0.0

    def record(self, seconds: float) -> None:
        index = 0 if seconds <= _MIN_S else int(math.log(seconds / _MIN_S, _BASE)) + 1
        self.buckets[index] += 1
        self.count += 1
        self.max_s = max(self.max_s, seconds)

    def merge(self, data: dict[str, Any]) -> None:
        for k, v in data["buckets"].items():
            self.buckets[int(k)] += int(v)
        self.count += int(data["count"])
        self.max_s = max(self.max_s, float(data["max_s"]))

    def to_dict(self) -> dict[str, Any]:
        return {"buckets": dict(self.buckets), "count": self.count, "max_s": self.max_s}

    def percentile_s(self, q: float) -> float:
        """The q-quantile (0 < q ≤ 1): the geometric middle of the bucket it falls in."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                if index == 0:
                    return _MIN_S
                low, high = _MIN_S * _BASE ** (index - 1), _MIN_S * _BASE ** index
                return min(math.sqrt(low * high), self.max_s)
        return self.max_s


@dataclass
class Stats:
    """One process's live figures; chargers and models write into it."""

    counters: Counter[str] = field(default_factory=Counter)
    latency: dict[str, LatencyHistogram] = field(default_factory=dict)
    connected: int = 0
    connected_peak: int = 0

    def sent(self, action: str) -> None:
        self.counters[f"sent:{action}"] += 1

    def answered(self, action: str, seconds: float) -> None:
        self.counters[f"answered:{action}"] += 1
        hist = self.latency.get(action)
        if hist is None:
            hist = self.latency[action] = LatencyHistogram()
        hist.record(seconds)

    def error(self, kind: str) -> None:
        self.counters[f"error:{kind}"] += 1

    def connection_opened(self) -> None:
        self.connected += 1
        self.connected_peak = max(self.connected_peak, self.connected)
        self.counters["connections_opened"] += 1

    def connection_closed(self) -> None:
        self.connected -= 1

    def snapshot(self) -> dict[str, Any]:
        return {"counters": dict(self.counters), "latency": {a: h.to_dict() for a, h in self.latency.items()},
                "connected": self.connected, "connected_peak": self.connected_peak}


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    counters: Counter[str] = Counter()
    latency: dict[str, LatencyHistogram] = {}
    for snap in snapshots:
        counters.update(snap["counters"])
        for action, data in snap["latency"].items():
            latency.setdefault(action, LatencyHistogram()).merge(data)
    return {"counters": dict(counters), "latency": {a: h.to_dict() for a, h in latency.items()},
            "connected": sum(s["connected"] for s in snapshots),
            "connected_peak": sum(s["connected_peak"] for s in snapshots)}


def _by_prefix(counters: dict[str, int], prefix: str) -> dict[str, int]:
    return {k[len(prefix):]: v for k, v in sorted(counters.items()) if k.startswith(prefix) and v}


def totals(snapshot: dict[str, Any]) -> dict[str, int]:
    c = snapshot["counters"]
    started, completed = c.get("sessions_started", 0), c.get("sessions_completed", 0)
    return {"sent": sum(_by_prefix(c, "sent:").values()), "errors": sum(_by_prefix(c, "error:").values()),
            "sessions_active": started - completed, "sessions_started": started}


def summary(snapshot: dict[str, Any], *, duration_s: float, connected_peak: int,
            info: dict[str, Any]) -> dict[str, Any]:
    """The JSON document printed at the end of a run."""
    c = snapshot["counters"]
    hists = {a: LatencyHistogram() for a in snapshot["latency"]}
    everything = LatencyHistogram()
    for action, data in snapshot["latency"].items():
        hists[action].merge(data)
        everything.merge(data)
    sent = _by_prefix(c, "sent:")
    answered = _by_prefix(c, "answered:")
    errors = _by_prefix(c, "error:")

    def ms(h: LatencyHistogram, q: float) -> float:
        return round(h.percentile_s(q) * 1000, 3)

    return {
        **info,
        "duration_s": round(duration_s, 3),
        "connected": {"peak": connected_peak, "at_end": snapshot["connected"],
                      "connections_opened": c.get("connections_opened", 0)},
        "messages": {"sent": sum(sent.values()), "answered": sum(answered.values()),
                     "per_s": round(sum(sent.values()) / duration_s, 1) if duration_s > 0 else 0.0,
                     "by_action": sent},
        "errors": {"total": sum(errors.values()), "by_kind": errors},
        "latency_ms": {"p50": ms(everything, 0.5), "p99": ms(everything, 0.99),
                       "max": round(everything.max_s * 1000, 3),
                       "by_action": {a: {"count": h.count, "p50": ms(h, 0.5), "p99": ms(h, 0.99)}
                                     for a, h in sorted(hists.items())}},
        "sessions": {"started": c.get("sessions_started", 0), "completed": c.get("sessions_completed", 0),
                     "active_at_end": c.get("sessions_started", 0) - c.get("sessions_completed", 0),
                     "refused": c.get("sessions_refused", 0)},
        "charger_events": {
            "boots_accepted": c.get("boots_accepted", 0), "faults": c.get("faults", 0),
            "offline_periods": c.get("offline_periods", 0), "reboots": c.get("reboots", 0),
            "reconnects": max(0, c.get("connections_opened", 0) - c.get("chargers_connected_once", 0)),
            "replayed_messages": c.get("replayed", 0), "dropped_while_offline": c.get("dropped_offline", 0),
            "transaction_messages_dropped": c.get("transaction_messages_dropped", 0),
            "token_not_accepted": c.get("token_not_accepted", 0)},
        "commands_received": _by_prefix(c, "command:"),
    }
