"""docs/ocpp-coverage.md is what the code says (handler tables, directions, CSMS_ACTIONS), and the
direction table itself agrees with the official schemas: the coverage table cannot drift."""

from __future__ import annotations

import asyncio
from pathlib import Path

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


def test_minimal_instance_follows_refs_types_and_bounds() -> None:
    schema = {
        "definitions": {"Kind": {"type": "string", "enum": ["Second", "First"]}},
        "type": "object",
        "required": ["kind", "when", "count", "ratio", "flag", "items", "either"],
        "properties": {
            "kind": {"$ref": "#/definitions/Kind"},
            "when": {"type": "string", "format": "date-time"},
            "count": {"type": "integer", "minimum": 3},
            "ratio": {"type": "number"},
            "flag": {"type": "boolean"},
            "items": {"type": "array", "minItems": 2, "items": {"type": "string"}},
            "either": {"type": ["integer", "null"]},
            "optional": {"type": "string"},
        },
    }
    assert coverage.minimal_instance(schema) == {
        "kind": "Second", "when": "2024-06-01T12:00:00.000Z", "count": 3, "ratio": 0.0, "flag": False,
        "items": ["x", "x"], "either": 0}
    with pytest.raises(ValueError, match="unhandled schema node"):
        coverage.minimal_instance({"type": "null"})


def test_the_probe_reports_a_handler_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(ctx: object, payload: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setitem(HANDLERS["1.6"], "Heartbeat", broken)
    stored, answer = asyncio.run(coverage._probe("1.6", "Heartbeat"))
    assert (stored, answer) == ("?", "(not probed: RuntimeError)")


def test_the_command_line_prints_writes_and_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "ocpp-coverage.md"
    monkeypatch.setattr(coverage, "DOC_PATH", target)
    assert coverage.main(["--check"]) == 1            # missing file: out of date
    assert "out of date" in capsys.readouterr().err
    assert coverage.main(["--write"]) == 0
    assert target.read_text(encoding="utf-8") == coverage.generate()
    assert coverage.main(["--check"]) == 0
    target.write_text("stale\n", encoding="utf-8")
    assert coverage.main(["--check"]) == 1
    capsys.readouterr()
    assert coverage.main([]) == 0
    assert capsys.readouterr().out == coverage.generate()
