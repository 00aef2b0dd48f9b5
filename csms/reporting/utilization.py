"""Time-based utilization and capacity factor (reporting.md §5.4).

Occ = Σ |plug(s) ∩ Op|, Chg = Σ |chg(s) ∩ Op|, Idle = Occ − Chg, each ÷ Σ_p |Op(p)|;
CF = Σ E(s, W) ÷ Σ_p (P_rated(p) × |Op(p)| / 60). Network figures are recomputed from minutes
and kWh, never averaged from station percentages.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from csms.reporting import round2
from schemas.intervals import Interval, intersect, minutes


@dataclass(frozen=True, slots=True)
class Session:
    plugged: Interval                  # plug-in → plug-out (occupancy)
    charging: tuple[Interval, ...]     # when energy flowed
    energy_kwh: float                  # inside the window (pro-rated by the caller if it spans it)


@dataclass(frozen=True, slots=True)
class Port:
    rated_kw: float
    opening: tuple[Interval, ...]      # access hours inside the window
    sessions: tuple[Session, ...]


@dataclass(frozen=True, slots=True)
class Utilization:
    ports: int
    avail_min: float
    occupied_min: float
    charging_min: float
    idle_min: float
    u_occupied_pct: float | None
    u_charging_pct: float | None
    u_idle_pct: float | None
    energy_kwh: float
    capacity_factor_pct: float | None
    sessions: int
    sessions_per_port_day: float | None
    median_post_charge_idle_min: float | None
    p90_post_charge_idle_min: float | None


def _pct(part: float, whole: float) -> float | None:
    return round2(part / whole * 100) if whole else None


def utilization(ports: Sequence[Port], window: Interval) -> Utilization:
    avail = occupied = charging = energy = capacity_kwh = 0.0
    started = 0
    idle_after: list[float] = []
    for port in ports:
        op = list(port.opening)
        avail += minutes(op)
        capacity_kwh += port.rated_kw * minutes(op) / 60.0
        for s in port.sessions:
            occupied += minutes(intersect([s.plugged], op))
            charging += minutes(intersect(list(s.charging), op))
            energy += s.energy_kwh
            if window[0] <= s.plugged[0] < window[1]:
                started += 1
            if s.charging:
                last_charge = max(end for _, end in s.charging)
                idle_after.append(max(0.0, (s.plugged[1] - last_charge).total_seconds() / 60.0))
    days = (window[1] - window[0]).total_seconds() / 86400.0
    idle_after.sort()
    p90 = idle_after[min(len(idle_after) - 1, int(0.9 * len(idle_after)))] if idle_after else None
    return Utilization(
        ports=len(ports), avail_min=round(avail, 2), occupied_min=round(occupied, 2),
        charging_min=round(charging, 2), idle_min=round(occupied - charging, 2),
        u_occupied_pct=_pct(occupied, avail), u_charging_pct=_pct(charging, avail),
        u_idle_pct=_pct(occupied - charging, avail), energy_kwh=round(energy, 3),
        capacity_factor_pct=_pct(energy, capacity_kwh), sessions=started,
        sessions_per_port_day=round(started / (len(ports) * days), 3) if ports and days else None,
        median_post_charge_idle_min=round(statistics.median(idle_after), 2) if idle_after else None,
        p90_post_charge_idle_min=round(p90, 2) if p90 is not None else None)
