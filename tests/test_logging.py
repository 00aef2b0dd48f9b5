"""Logging keeps its promises: the charger's id in every line, frames at DEBUG only, bounded and
with credentials redacted (issue 12 item 4)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import websockets

from csms.ocpp.redact import MAX_LOGGED_FRAME_CHARS, REDACTED, loggable_frame
from csms.run.logging_setup import configure_logging
from tests.central import PASSWORD, running_central
from tests.chargers import basic_auth


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_every_line_carries_the_charge_point_id_or_a_dash(restore_logging: None) -> None:
    configure_logging("INFO")
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    logging.LoggerAdapter(logging.getLogger("csms.gateway.connection"), {"charge_point_id": "CP-7"}).info("hello")
    logging.getLogger("csms.run.central").info("started")
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("csms.gateway.connection [CP-7]: hello")
    assert lines[1].endswith("csms.run.central [-]: started")


def test_credentials_are_redacted_in_logged_frames() -> None:
    change = json.dumps([2, "1", "ChangeConfiguration", {"key": "AuthorizationKey", "value": "0011223344556677"}])
    assert "0011223344556677" not in loggable_frame(change)
    assert REDACTED in loggable_frame(change)
    set_vars = json.dumps([2, "2", "SetVariables", {"setVariableData": [
        {"component": {"name": "SecurityCtrlr"}, "variable": {"name": "BasicAuthPassword"},
         "attributeValue": "s3cret-password-123"},
        {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}, "attributeValue": "60"}]}])
    logged = loggable_frame(set_vars)
    assert "s3cret-password-123" not in logged
    assert '"attributeValue":"60"' in logged          # only secrets go
    assert "hunter2" not in loggable_frame(json.dumps([2, "3", "DataTransfer", {"data": {"password": "hunter2"}}]))


def test_logged_frames_are_bounded_and_unreadable_ones_are_not_echoed() -> None:
    big = json.dumps([2, "1", "DataTransfer", {"vendorId": "V", "data": "x" * 100_000}])
    assert len(loggable_frame(big)) < MAX_LOGGED_FRAME_CHARS + 40
    assert loggable_frame(b"\xff\xfe secret") == "<9 unreadable bytes>"


@pytest.mark.integration
async def test_frames_are_logged_at_debug_only_with_the_password_redacted(db_url: str,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    async with running_central(db_url) as central:
        await central.register("LOG1")
        for level, expect_frames in ((logging.INFO, False), (logging.DEBUG, True)):
            caplog.clear()
            caplog.set_level(level, logger="csms.gateway")
            async with websockets.connect(f"{central.ws_base}/LOG1", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                          additional_headers=basic_auth("LOG1", PASSWORD)) as ws:
                await ws.send(json.dumps([2, "b", "BootNotification", {"chargePointVendor": "V",
                                                                       "chargePointModel": "M"}]))
                assert json.loads(await ws.recv())[0] == 3
                await ws.send(json.dumps([2, "c", "DataTransfer", {"vendorId": "V", "messageId": "x",
                                                                   "data": "plain"}]))
                await ws.recv()
            frames = [r for r in caplog.records if "BootNotification" in r.getMessage()]
            assert bool(frames) is expect_frames
            assert all(r.levelno == logging.DEBUG and getattr(r, "charge_point_id", None) == "LOG1" for r in frames)
        assert any('"data":"plain"' in r.getMessage() for r in caplog.records)
