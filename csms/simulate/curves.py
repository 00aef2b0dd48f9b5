"""Vehicles and charging power curves (pure functions).

DC: constant current up to a knee SoC (power limited by the charger and the vehicle), then a
constant-voltage taper in which power falls roughly linearly with SoC towards a trickle at 100 %.
AC: flat at the smaller of the EVSE's rating and the vehicle's on-board charger until full.
Energy is integrated in steps of at most ``STEP_S`` seconds so the register follows the curve.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

STEP_S = 10.0
TRICKLE_SHARE = 0.04     # CV taper floor, as a share of the CC power
AC_VOLTAGE_V = 230.0     # phase to neutral


@dataclass(frozen=True, slots=True)
class Vehicle:
    capacity_wh: float
    max_dc_power_w: float     # what the battery accepts on DC
    onboard_ac_w: float       # what the on-board charger takes on AC
    knee_soc: float           # DC: SoC (%) where the taper starts


def draw_vehicle(rng: random.Random) -> Vehicle:
    return Vehicle(capacity_wh=rng.uniform(40_000, 100_000), max_dc_power_w=rng.uniform(50_000, 250_000),
                   onboard_ac_w=rng.choice((7_400.0, 11_000.0, 11_000.0, 22_000.0)),
                   knee_soc=rng.uniform(50.0, 80.0))


def dc_power_w(soc: float, *, charger_w: float, vehicle: Vehicle) -> float:
    """CC/CV: full power below the knee, then a linear taper to a trickle; 0 when full."""
    if soc >= 100.0:
        return 0.0
    peak = min(charger_w, vehicle.max_dc_power_w)
    if soc <= vehicle.knee_soc:
        return peak
    share = (100.0 - soc) / (100.0 - vehicle.knee_soc)
    return peak * max(TRICKLE_SHARE, share)


def ac_power_w(soc: float, *, charger_w: float, vehicle: Vehicle) -> float:
    """Flat: the on-board charger draws its rating until the battery is full."""
    return 0.0 if soc >= 100.0 else min(charger_w, vehicle.onboard_ac_w)


def power_w(soc: float, *, dc: bool, charger_w: float, vehicle: Vehicle) -> float:
    return (dc_power_w if dc else ac_power_w)(soc, charger_w=charger_w, vehicle=vehicle)


def integrate(soc: float, seconds: float, *, dc: bool, charger_w: float, vehicle: Vehicle,
              soc_limit: float = 100.0) -> tuple[float, float]:
    """Charge for ``seconds``; return (new SoC, energy delivered in Wh). SoC never exceeds ``soc_limit``."""
    energy = 0.0
    left = max(0.0, seconds)
    while left > 0 and soc < soc_limit:
        step = min(STEP_S, left)
        p = power_w(soc, dc=dc, charger_w=charger_w, vehicle=vehicle)
        if p <= 0:
            break
        wh = p * step / 3600.0
        room_wh = (soc_limit - soc) / 100.0 * vehicle.capacity_wh
        if wh >= room_wh:
            energy += room_wh
            soc = soc_limit
            break
        energy += wh
        soc += wh / vehicle.capacity_wh * 100.0
        left -= step
    return min(soc, soc_limit), energy


def dc_voltage_v(soc: float) -> float:
    """A 400 V-class pack: about 340 V empty, 410 V full."""
    return 340.0 + 0.7 * max(0.0, min(100.0, soc))
