"""Who a websocket is and which OCPP it speaks: the charge point id and subprotocol rules.

Identity comes from the last path segment, percent-decoded (OCPP-J 1.6 §3.1.1; 2.0.1
Part 4 §3.1.1); the subprotocol is chosen in the client's order of preference (2.1 Part 4
§3.1.2). Pure functions: the gateway applies them, tests check them without sockets.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import unquote

from csms.ocpp.types import ChargePointId, OcppVersion, ocpp_version

# OCPP-J subprotocol names (1.6J §3.1.2; 2.0.1 Part 4 §3.1.2; 2.1 Part 4 §3.1.2).
SUPPORTED_SUBPROTOCOLS: tuple[str, ...] = ("ocpp2.1", "ocpp2.0.1", "ocpp1.6")
MAX_ID_LENGTH = 48  # 2.0.1 identifierString (Part 4 §3.1.1); also the 1.6 limit we apply


def parse_charge_point_id(path: str, base_path: str) -> ChargePointId | None:
    """The charge point id from a request path, or None if the path is not ours or the id is invalid."""
    path = path.split("?", 1)[0]
    base = base_path.rstrip("/")
    if not path.startswith(base + "/"):
        return None
    raw = path[len(base) + 1:]
    if not raw or "/" in raw:
        return None
    try:
        cp_id = unquote(raw, errors="strict") if "%" in raw else raw
    except UnicodeDecodeError:
        return None
    if not valid_charge_point_id(cp_id):
        return None
    return ChargePointId(cp_id)


def valid_charge_point_id(cp_id: str) -> bool:
    """The one id rule, for the websocket path, the registry and the API alike."""
    # identifierString: at most 48 characters and no ':' since it is the Basic-auth
    # username (2.0.1 Part 4 §3.1.1; 2.1 makes it SHALL NOT). Control characters and
    # '/' cannot be a path segment's meaning; NUL would be rejected by PostgreSQL.
    return (0 < len(cp_id) <= MAX_ID_LENGTH and ":" not in cp_id and "/" not in cp_id
            and cp_id.isprintable())


def choose_subprotocol(offered: Sequence[str], supported: Sequence[str] = SUPPORTED_SUBPROTOCOLS) -> str | None:
    """The first subprotocol in the *client's* order of preference that we support (2.1 §3.1.2)."""
    for name in offered:
        if name in supported:
            return name
    return None


def ocpp_version_of(subprotocol: str) -> OcppVersion:
    """``ocpp2.0.1`` → ``2.0.1``."""
    return ocpp_version(subprotocol.removeprefix("ocpp"))
