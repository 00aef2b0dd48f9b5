"""Operator command rules of the pure core (csms/ocpp/commands.py), without sockets: which command may be
sent in which registration state, payloads validated against the charger's version, and the
version-neutral shortcuts build payloads the official schemas accept."""

from __future__ import annotations

import pytest

from csms.ocpp import commands
from csms.ocpp.types import OCPP_VERSIONS, ocpp_version
from csms.ocpp.validation import validate


@pytest.mark.parametrize("version", OCPP_VERSIONS)
def test_shortcuts_build_valid_payloads_for_every_version(version: str) -> None:
    built = [commands.remote_start(version, evse_id=1, id_token="TAG1", remote_start_id=7),
             commands.remote_stop(version, transaction_id="42"),
             commands.reset(version, hard=True), commands.reset(version, hard=False),
             commands.change_availability(version, evse_id=0, operative=True),
             commands.change_availability(version, evse_id=2, operative=False)]
    for action, payload in built:
        commands.check_command(version=version, registration="Accepted", action=action, payload=payload)
        validate(version, action, payload)


def test_the_16_transaction_id_must_be_an_integer() -> None:
    assert commands.remote_stop("1.6", transaction_id="-1") == ("RemoteStopTransaction", {"transactionId": -1})
    with pytest.raises(commands.CommandRefused, match="integer"):
        commands.remote_stop("1.6", transaction_id="abc")
    assert commands.remote_stop("2.0.1", transaction_id="abc") == ("RequestStopTransaction",
                                                                    {"transactionId": "abc"})


@pytest.mark.parametrize(("registration", "action", "payload", "refused"), [
    ("Accepted", "Reset", {"type": "Soft"}, None),
    ("Accepted", "BootNotification", {}, "not a command the CSMS sends"),          # charger → CSMS only
    ("Rejected", "GetConfiguration", {}, "rejected"),                              # B03.FR.03, 1.6 §4.2 (R31)
    ("Pending", "Reset", {"type": "Soft"}, "only configuration and reports"),      # B02.FR.01/05 (R30)
    ("Pending", "GetConfiguration", {}, None),
    ("Pending", "TriggerMessage", {"requestedMessage": "BootNotification"}, None),
    ("Accepted", "Reset", {"type": "Sideways"}, "invalid Reset payload"),
])
def test_check_command_by_registration_and_payload(registration: str, action: str, payload: dict[str, object],
                                                   refused: str | None) -> None:
    if refused is None:
        commands.check_command(version="1.6", registration=registration, action=action, payload=payload)
        return
    with pytest.raises(commands.CommandRefused, match=refused):
        commands.check_command(version="1.6", registration=registration, action=action, payload=payload)


def test_ocpp_version_names_only_the_three_versions() -> None:
    assert [ocpp_version(v) for v in ("1.6", "2.0.1", "2.1")] == list(OCPP_VERSIONS)
    with pytest.raises(ValueError, match="not an OCPP version"):
        ocpp_version("1.5")
