"""Several gateway nodes as one system (issue 13 items 2-5): two ``csms serve`` processes on one database
and one broker (different node ids and ports) and ``csms ingest``, real Mosquitto and TimescaleDB.

A command through either node's API reaches the charger wherever it is connected; ``/connections`` is
fleet-wide; a charger that reconnects to the other node is taken over (one entry, no offline time); a
SIGKILLed node's chargers expire with its lease, answer 409 until they reconnect elsewhere, then 200,
and every acknowledged sample is stored once; a command the broker delivers twice reaches the charger once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import httpx
import pytest
import websockets

from csms.gateway.node_messages import CommandReply, CommandRequest, decode, encode
from csms.run.ports import free_port
from schemas.topics import node_commands_topic, node_replies_topic
from tests.central import PASSWORD
from tests.chargers import basic_auth, iso
from tests.harness import MosquittoService, PostgresService, make_shared_tmpdir
from tests.pipeline import Role, csms_ingest, prepare, stored_keys, wait_for_rows
from tests.replaying_charger import expected_keys, meter_values

pytestmark = pytest.mark.integration

TOKEN = "fleet-test-operator-token-0123456789"
LEASE_S, RENEW_S = 3.0, 1.0
CALL_TIMEOUT_S = 4.0
CHARGERS = ["FL-A1", "FL-B1", "FL-B2", "FL-B3", "FL-T1", "FL-R1", "FL-X1"]
START = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


@dataclass
class Node:
    role: Role
    node_id: str
    ocpp_port: int

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.ocpp_port}/ocpp"

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.role.http_port}",
                                 headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)

    async def connections(self) -> dict[str, dict[str, Any]]:
        async with self.api() as api:
            reply = await api.get("/api/v1/connections")
        assert reply.status_code == 200, reply.text
        return {c["charge_point_id"]: c for c in reply.json()}


def serve_node(workdir: Path, db_url: str, mqtt_url: str, node_id: str) -> Node:
    port = free_port()
    role = Role("serve-" + node_id, [
        "serve", "--database-url", db_url, "--mqtt-url", mqtt_url, "--ocpp-port", str(port), "--ocpp-host",
        "127.0.0.1", "--node-id", node_id, "--data-dir", str(workdir / f"state-{node_id}"), "--api-token", TOKEN,
        "--outbox-resend-after-s", "3", "--ping-interval-s", "0", "--handshake-burst-per-source", "100000",
        "--handshake-rate-per-source-per-s", "100000", "--lease-s", str(LEASE_S), "--lease-renew-s", str(RENEW_S),
        "--call-timeout-s", str(CALL_TIMEOUT_S), "--command-forward-margin-s", "3"], workdir)
    return Node(role, node_id, port)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = make_shared_tmpdir("csms-fleet-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def fleet_db(postgres: PostgresService) -> AsyncIterator[str]:
    url = postgres.create_database("fleet")
    await prepare(url, CHARGERS)
    try:
        yield url
    finally:
        postgres.drop_database(url)


@contextlib.asynccontextmanager
async def two_nodes(workdir: Path, db_url: str, mqtt_url: str, *, ingest: bool = True
                    ) -> AsyncIterator[tuple[Node, Node]]:
    a, b = serve_node(workdir, db_url, mqtt_url, "node-a"), serve_node(workdir, db_url, mqtt_url, "node-b")
    roles = [a.role, b.role] + ([csms_ingest(workdir, db_url, mqtt_url, node_id="ingest-f")] if ingest else [])
    for role in roles:
        role.start()
    try:
        for role in roles:
            await asyncio.to_thread(role.wait_healthy)
        for node in (a, b):
            await asyncio.to_thread(node.role.wait_log, "node link connected", 60)
        if ingest:
            await asyncio.to_thread(roles[2].wait_log, "ingest consuming", 60)
        yield a, b
    finally:
        for role in roles:
            role.stop()


async def eventually(check: Callable[[], Awaitable[bool]], *, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.2)


class FleetCharger:
    """A 1.6 charger that sends samples (again after a reconnect, until each is answered), answers the
    CSMS's commands (DataTransfer with a CALLERROR, UnlockConnector never) and records every one."""

    def __init__(self, cp_id: str, url: str, *, count: int = 0, day: int = 0, pace_s: float = 0.0) -> None:
        self.cp_id, self.url, self.count, self.pace_s = cp_id, url, count, pace_s
        self.start = START + timedelta(days=day)
        self.calls: list[tuple[str, str]] = []
        self.answered = 0
        self.reconnects = 0
        self.errors: list[str] = []
        self.may_reconnect = asyncio.Event()
        self.may_reconnect.set()
        self.stop = asyncio.Event()
        self.online = asyncio.Event()

    def received(self, action: str) -> int:
        return sum(1 for _, a in self.calls if a == action)

    async def run(self, deadline_s: float = 300.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        queue = deque(range(self.count))
        booted = False
        while not self.stop.is_set() and loop.time() < deadline:
            await asyncio.wait_for(self.may_reconnect.wait(), max(0.1, deadline - loop.time()))
            try:
                async with websockets.connect(f"{self.url}/{self.cp_id}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                              additional_headers=basic_auth(self.cp_id, PASSWORD), open_timeout=5,
                                              ping_interval=None, close_timeout=1) as ws:
                    pending: dict[str, asyncio.Future[list[Any]]] = {}
                    reader = asyncio.create_task(self._read(ws, pending))
                    try:
                        if not booted:
                            reply = await self._call(ws, pending, "BootNotification",
                                                     {"chargePointVendor": "Fleet", "chargePointModel": "F1"})
                            booted = reply[0] == 3
                            await self._call(ws, pending, "StatusNotification", {
                                "connectorId": 1, "status": "Available", "errorCode": "NoError",
                                "timestamp": iso(datetime.now(UTC))})
                        self.online.set()
                        while not self.stop.is_set():
                            if reader.done():
                                raise ConnectionError("closed by the server")
                            if not queue:
                                await asyncio.sleep(0.05)
                                continue
                            k = queue[0]
                            reply = await self._call(ws, pending, "MeterValues", meter_values(
                                1, self.start + timedelta(seconds=k), 1000 + 10 * k))
                            if reply[0] == 3:
                                queue.popleft()
                                self.answered += 1
                                await asyncio.sleep(self.pace_s)
                            else:
                                await asyncio.sleep(0.3)
                    finally:
                        self.online.clear()
                        reader.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await reader
            except (OSError, TimeoutError, websockets.ConnectionClosed, websockets.InvalidStatus,
                    websockets.InvalidHandshake) as exc:
                self.reconnects += 1
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                await asyncio.sleep(0.3)
        assert not queue, f"{self.cp_id}: {len(queue)} samples never answered; {self.errors[-3:]}"

    async def _call(self, ws: websockets.ClientConnection, pending: dict[str, asyncio.Future[list[Any]]],
                    action: str, payload: dict[str, Any]) -> list[Any]:
        message_id = uuid.uuid4().hex
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        pending[message_id] = future
        await ws.send(json.dumps([2, message_id, action, payload]))
        return await asyncio.wait_for(future, 10)

    async def _read(self, ws: websockets.ClientConnection, pending: dict[str, asyncio.Future[list[Any]]]) -> None:
        try:
            async for raw in ws:
                msg = json.loads(raw)
                if msg[0] == 2:
                    self.calls.append((msg[1], msg[2]))
                    if msg[2] == "DataTransfer":
                        await ws.send(json.dumps([4, msg[1], "NotSupported", "no vendor data here", {}]))
                    elif msg[2] != "UnlockConnector":
                        await ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))
                elif (future := pending.pop(msg[1], None)) is not None and not future.done():
                    future.set_result(msg)
        finally:
            for future in pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection closed"))


@contextlib.asynccontextmanager
async def running(*chargers: FleetCharger) -> AsyncIterator[asyncio.Future[list[None]]]:
    drive = asyncio.gather(*(c.run() for c in chargers))
    try:
        for c in chargers:
            await asyncio.wait_for(c.online.wait(), 60)
        yield drive
    finally:
        for c in chargers:
            c.stop.set()
            c.may_reconnect.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(drive, 60)


async def command(node: Node, cp: str, action: str, payload: dict[str, Any]) -> httpx.Response:
    async with node.api() as api:
        return await api.post(f"/api/v1/charge-points/{cp}/ocpp/{action}", json=payload)


# --------------------------------------------------------------------------- items 3, 4, 5 (fleet view)

async def test_commands_reach_chargers_on_the_other_node_and_connections_are_fleet_wide(
        workdir: Path, fleet_db: str, mosquitto: MosquittoService) -> None:
    async with two_nodes(workdir, fleet_db, mosquitto.url, ingest=False) as (a, b):
        on_a, on_b = FleetCharger("FL-A1", a.ws), FleetCharger("FL-B1", b.ws)
        async with running(on_a, on_b):
            async def both_listed() -> bool:
                views = [await a.connections(), await b.connections()]
                return all({cp: c["node_id"] for cp, c in v.items()} == {"FL-A1": "node-a", "FL-B1": "node-b"}
                           for v in views)
            await eventually(both_listed, what="both chargers listed with their node on both nodes")
            listed = await a.connections()
            assert listed["FL-B1"]["commands_waiting"] is None
            assert listed["FL-A1"]["commands_waiting"] == 0
            assert listed["FL-B1"]["ocpp_version"] == "1.6"
            assert listed["FL-B1"]["connection_epoch"] >= 1

            # Through A's API to the charger on B, and the other way round: the charger's answer comes back.
            reply = await command(a, "FL-B1", "ClearCache", {})
            assert reply.status_code == 200, reply.text
            assert reply.json()["response"] == {"status": "Accepted"}
            assert on_b.received("ClearCache") == 1
            assert on_a.received("ClearCache") == 0
            async with a.api() as api:
                reset = await api.post("/api/v1/charge-points/FL-B1/reset", json={"hard": False})
                assert reset.status_code == 200, reset.text
                assert on_b.received("Reset") == 1
                state = (await api.get("/api/v1/charge-points/FL-B1/state")).json()
                assert state["connection"]["node_id"] == "node-b"
                registry = {r["id"]: r["connected"] for r in (await api.get("/api/v1/charge-points")).json()}
                assert registry["FL-A1"]
                assert registry["FL-B1"]
                assert not registry["FL-X1"]
                # Connected nowhere: 409 at once, as on one node.
                nowhere = await api.post("/api/v1/charge-points/FL-X1/ocpp/ClearCache", json={})
                assert nowhere.status_code == 409
                assert "not connected" in nowhere.json()["detail"]
            back = await command(b, "FL-A1", "ClearCache", {})
            assert back.status_code == 200, back.text
            assert on_a.received("ClearCache") == 1

            # The charger's CALLERROR is a 502 and its silence a 504, whichever node is asked.
            error = await command(a, "FL-B1", "DataTransfer", {"vendorId": "acme"})
            assert error.status_code == 502, error.text
            assert error.json()["detail"]["error"] == "NotSupported"
            silent = await command(a, "FL-B1", "UnlockConnector", {"connectorId": 1})
            assert silent.status_code == 504, silent.text
            # Refused by the holder's protocol core (not a 1.6 command): 400, as locally.
            refused = await command(a, "FL-B1", "GetBaseReport", {"requestId": 1, "reportBase": "FullInventory"})
            assert refused.status_code == 400, refused.text
            assert on_b.received("GetBaseReport") == 0


async def test_a_charger_that_reconnects_to_the_other_node_is_taken_over(
        workdir: Path, fleet_db: str, mosquitto: MosquittoService) -> None:
    """FL-T1 connects to A, A's socket goes half-open, the charger connects to B: A closes its socket, one
    entry remains (on B), and the port's uptime shows no offline time while the newer connection lives."""
    cp = "FL-T1"
    async with two_nodes(workdir, fleet_db, mosquitto.url) as (a, b):
        began = datetime.now(UTC) - timedelta(seconds=1)
        first = await websockets.connect(f"{a.ws}/{cp}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                         additional_headers=basic_auth(cp, PASSWORD), ping_interval=None)
        db = await asyncpg.connect(fleet_db)
        try:
            for frame in ([2, "b", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}],
                          [2, "s", "StatusNotification", {"connectorId": 1, "status": "Available",
                                                          "errorCode": "NoError", "timestamp": iso(began)}]):
                await first.send(json.dumps(frame))
                assert json.loads(await asyncio.wait_for(first.recv(), 10))[0] == 3

            async def on_a() -> bool:
                return (await b.connections()).get(cp, {}).get("node_id") == "node-a"
            await eventually(on_a, what="the charger on A, seen from B")
            first.transport.pause_reading()  # half-open: it never answers A's close frame
            async with websockets.connect(f"{b.ws}/{cp}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                          additional_headers=basic_auth(cp, PASSWORD)) as second:
                await second.send(json.dumps([2, "h", "Heartbeat", {}]))
                assert json.loads(await asyncio.wait_for(second.recv(), 10))[0] == 3

                async def one_entry_on_b() -> bool:
                    views = [await a.connections(), await b.connections()]
                    return all(list(v) == [cp] and v[cp]["node_id"] == "node-b" for v in views)
                await eventually(one_entry_on_b, what="one entry, on node B, on both nodes")

                async def a_closed_its_socket() -> bool:
                    return bool(await db.fetchval(
                        "SELECT count(*) FROM connection_events WHERE charge_point_id = $1 AND event = "
                        "'disconnected' AND node_id = 'node-a' AND connection_epoch = 1", cp))
                await eventually(a_closed_its_socket, what="A's old socket closed and its disconnect stored")
                rows = await db.fetch("SELECT event, connection_epoch, node_id FROM connection_events "
                                      "WHERE charge_point_id = $1 AND event <> 'boot' ORDER BY time", cp)
                assert [(r["event"], r["connection_epoch"], r["node_id"]) for r in rows] == [
                    ("connected", 1, "node-a"), ("connected", 2, "node-b"), ("disconnected", 1, "node-a")]
                async with b.api() as api:
                    window = {"method": "generic", "from": iso(began), "to": iso(began + timedelta(hours=1))}
                    for _ in range(3):   # an offline outage would grow with time: look a few times
                        body = (await api.get(f"/api/v1/reporting/ports/{cp}/1/uptime", params=window)).json()
                        assert body["t_outage_min"] == 0, (rows, body)
                        await asyncio.sleep(0.5)
                    outages = (await api.get(f"/api/v1/reporting/ports/{cp}/1/outages",
                                             params={"from": window["from"], "to": window["to"]})).json()
                    assert outages["outages"] == [], outages
                assert list(await a.connections()) == [cp]
                sent = asyncio.create_task(command(a, cp, "ClearCache", {}))  # through A, to B's socket
                call = json.loads(await asyncio.wait_for(second.recv(), 15))
                assert call[::2] == [2, "ClearCache"], call
                await second.send(json.dumps([3, call[1], {"status": "Accepted"}]))
                reply = await asyncio.wait_for(sent, 30)
                assert reply.status_code == 200, reply.text
        finally:
            first.transport.abort()
            await db.close()


async def test_a_killed_node_expires_with_its_lease_and_its_chargers_move(
        workdir: Path, fleet_db: str, mosquitto: MosquittoService) -> None:
    """SIGKILL of B: its chargers leave /connections once its lease has expired (and are recorded
    disconnected, reason node_lost), commands to them answer 409 until they reconnect to A, then 200;
    every sample a charger got an answer for is stored once (B's outbox is sent when B is back)."""
    async with two_nodes(workdir, fleet_db, mosquitto.url) as (a, b):
        moving = [FleetCharger(cp, b.ws, count=150, day=i, pace_s=0.01)
                  for i, cp in enumerate(("FL-B1", "FL-B2", "FL-B3"))]
        staying = FleetCharger("FL-A1", a.ws, count=150, day=5, pace_s=0.01)
        fleet = [*moving, staying]
        ids = [c.cp_id for c in fleet]
        async with running(*fleet) as drive:
            await eventually(lambda: _all_listed(a, ids), what="every charger listed on A")
            await eventually(lambda: _answered(moving, 0.3), what="a third of B's samples answered")
            for c in moving:
                c.may_reconnect.clear()  # they stay away until the 409s are seen
            b.role.kill()

            async def b_expired() -> bool:
                listed = await a.connections()
                return set(listed) == {"FL-A1"}
            await eventually(b_expired, what="B's chargers gone from A's /connections")
            for c in moving:
                reply = await command(a, c.cp_id, "ClearCache", {})
                assert reply.status_code == 409, reply.text
            db = await asyncpg.connect(fleet_db)
            try:
                async def recorded_lost() -> bool:
                    return bool(await db.fetchval(
                        "SELECT count(DISTINCT charge_point_id) FROM connection_events WHERE node_id = 'node-b' "
                        "AND event = 'disconnected' AND reason = 'node_lost'") == len(moving))
                await eventually(recorded_lost, what="a node_lost disconnect stored for each of B's chargers")
            finally:
                await db.close()

            for c in moving:
                c.url = a.ws
                c.may_reconnect.set()

            async def moved() -> bool:
                listed = await a.connections()
                return all(listed.get(c.cp_id, {}).get("node_id") == "node-a" for c in moving)
            await eventually(moved, what="B's chargers reconnected to A")
            for c in moving:
                reply = await command(a, c.cp_id, "ClearCache", {})
                assert reply.status_code == 200, reply.text
                assert c.received("ClearCache") == 1
            await eventually(lambda: _answered(fleet, 1.0), what="every sample answered", timeout_s=180)
            b.role.start()  # its outbox holds what it answered but had not sent yet
            await asyncio.to_thread(b.role.wait_healthy)
            want = Counter(k for c in fleet for k in expected_keys(c.cp_id, c.start, c.count))
            got_n = await wait_for_rows(fleet_db, ids, len(want))
            got = Counter(await stored_keys(fleet_db, ids))
            assert got_n == len(want), (got_n, len(want), b.role.log()[-2000:])
            assert got == want  # every sample once: none missing, none doubled
            assert all(c.reconnects > 0 for c in moving)
            assert not drive.done() or drive.exception() is None


async def _all_listed(node: Node, ids: list[str]) -> bool:
    return set(await node.connections()) >= set(ids)


async def _answered(chargers: list[FleetCharger], share: float) -> bool:
    return all(c.answered >= share * c.count for c in chargers)


# --------------------------------------------------------------------------- item 4: at most once

async def test_a_command_the_broker_delivers_twice_reaches_the_charger_once(
        workdir: Path, fleet_db: str, mosquitto: MosquittoService) -> None:
    """The same command message published twice on B's command topic (what a QoS 1 redelivery does),
    then once more after it was answered: the charger gets one Reset; the answered duplicate gets the
    same reply again. A command past its deadline, or for an older connection, is not sent at all."""
    cp = "FL-R1"
    async with two_nodes(workdir, fleet_db, mosquitto.url, ingest=False) as (_, b):
        charger = FleetCharger(cp, b.ws)
        async with running(charger):
            async def registered() -> bool:
                return cp in await b.connections()
            await eventually(registered, what="the charger registered on B")
            epoch = (await b.connections())[cp]["connection_epoch"]
            replies: dict[str, list[CommandReply]] = {}
            reply_to = node_replies_topic("tester")

            def request(command_id: str, action: str, *, deadline_in_s: float = 30.0, at_epoch: int = epoch
                        ) -> bytes:
                return encode(CommandRequest(command_id=command_id, charge_point_id=cp, connection_epoch=at_epoch,
                                             action=action, payload={"type": "Soft"} if action == "Reset" else {},
                                             reply_to=reply_to, deadline=time.time() + deadline_in_s,
                                             timeout_s=30.0, origin="tester"))

            async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=f"tester-{uuid.uuid4().hex[:8]}") as mq:
                await mq.subscribe(reply_to, qos=1)

                async def collect() -> None:
                    async for message in mq.messages:
                        assert isinstance(message.payload, bytes)
                        reply = decode(message.payload)
                        assert isinstance(reply, CommandReply)
                        replies.setdefault(reply.command_id, []).append(reply)
                collector = asyncio.create_task(collect())

                async def replied(command_id: str, n: int = 1) -> None:
                    async def check() -> bool:
                        assert not collector.done(), collector
                        return len(replies.get(command_id, [])) >= n
                    await eventually(check, what=f"{n} replies to {command_id}")

                try:
                    topic = node_commands_topic("node-b")
                    await mq.publish(topic, request("reset-1", "Reset"), qos=1)
                    await mq.publish(topic, request("reset-1", "Reset"), qos=1)   # the redelivery
                    # Messages of one publisher on one topic arrive in order: once the marker is answered, the
                    # duplicate has been handled.
                    await mq.publish(topic, request("marker-1", "ClearCache"), qos=1)
                    await replied("marker-1")
                    await replied("reset-1")
                    await mq.publish(topic, request("reset-1", "Reset"), qos=1)   # redelivered after the answer
                    await mq.publish(topic, request("late-1", "Reset", deadline_in_s=-1.0), qos=1)
                    await mq.publish(topic, request("newer-1", "Reset", at_epoch=epoch + 1), qos=1)
                    await mq.publish(topic, request("older-1", "Reset", at_epoch=epoch - 1), qos=1)
                    await mq.publish(topic, request("marker-2", "ClearCache"), qos=1)
                    await replied("marker-2")
                    await replied("reset-1", 2)
                finally:
                    collector.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await collector
            assert charger.received("Reset") == 1, charger.calls
            assert charger.received("ClearCache") == 2
            first = replies["reset-1"][0]
            assert first.outcome == "ok"
            assert first.response == {"status": "Accepted"}
            # The in-flight duplicate got nothing (or, had the charger been quicker, the same reply).
            assert len(replies["reset-1"]) in (2, 3)
            assert all(r == first for r in replies["reset-1"])
            assert [r.outcome for r in replies["late-1"]] == ["expired"]
            # Only to the connection named: never to an older or newer socket (a restarted holder's, say).
            assert [r.outcome for r in replies["newer-1"]] == ["offline"]
            assert [r.outcome for r in replies["older-1"]] == ["offline"]
