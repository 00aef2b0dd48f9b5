"""Public reporting: uptime and outages, utilization (pure arithmetic here, SQL elsewhere).

Formulas follow ``reporting.md`` §5.4 "Normative definitions for our project" (NEVI 23 CFR
680.116(b), the UK PCPR reg. 7 reliability, time-based utilization and capacity factor).
All times are UTC ``datetime``s; calendar windows (NEVI months, ``local_date``/``month``/``year``,
EV-ChART quarters) and opening hours are built in the station's IANA time zone, so DST days
have 23 or 25 hours.
"""

from decimal import ROUND_HALF_UP, Decimal

# 2026-12.1: windows past now are computed up to now (complete: false); minutes before a port's
# first data are unknown, in no denominator; UK reliability applies only reg. 7's exclusions;
# outages are disjoint with ids from the data; EV-ChART months are station-local.
FORMULA_VERSION = "2026-12.1"


_CENT = Decimal("0.01")


def round2(value: float) -> float:
    """Two decimals, half up (as people and EV-ChART's decimal(5,2) expect: 3.125 → 3.13)."""
    return float(Decimal(repr(value)).quantize(_CENT, rounding=ROUND_HALF_UP))
