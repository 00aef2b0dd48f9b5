"""docs/ocpp-coverage.md is what the code says (handler tables, directions, CSMS_ACTIONS), and the
direction table itself agrees with the official schemas: the coverage table cannot drift."""

from __future__ import annotations

import pytest

from csms.ocpp import commands, coverage, directions
from csms.ocpp.session import HANDLERS
from csms.ocpp.types import OCPP_VERSIONS
from csms.ocpp.validation import known_actions


def test_the_coverage_document_is_what_the_code_generates() -> None:
    assert coverage.DOC_PATH.read_text(encoding="utf-8") == coverage.generate(), (
        "docs/ocpp-coverage.md is out of date: run python -m csms.ocpp.coverage --write")
    assert coverage.main(["--check"]) == 0


@pytest.mark.parametrize("version", OCPP_VERSIONS)
def test_every_known_action_has_a_direction(version: str) -> None:
    known = known_actions(version)
    charger, csms = directions.charger_actions(version), directions.csms_actions(version)
    assert charger <= known
    assert charger | csms == known
    assert charger & csms == directions.BOTH_WAYS & known == {"DataTransfer"}


@pytest.mark.parametrize("version", OCPP_VERSIONS)
def test_every_charger_action_is_handled_and_commands_go_to_the_charger(version: str) -> None:
    assert set(HANDLERS[version]) == directions.charger_actions(version)
    assert commands.CSMS_ACTIONS[version] <= directions.csms_actions(version)


def test_21_is_its_own_version() -> None:
    new_21 = known_actions("2.1") - known_actions("2.0.1")
    assert directions.charger_actions("2.1") - directions.charger_actions("2.0.1") == {
        "BatterySwap", "ClosePeriodicEventStream", "GetCertificateChainStatus", "NotifyDERAlarm",
        "NotifyDERStartStop", "NotifyPeriodicEventStream", "NotifyPriorityCharging", "NotifySettlement",
        "OpenPeriodicEventStream", "PullDynamicScheduleUpdate", "ReportDERControl", "VatNumberValidation"}
    assert not (set(HANDLERS["2.0.1"]) & new_21)
    text = coverage.generate()
    assert "| NotifySettlement | yes | settlements | {} |" in text
    assert "| NotifyPeriodicEventStream | yes | periodic_stream_samples | none: a SEND is never answered" in text
