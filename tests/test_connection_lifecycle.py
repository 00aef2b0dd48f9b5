"""A connection's life over real sockets: epochs, reachability, every exit path, stuck writers,
label values minted by chargers, and the log volume of rejected frames (issue 11 items 2, 3, 14,
19, 21, 22)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import random
import re
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from csms.common.log_budget import BudgetedLog
from csms.ocpp.errors import SPEC_ERROR_CODES, received_error_code_label
from tests.central import PASSWORD, RunningCentral, running_central
from tests.chargers import basic_auth, iso

BOOT16 = [2, "boot", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]
BOOT201 = [2, "boot", "BootNotification", {"chargingStation": {"model": "M", "vendorName": "V"},
                                           "reason": "PowerUp"}]
GENERATOR = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "generate.py"


def _grafana() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_generate", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float = 20, what: str = "") -> None:
    """Poll ``check`` until it is true; bounded in time (a busy machine is slow, never wrong)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


async def _open(central: RunningCentral, cp: str, version: str = "1.6", *, boot: bool = True,
                **kwargs: Any) -> ClientConnection:
    ws = await websockets.connect(f"{central.ws_base}/{cp}", subprotocols=[f"ocpp{version}"],  # type: ignore[list-item]
                                  additional_headers=basic_auth(cp, PASSWORD), **kwargs)
    if boot:
        await ws.send(json.dumps(BOOT16 if version == "1.6" else BOOT201))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert answer[0] == 3, answer
        assert answer[2]["status"] == "Accepted", answer
    return ws


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else r"(\{[^}]*\})?") + r" (\S+)"
    return sum(float(m.group(m.lastindex or 0)) for m in re.finditer("^" + pattern + "$", text, re.M))


def _label_values(text: str, name: str, label: str) -> set[str]:
    return set(re.findall("^" + re.escape(name) + r"\{[^}]*" + label + r'="([^"]*)"', text, re.M))


def _state_by_rule(events: list[tuple[str, int | None]]) -> str:
    """The README's rule, walked in time order: the state of the highest epoch seen so far."""
    current: int | None = None
    state = "disconnected"
    for event, epoch in events:
        if epoch is None:
            state = event  # rows stored before epochs existed: sequential, as before
        elif current is None or epoch > current:
            current, state = epoch, event
        elif epoch == current:
            state = event
        # an event of an older epoch (a replaced socket) changes nothing
    return state


# --------------------------------------------------------------------------- item 2


@pytest.mark.integration
async def test_replaced_connection_closing_late_leaves_the_charger_online(db_url: str,
                                                                         db: asyncpg.Connection) -> None:
    """The old socket of a charger that reconnected is half-open: its "disconnected" is stored after
    the new connection's "connected". The epochs say which connection each event belongs to, and
    the charger's state under the rule (and in the Grafana fleet panel) is online."""
    cp = "EPOCH-1"
    async with running_central(db_url) as central:
        await central.register(cp)
        old = await _open(central, cp)
        old.transport.pause_reading()  # half-open: it will never answer the server's close frame
        new = await _open(central, cp)

        async def new_connected_stored() -> bool:
            return bool(await db.fetchval(
                "SELECT count(*) FROM connection_events WHERE charge_point_id = $1 AND event = 'connected'",
                cp) == 2)
        await _eventually(new_connected_stored, what="the new connection's 'connected' row")
        old.transport.abort()  # only now does the old socket go away

        async def old_disconnected_stored() -> bool:
            return bool(await db.fetchval(
                "SELECT count(*) FROM connection_events WHERE charge_point_id = $1 AND event = 'disconnected'",
                cp) == 1)
        await _eventually(old_disconnected_stored, what="the old connection's 'disconnected' row")
        rows = await db.fetch("SELECT event, connection_epoch, time FROM connection_events "
                              "WHERE charge_point_id = $1 AND event <> 'boot' ORDER BY time", cp)
        assert [(r["event"], r["connection_epoch"]) for r in rows] == [
            ("connected", 1), ("connected", 2), ("disconnected", 1)]
        assert await db.fetchval("SELECT connection_epoch FROM charge_points WHERE id = $1", cp) == 2
        # The interleaving happened: by time alone the charger would look offline.
        assert rows[-1]["event"] == "disconnected"
        assert _state_by_rule([(r["event"], r["connection_epoch"]) for r in rows]) == "connected"
        grafana = _grafana()
        state = await db.fetchval(f"WITH {grafana.LATEST_CONNECTION_CTE} "
                                  "SELECT event FROM latest_connection WHERE charge_point_id = $1", cp)
        assert state == "connected"
        async with central.api() as api:
            listed = (await api.get("/api/v1/connections")).json()
        assert [c["charge_point_id"] for c in listed] == [cp]
        await new.close()

        async def closed_stored() -> bool:
            return bool(await db.fetchval(
                "SELECT count(*) FROM connection_events WHERE charge_point_id = $1 AND event = 'disconnected' "
                "AND connection_epoch = 2", cp) == 1)
        await _eventually(closed_stored, what="the new connection's 'disconnected' row")
    state = await db.fetchval(f"WITH {grafana.LATEST_CONNECTION_CTE} "
                              "SELECT event FROM latest_connection WHERE charge_point_id = $1", cp)
    assert state == "disconnected"


# --------------------------------------------------------------------------- item 3


async def _command_answered(api: httpx.AsyncClient, ws: ClientConnection, cp: str,
                            release: Callable[[], Awaitable[None]] | None = None) -> int:
    """Send ClearCache the moment the socket is open, answer it as the charger, return the HTTP status."""
    command = asyncio.create_task(api.post(f"/api/v1/charge-points/{cp}/ocpp/ClearCache", json={}))
    received = asyncio.create_task(ws.recv())
    done, _ = await asyncio.wait({command, received}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if received in done:
        call = json.loads(received.result())
        assert call[:1] + call[2:3] == [2, "ClearCache"], call
        await ws.send(json.dumps([3, call[1], {"status": "Accepted"}]))
    else:
        received.cancel()
    if release is not None:
        await release()
    return (await asyncio.wait_for(command, 15)).status_code


@pytest.mark.integration
async def test_a_command_right_after_the_websocket_opens_reaches_the_charger(db_url: str,
                                                                            db: asyncpg.Connection) -> None:
    """A charger whose socket is open is reachable at once. First while the database is slow to give
    a 2.0.1 charger its open transactions on connect (held by a table lock: what a busy machine
    does by chance), then over many reconnects of a 1.6 and a 2.0.1 charger that open the new
    socket while the old one is still open (R28): never a 409."""
    async with running_central(db_url) as central:
        for cp, version in (("REACH16", "1.6"), ("REACH201", "2.0.1")):
            await central.register(cp)
            await (await _open(central, cp, version)).close()  # Accepted once; kept across reconnects
        statuses: list[int] = []
        async with central.api() as api:
            for _ in range(5):
                lock = db.transaction()
                await lock.start()
                await db.execute("LOCK TABLE transactions IN ACCESS EXCLUSIVE MODE")
                ws = await _open(central, "REACH201", "2.0.1", boot=False)
                statuses.append(await _command_answered(api, ws, "REACH201", release=lock.commit))
                await ws.close()
            previous: ClientConnection | None = None
            for attempt in range(40):
                cp, version = ("REACH16", "1.6") if attempt % 4 < 2 else ("REACH201", "2.0.1")
                ws = await _open(central, cp, version, boot=False)
                statuses.append(await _command_answered(api, ws, cp))
                if previous is not None:
                    await previous.close()
                previous = ws if attempt % 2 == 0 else None
                if previous is None:
                    await ws.close()
    assert statuses == [200] * 45, statuses


@pytest.mark.integration
async def test_a_command_during_a_reconnect_handshake_goes_to_the_new_connection(db_url: str,
                                                                                db: asyncpg.Connection) -> None:
    """A command sent while the charger's new handshake is admitted but not yet open (held here in
    the connection-epoch allocation by a row lock) waits for the new connection instead of going to
    the old, half-open one, which is about to be replaced (409)."""
    cp = "MIDWAY"
    async with running_central(db_url, command_connect_wait_s=60.0) as central:
        await central.register(cp)
        old = await _open(central, cp)
        old.transport.pause_reading()  # half-open: never answers anything again
        lock = db.transaction()
        await lock.start()
        await db.execute("SELECT 1 FROM charge_points WHERE id = $1 FOR UPDATE", cp)
        connecting = asyncio.create_task(_open(central, cp, boot=False))

        async def handshake_waits_for_its_epoch() -> bool:
            # From another connection: pg_stat_activity is one snapshot per transaction.
            watcher = await asyncpg.connect(db_url)
            try:
                return bool(await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'UPDATE charge_points SET connection_epoch%'"))
            finally:
                await watcher.close()
        await _eventually(handshake_waits_for_its_epoch, what="the new handshake waiting for its epoch")
        async with central.api() as api:
            command = asyncio.create_task(api.post(f"/api/v1/charge-points/{cp}/ocpp/ClearCache", json={}))
            await asyncio.sleep(0.3)  # let the request arrive while the handshake is held (not an assertion)
            await lock.commit()
            new = await asyncio.wait_for(connecting, 15)
            received = asyncio.create_task(new.recv())
            done, _ = await asyncio.wait({command, received}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
            if received in done:
                call = json.loads(received.result())
                await new.send(json.dumps([3, call[1], {"status": "Accepted"}]))
            else:
                received.cancel()
            reply = await asyncio.wait_for(command, 15)
        assert reply.status_code == 200, reply.text
        old.transport.abort()
        await new.close()


# --------------------------------------------------------------------------- item 14


def _meter_values(i: int) -> str:
    return json.dumps([2, f"mv-{i}", "MeterValues", {"connectorId": 1, "meterValue": [
        {"timestamp": iso(datetime.now(UTC)), "sampledValue": [{"value": str(1000 + i)}]}]}])


@pytest.mark.integration
async def test_a_charger_leaving_with_its_call_queue_full_leaves_nothing_behind(db_url: str,
                                                                               db: asyncpg.Connection) -> None:
    """~150 pipelined data CALLs, then a close or a TCP abort: every time the handler ends, the
    disconnect is stored, the gauge is back to 0, and a command answers 409 (not 500)."""
    cp = "PIPELINE"
    tries = 8
    async with running_central(db_url) as central:
        await central.register(cp)
        async with central.api() as api:
            for attempt in range(tries):
                ws = await _open(central, cp, close_timeout=0.5)
                for i in range(150):
                    await ws.send(_meter_values(attempt * 1000 + i))
                if attempt % 2 == 0:
                    await ws.close()
                else:
                    ws.transport.abort()

                async def gone(attempt: int = attempt) -> bool:
                    listed = (await api.get("/api/v1/connections")).json()
                    metrics = (await api.get("/metrics")).text
                    stored = await db.fetchval("SELECT count(*) FROM connection_events WHERE charge_point_id = $1 "
                                               "AND event = 'disconnected'", cp)
                    return bool(listed == [] and _metric(metrics, "csms_chargers_connected") == 0
                                and stored == attempt + 1)
                await _eventually(gone, timeout_s=30, what=f"try {attempt}: handler ended and disconnect stored")
                reply = await api.post(f"/api/v1/charge-points/{cp}/reset", json={"hard": False})
                assert reply.status_code == 409, (attempt, reply.status_code, reply.text)
    samples = await db.fetchval("SELECT count(*) FROM meter_samples WHERE charge_point_id = $1", cp)
    distinct = await db.fetchval("SELECT count(DISTINCT value) FROM meter_samples WHERE charge_point_id = $1", cp)
    assert samples == distinct  # what was stored is stored once


# --------------------------------------------------------------------------- item 19


async def _connect_small_buffer(central: RunningCentral, cp: str) -> ClientConnection:
    """A charger whose TCP receive buffer is tiny, so that once it stops reading the server's
    writes back up quickly."""
    assert central.system.gateway is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", central.system.gateway.port))
    return await _open(central, cp, sock=sock, compression=None, max_queue=1, close_timeout=0.5,
                       max_size=2**23)


@pytest.mark.integration
async def test_a_charger_that_stops_reading_fails_commands_fast_with_409_or_504(db_url: str) -> None:
    cp = "DEAF"
    # 1.6 DataTransfer.data has no length limit: each command is a megabyte of incompressible text.
    blob = random.Random(7).randbytes(512 * 1024).hex()
    payload = {"vendorId": "test", "data": blob}
    async with running_central(db_url, call_timeout_s=1.0) as central:
        await central.register(cp)
        async with httpx.AsyncClient(base_url=central.http_base, timeout=60,
                                     headers={"Authorization": "Bearer test-operator-token-0123456789"}) as api:
            ws = await _connect_small_buffer(central, cp)
            ws.transport.pause_reading()  # the charger stops reading its socket
            commands = [api.post(f"/api/v1/charge-points/{cp}/ocpp/DataTransfer", json=payload) for _ in range(16)]
            replies = await asyncio.wait_for(asyncio.gather(*commands), 60)
            codes = [r.status_code for r in replies]
            assert set(codes) <= {504, 409}, [(r.status_code, r.text[:200]) for r in replies]
            # The first few fill the socket buffers and wait out the call timeout for an answer; then one
            # write waits out the call timeout, and the others are told at once that nothing gets through.
            assert sum("could not be written" in r.text for r in replies) == 1, [r.text[:200] for r in replies]
            assert sum("not reading" in r.text for r in replies) >= 10, [r.text[:200] for r in replies]
            fast = await api.post(f"/api/v1/charge-points/{cp}/ocpp/DataTransfer", json=payload)
            assert fast.status_code == 504, fast.text
            assert "not reading" in fast.text, fast.text
            # The charger reads again: what was written drains, and commands work again.
            ws.transport.resume_reading()

            async def answer_calls() -> None:
                async for raw in ws:
                    frame = json.loads(raw)
                    if frame[0] == 2:
                        await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
            answering = asyncio.create_task(answer_calls())
            reply: httpx.Response | None = None
            for _ in range(50):  # bounded: the backlog of a few MB drains in well under this
                reply = await api.post(f"/api/v1/charge-points/{cp}/ocpp/DataTransfer",
                                       json={"vendorId": "test"})
                if reply.status_code == 200:
                    break
                assert reply.status_code == 504, reply.text
                await asyncio.sleep(0.2)
            assert reply is not None
            assert reply.status_code == 200, reply.text
            # It stops reading again, then its connection dies with commands waiting: 409, never 500.
            answering.cancel()
            ws.transport.pause_reading()
            waiting = [asyncio.create_task(api.post(f"/api/v1/charge-points/{cp}/ocpp/DataTransfer", json=payload))
                       for _ in range(4)]
            await asyncio.sleep(0.3)
            ws.transport.abort()
            late = await asyncio.wait_for(asyncio.gather(*waiting), 60)
            assert {r.status_code for r in late} <= {504, 409}, [(r.status_code, r.text[:200]) for r in late]
            after = await api.post(f"/api/v1/charge-points/{cp}/ocpp/DataTransfer", json=payload)
            assert after.status_code == 409, after.text


# --------------------------------------------------------------------------- item 21


@pytest.mark.integration
async def test_callerror_codes_from_chargers_never_mint_label_values(db_url: str) -> None:
    cp = "MINTER"
    rng = random.Random(21)
    async with running_central(db_url) as central:
        await central.register(cp)
        ws = await _open(central, cp)

        async def answer_with_random_codes() -> None:
            async for raw in ws:
                frame = json.loads(raw)
                code = f"Vendor{rng.randrange(10**9)}"
                await ws.send(json.dumps([4, frame[1], code, "made up", {}]))
        answering = asyncio.create_task(answer_with_random_codes())
        async with central.api() as api:
            for _ in range(100):
                reply = await api.post(f"/api/v1/charge-points/{cp}/reset", json={"hard": False})
                assert reply.status_code == 502, reply.text
            metrics = (await api.get("/metrics")).text
        answering.cancel()
        await ws.close()
    codes = _label_values(metrics, "csms_ocpp_callerrors_received_total", "code")
    assert codes == {"other"}, codes
    assert _metric(metrics, "csms_ocpp_callerrors_received_total", 'code="other"') == 100


@pytest.mark.integration
async def test_spec_callerror_codes_keep_their_label_either_spelling(db_url: str) -> None:
    cp = "SPELLER"
    async with running_central(db_url) as central:
        await central.register(cp)
        ws = await _open(central, cp)
        codes = iter(["OccurenceConstraintViolation", "FormationViolation", "NotSupported", "RpcFrameworkError"])

        async def answer() -> None:
            async for raw in ws:
                frame = json.loads(raw)
                await ws.send(json.dumps([4, frame[1], next(codes), "", {}]))
        answering = asyncio.create_task(answer())
        async with central.api() as api:
            for _ in range(4):
                assert (await api.post(f"/api/v1/charge-points/{cp}/reset", json={})).status_code == 502
            metrics = (await api.get("/metrics")).text
        answering.cancel()
        await ws.close()
    # 1.6 spells two codes its own way (1.6J §4.2.3 Table 7); RpcFrameworkError is not a 1.6 code.
    assert _label_values(metrics, "csms_ocpp_callerrors_received_total", "code") == {
        "OccurrenceConstraintViolation", "FormatViolation", "NotSupported", "other"}


# --------------------------------------------------------------------------- item 22


@pytest.mark.integration
async def test_a_flood_of_rejected_frames_logs_a_bounded_number_of_info_lines(
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    cp = "GARBLER"
    caplog.set_level(logging.INFO, logger="csms.gateway.connection")
    async with running_central(db_url) as central:
        await central.register(cp)
        ws = await _open(central, cp, "2.0.1")
        for i in range(1000):
            await ws.send(f"}}{{ not json {i}")
        for _ in range(1000):
            answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert answer[:3] == [4, "-1", "RpcFrameworkError"], answer
        await ws.close()
        async with central.api() as api:
            async def closed() -> bool:
                return bool((await api.get("/api/v1/connections")).json() == [])
            await _eventually(closed, what="connection closed")
            metrics = (await api.get("/metrics")).text
    assert _metric(metrics, "csms_ocpp_messages_total", 'action="-",direction="in",outcome="rejected"') == 1000
    lines = [r for r in caplog.records if r.name == "csms.gateway.connection" and r.levelno == logging.INFO
             and "rejected" in r.getMessage()]
    assert len(lines) <= 10, [r.getMessage() for r in lines]
    # Every rejected frame is accounted for in the INFO lines: one each, or within an aggregate count.
    counted = 0
    for r in lines:
        match = re.search(r"(\d+) (?:more|further) frames? rejected", r.getMessage())
        counted += int(match.group(1)) if match else 1
    assert counted == 1000, [r.getMessage() for r in lines]


# --------------------------------------------------------------------------- pure parts, no sockets


def test_rejected_frame_log_keeps_a_few_lines_per_interval_and_counts_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = logging.LoggerAdapter(logging.getLogger("csms.gateway.connection"), {})
    rejected = BudgetedLog(log, "rejected frame from CP", summary="{n} more frames rejected from CP", interval_s=60,
                           per_interval=3, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="csms.gateway.connection")
    for i in range(100):
        now[0] = i * 1.0  # 100 frames over 100 s: two intervals
        rejected.event(f"bad {i}")
    rejected.flush()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert messages == ["rejected frame from CP: bad 0", "rejected frame from CP: bad 1",
                        "rejected frame from CP: bad 2", "57 more frames rejected from CP in 60 s (the last: bad 59)",
                        "rejected frame from CP: bad 60", "rejected frame from CP: bad 61",
                        "rejected frame from CP: bad 62", "37 more frames rejected from CP in 60 s (the last: bad 99)"]


@pytest.mark.parametrize(("version", "code", "label"), [
    ("1.6", "FormationViolation", "FormatViolation"),
    ("1.6", "OccurenceConstraintViolation", "OccurrenceConstraintViolation"),
    ("1.6", "RpcFrameworkError", "other"),  # not a 1.6 code (1.6J §4.2.3 Table 7)
    ("2.0.1", "RpcFrameworkError", "RpcFrameworkError"),
    ("2.0.1", "OccurenceConstraintViolation", "OccurrenceConstraintViolation"),  # either spelling on receipt
    ("2.1", "MessageTypeNotSupported", "MessageTypeNotSupported"),
    ("2.0.1", "NotImplemented ", "other"),
    ("2.0.1", "x" * 1000, "other"),
])
def test_received_error_codes_map_to_a_fixed_label_set(version: str, code: str, label: str) -> None:
    assert received_error_code_label(version, code) == label
    assert label in SPEC_ERROR_CODES[version] | {"other"}
