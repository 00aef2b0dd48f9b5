"""OCPP-J wire errors: what we answer in a CALLERROR, spelled per version.

These are not internal errors (see ``csms.common.errors``); they describe what was wrong
with a charger's message. Canonical names are the 2.0.1 ones (Part 4 §4.3 Table 8);
1.6 spells two of them differently and will not fix it (1.6J §4.2.3 Table 7, errata
§5.1/§5.2), and has no RpcFrameworkError or MessageTypeNotSupported.

::

    OcppError(code, description, details)
    ├── FormatViolation, OccurrenceConstraintViolation, PropertyConstraintViolation,
    │   TypeConstraintViolation          payload does not match the schema
    ├── RpcFrameworkError, ProtocolError  the frame is not a valid RPC message
    ├── NotImplemented, NotSupported     unknown action / known but not handled here
    ├── SecurityError                    not allowed before BootNotification is Accepted
    ├── InternalError                    we failed (e.g. could not make the data durable)
    └── GenericError
"""

from __future__ import annotations

from typing import Any, ClassVar

MAX_DESCRIPTION_CHARS = 255  # 2.x errorDescription is at most 255 characters

_V16_SPELLING = {
    "FormatViolation": "FormationViolation",
    "OccurrenceConstraintViolation": "OccurenceConstraintViolation",
    # 1.6 has neither; ProtocolError ("payload incomplete / not conform the PDU") is the nearest.
    "RpcFrameworkError": "ProtocolError",
    "MessageTypeNotSupported": "NotSupported",
}

# Accepted on receipt from chargers: both spellings, every version (R13 [1.6J §4.2.3, 2.0.1 Part 4 §4.2.3] note).
_RECEIVED_ALIASES = {
    "FormationViolation": "FormatViolation",
    "OccurenceConstraintViolation": "OccurrenceConstraintViolation",
}


def wire_code(code: str, version: str) -> str:
    """The spelling of a canonical error code on a connection of ``version``."""
    if version == "1.6":
        return _V16_SPELLING.get(code, code)
    return code


def canonical_code(received: str) -> str:
    """The canonical name of an error code received from a charger (either spelling)."""
    return _RECEIVED_ALIASES.get(received, received)


class OcppError(Exception):
    """An error to answer with a CALLERROR."""

    code: ClassVar[str] = "GenericError"

    def __init__(self, description: str = "", details: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.description = description[:MAX_DESCRIPTION_CHARS]
        self.details = details or {}


class FormatViolation(OcppError):
    code = "FormatViolation"


class OccurrenceConstraintViolation(OcppError):
    code = "OccurrenceConstraintViolation"


class PropertyConstraintViolation(OcppError):
    code = "PropertyConstraintViolation"


class TypeConstraintViolation(OcppError):
    code = "TypeConstraintViolation"


class RpcFrameworkError(OcppError):
    code = "RpcFrameworkError"


class ProtocolError(OcppError):
    code = "ProtocolError"


class MessageTypeNotSupported(OcppError):
    code = "MessageTypeNotSupported"


class NotImplementedAction(OcppError):
    """The action is not known (spec meaning of NotImplemented)."""

    code = "NotImplemented"


class NotSupportedAction(OcppError):
    """The action is known but not supported here, e.g. sent in the wrong direction."""

    code = "NotSupported"


class SecurityError(OcppError):
    code = "SecurityError"


class InternalError(OcppError):
    code = "InternalError"


class GenericError(OcppError):
    code = "GenericError"


# The CALLERROR codes each OCPP version defines, canonical spelling (above): 1.6J §4.2.3
# Table 7 (spelled FormationViolation / OccurenceConstraintViolation there, both accepted on
# receipt), 2.0.1 Part 4 §4.3 Table 8, 2.1 Part 4 §4.3 Table 9 (the same 12 codes as 2.0.1).
_CODES_201 = frozenset({
    "FormatViolation", "GenericError", "InternalError", "MessageTypeNotSupported", "NotImplemented", "NotSupported",
    "OccurrenceConstraintViolation", "PropertyConstraintViolation", "ProtocolError", "RpcFrameworkError",
    "SecurityError", "TypeConstraintViolation"})
SPEC_ERROR_CODES: dict[str, frozenset[str]] = {
    "1.6": _CODES_201 - {"MessageTypeNotSupported", "RpcFrameworkError"},
    "2.0.1": _CODES_201,
    "2.1": _CODES_201,
}
OTHER_ERROR_CODE = "other"


def received_error_code_label(version: str, code: str) -> str:
    """The label value for an error code a charger sent: its canonical name if the version defines
    it, else one fixed value, so that chargers can never mint label values (README, Observability)."""
    canonical = canonical_code(code)
    return canonical if canonical in SPEC_ERROR_CODES.get(version, _CODES_201) else OTHER_ERROR_CODE
