"""Pure identity rules (csms.ocpp.identity) and the live connections' replacement rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from csms.gateway.live import LiveConnections
from csms.ocpp.identity import choose_subprotocol, parse_charge_point_id


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/ocpp/CP1", "CP1"),
        ("/ocpp/RDAM%20123", "RDAM 123"),      # R1: percent-decoded
        ("/ocpp/RDAM%7C123", "RDAM|123"),
        ("/ocpp/CP1?x=1", "CP1"),               # the query string is not part of the id
        ("/ocpp/" + "A" * 48, "A" * 48),
        ("/ocpp/" + "A" * 49, None),            # R2: at most 48 characters
        ("/ocpp/CP%3A1", None),                 # R2: no ':'
        ("/ocpp/", None),
        ("/ocpp/a/b", None),                    # the id is the last and only segment under the base
        ("/other/CP1", None),
        ("/ocppCP1", None),
        ("/ocpp/CP%00", None),                  # NUL cannot be stored
        ("/ocpp/%ff", None),                    # not UTF-8
    ],
)
def test_charge_point_id_from_path(path: str, expected: str | None) -> None:
    assert parse_charge_point_id(path, "/ocpp") == expected


def test_base_path_is_configurable() -> None:
    assert parse_charge_point_id("/ws/v1/CP9", "/ws/v1/") == "CP9"


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (["ocpp2.0.1", "ocpp1.6"], "ocpp2.0.1"),
        (["ocpp1.6", "ocpp2.0.1"], "ocpp1.6"),   # the client's order of preference, not ours
        (["ocpp1.5", "ocpp1.6"], "ocpp1.6"),
        (["ocpp1.5"], None),
        ([], None),
    ],
)
def test_subprotocol_follows_client_preference(offered: list[str], expected: str | None) -> None:
    assert choose_subprotocol(offered, ("ocpp2.0.1", "ocpp1.6")) == expected


@dataclass(eq=False)
class _Conn:
    charge_point_id: str


def test_old_connection_cleanup_never_unregisters_the_new_one() -> None:
    registry = LiveConnections()
    old: Any = _Conn("CP1")
    new: Any = _Conn("CP1")
    assert registry.add(old) is None
    assert id(registry.add(new)) == id(old)
    assert registry.remove(old) is False
    assert id(registry.get("CP1")) == id(new)
    assert registry.remove(new) is True
    assert registry.get("CP1") is None
