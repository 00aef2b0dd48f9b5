"""Country codes (ISO 3166-1) and what follows from a site's country: the OCPI party country and
the connector a charger there has when the operator does not name one.

The ISO table comes from ``pycountry`` (the ISO 3166 database kept in step with the ISO maintenance
agency's changes); it is read once and kept as a dictionary.
"""

from __future__ import annotations

import functools

import pycountry

# Connector a charger has when the operator gives no standard (OCPI 2.2.1 ConnectorType, mod_locations
# §8.4.4), by the site's country (ISO 3166-1 alpha-3). DC: the vehicle inlet standard of the region
# (CCS Combo 1 in North America and Korea, CHAdeMO in Japan, GB/T in China, CCS Combo 2 elsewhere:
# Europe, the UK, India's IS 17017-2-3, Australia ...). AC: SAE J1772 (Type 1) where Combo 1 / CHAdeMO
# is used, GB/T AC in China, IEC 62196 Type 2 elsewhere.
_DC_BY_COUNTRY = {"USA": "IEC_62196_T1_COMBO", "CAN": "IEC_62196_T1_COMBO", "MEX": "IEC_62196_T1_COMBO",
                  "KOR": "IEC_62196_T1_COMBO", "JPN": "CHADEMO", "CHN": "GBT_DC"}
_AC_BY_COUNTRY = {"USA": "IEC_62196_T1", "CAN": "IEC_62196_T1", "MEX": "IEC_62196_T1", "KOR": "IEC_62196_T1",
                  "JPN": "IEC_62196_T1", "CHN": "GBT_AC"}
DEFAULT_DC_STANDARD = "IEC_62196_T2_COMBO"
DEFAULT_AC_STANDARD = "IEC_62196_T2"
# Standards whose connector is always on a cable fixed to the charger: every DC coupler (IEC 61851-23
# has no DC socket-outlet) and the SAE J1772 AC coupler. A Type 2 or GB/T AC point is usually a socket.
_CABLE_ONLY = frozenset({"IEC_62196_T1", "IEC_62196_T1_COMBO", "IEC_62196_T2_COMBO", "CHADEMO", "GBT_DC",
                         "CHAOJI", "TESLA_S"})


@functools.cache
def _alpha3_to_alpha2() -> dict[str, str]:
    return {c.alpha_3: c.alpha_2 for c in pycountry.countries}


def is_alpha3(code: str) -> bool:
    """Whether ``code`` is an officially assigned ISO 3166-1 alpha-3 country code (upper case)."""
    return code in _alpha3_to_alpha2()


def alpha2(alpha3: str) -> str | None:
    """The ISO 3166-1 alpha-2 code of an alpha-3 code (``IND`` → ``IN``); None if it is not assigned."""
    return _alpha3_to_alpha2().get(alpha3)


def default_standard(power_type: str, country: str | None) -> str:
    """The connector standard of a charger with this power type at a site in ``country`` (alpha-3)."""
    if power_type == "DC":
        return _DC_BY_COUNTRY.get(country or "", DEFAULT_DC_STANDARD)
    return _AC_BY_COUNTRY.get(country or "", DEFAULT_AC_STANDARD)


def default_format(standard: str) -> str:
    """OCPI ConnectorFormat (§8.4.5) of a connector of this standard when the operator gives none."""
    return "CABLE" if standard in _CABLE_ONLY else "SOCKET"
