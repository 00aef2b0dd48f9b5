"""The vocabulary every layer uses at its boundaries: ids and OCPP versions.

``NewType`` ids keep a charge point id from being passed where an id token is expected
(mypy checks it); ``OcppVersion`` names the three OCPP-J versions this system speaks.
"""

from __future__ import annotations

from typing import Literal, NewType

ChargePointId = NewType("ChargePointId", str)
IdToken = NewType("IdToken", str)
EvseId = NewType("EvseId", int)

OcppVersion = Literal["1.6", "2.0.1", "2.1"]
OCPP_VERSIONS: tuple[OcppVersion, ...] = ("1.6", "2.0.1", "2.1")


def ocpp_version(text: str) -> OcppVersion:
    """``text`` as an OcppVersion; ValueError if it is not one."""
    for version in OCPP_VERSIONS:
        if version == text:
            return version
    raise ValueError(f"not an OCPP version: {text!r}")
