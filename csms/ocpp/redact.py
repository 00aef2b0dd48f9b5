"""Frames as they may appear in a DEBUG log: bounded, with credentials replaced.

A CSMS must not disclose charger credentials (2.0.1 A01.FR.09/A00.FR.205: the Basic-auth
password is write-only); they travel in 1.6 ChangeConfiguration ``AuthorizationKey``
(Security Whitepaper §3.4) and 2.x SetVariables ``SecurityCtrlr.BasicAuthPassword``
(A01), and as PEM private keys nowhere in OCPP — but a charger could send anything, so
any value under a key that names a secret is replaced too.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_LOGGED_FRAME_CHARS = 1000
REDACTED = "***"
_SECRET_VARIABLES = frozenset({"AuthorizationKey", "BasicAuthPassword"})
_SECRET_KEYS = frozenset({"password", "authorizationkey", "basicauthpassword", "privatekey"})


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > 40:
        return REDACTED
    if isinstance(value, list):
        return [_redact(v, depth + 1) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: (REDACTED if k.lower() in _SECRET_KEYS else _redact(v, depth + 1)) for k, v in value.items()}
    # 1.6 ChangeConfiguration {"key": "AuthorizationKey", "value": ...}
    if out.get("key") in _SECRET_VARIABLES and "value" in out:
        out["value"] = REDACTED
    # 2.x SetVariables/GetVariables/NotifyReport {"variable": {"name": "BasicAuthPassword"}, "attributeValue": ...}
    variable = value.get("variable")
    if isinstance(variable, dict) and variable.get("name") in _SECRET_VARIABLES:
        for key in ("attributeValue", "variableAttribute"):
            if key in out:
                out[key] = REDACTED
    return out


def loggable_frame(raw: str | bytes, max_chars: int = MAX_LOGGED_FRAME_CHARS) -> str:
    """The frame for a DEBUG line: secrets replaced, at most ``max_chars`` characters."""
    try:
        text = orjson.dumps(_redact(orjson.loads(raw))).decode()
    except (orjson.JSONDecodeError, TypeError, UnicodeDecodeError):
        # Unreadable frames carry no structure to redact: only their size is logged.
        return f"<{len(raw)} unreadable {'bytes' if isinstance(raw, bytes) else 'characters'}>"
    return text if len(text) <= max_chars else text[:max_chars] + f"… ({len(text)} characters)"
