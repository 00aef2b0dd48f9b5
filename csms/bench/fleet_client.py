"""One load-generator process driving many minimal OCPP 1.6 chargers for the benchmarks.

Deliberately small and independent of ``csms simulate``: each charger connects (Basic auth,
optionally offering permessage-deflate, from its own 127.0.0.x source address), sends
BootNotification and StatusNotification, optionally starts a transaction, then idles — or
sends 10-sample MeterValues on a schedule while a ``steady`` plan runs. A charger whose
connection drops (or is dropped on command) reconnects at once, then every 0.25–0.75 s
until it succeeds, and boots again; every accepted boot is time-stamped.

Configuration: one JSON argument (see ``Config``). Commands arrive as JSON lines on stdin,
results leave as JSON lines on stdout:

    (start)                                          → {"event": "ready", "booted", "missing", ...}
    {"cmd": "steady", "start_at", "duration_s", "interval_s"} → {"event": "steady", "latencies_ms", ...}
    {"cmd": "drop"}                                  → {"event": "dropped", "at"}  (TCP aborted, no close frame)
    {"cmd": "wait_booted", "since", "timeout_s"}     → {"event": "booted", "after_s": [...], "missing"}
    {"cmd": "close"}                                 → {"event": "closed"}, then the process exits

Every wait is bounded, and the process ends by itself after ``max_lifetime_s``.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from csms.bench.load import meter_values_frame

RETRY_DELAY_S = (0.25, 0.75)


class BootRefused(Exception):
    """The central system did not accept the BootNotification."""


@dataclass(frozen=True)
class Config:
    url: str                      # ws://127.0.0.1:PORT/ocpp
    prefix: str
    first: int                    # charger ids are PREFIX<first> … PREFIX<first+count-1>
    count: int
    password: str | None = None
    source: str = "127.0.0.1"     # local address to connect from
    deflate: bool = False         # offer permessage-deflate
    session: bool = False         # start a transaction after booting (MeterValues carry its id)
    connect_concurrency: int = 100
    call_timeout_s: float = 30.0
    ready_timeout_s: float = 300.0
    max_lifetime_s: float = 3600.0
    seed: int = 1


@dataclass
class Charger:
    cp_id: str
    phase: float                  # offset of this charger's MeterValues within the interval
    ws: ClientConnection | None = None
    boot_times: list[float] = field(default_factory=list)
    messages: int = 0
    energy_wh: int = 1000
    transaction_id: int = 1
    plan_generation: int = -1
    plan_k: int = 0
    deflate_negotiated: bool = False


@dataclass(frozen=True)
class Plan:
    generation: int
    start_at: float
    duration_s: float
    interval_s: float

    @property
    def end_at(self) -> float:
        return self.start_at + self.duration_s


@dataclass
class Steady:
    sent: int = 0
    ok: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)


class Fleet:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        rng = random.Random(cfg.seed)  # noqa: S311 - schedule jitter, reproducible on purpose
        self.chargers = [Charger(f"{cfg.prefix}{cfg.first + i}", rng.random()) for i in range(cfg.count)]
        self.slots = asyncio.Semaphore(cfg.connect_concurrency)
        self.closing = False
        self.plan: Plan | None = None
        self.generations = 0
        self.plan_changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.steady = Steady()
        self.outstanding = 0
        self.connect_failures = 0
        self.last_error = ""
        self.rng = rng

    # -- one charger ---------------------------------------------------------------------

    async def run_charger(self, ch: Charger) -> None:
        attempt = 0
        while not self.closing:
            if attempt:
                await asyncio.sleep(self.rng.uniform(*RETRY_DELAY_S))
            attempt += 1
            try:
                async with self.slots:
                    ws = await connect(
                        f"{self.cfg.url}/{ch.cp_id}", subprotocols=[Subprotocol("ocpp1.6")],
                        additional_headers=self._auth(ch.cp_id), compression="deflate" if self.cfg.deflate else None,
                        ping_interval=None, open_timeout=self.cfg.call_timeout_s, max_size=2**20,
                        local_addr=(self.cfg.source, 0))
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                self.connect_failures += 1
                self.last_error = repr(exc)[:200]
                continue
            ch.ws = ws
            ch.deflate_negotiated = bool(ws.protocol.extensions)
            try:
                await self._boot(ch, ws)
                attempt = 0
                await self._serve(ch, ws)
            except (ConnectionClosed, OSError, TimeoutError, BootRefused) as exc:
                self.last_error = repr(exc)[:200]
            finally:
                ch.ws = None
                ws.transport.abort()

    def _auth(self, cp_id: str) -> dict[str, str]:
        if not self.cfg.password:
            return {}
        token = base64.b64encode(f"{cp_id}:{self.cfg.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def _call(self, ch: Charger, ws: ClientConnection, action: str, payload: dict[str, Any]) -> Any:
        ch.messages += 1
        message_id = str(ch.messages)
        await ws.send(json.dumps([2, message_id, action, payload]))
        return await self._reply(ch, ws, message_id)

    async def _reply(self, ch: Charger, ws: ClientConnection, message_id: str) -> Any:
        async with asyncio.timeout(self.cfg.call_timeout_s):
            for _ in range(100):  # skip anything that is not our answer (a CSMS may call us meanwhile)
                msg = json.loads(await ws.recv())
                if msg[0] in (3, 4) and msg[1] == message_id:
                    return msg
        raise TimeoutError(f"no answer to message {message_id}")

    async def _boot(self, ch: Charger, ws: ClientConnection) -> None:
        reply = await self._call(ch, ws, "BootNotification", {"chargePointVendor": "Bench",
                                                              "chargePointModel": "Fleet"})
        status = reply[2].get("status", "Accepted") if reply[0] == 3 else "CallError"
        if status != "Accepted":
            raise BootRefused(status)
        await self._call(ch, ws, "StatusNotification", {"connectorId": 1, "errorCode": "NoError",
                                                        "status": "Preparing" if self.cfg.session else "Available"})
        if self.cfg.session:
            reply = await self._call(ch, ws, "StartTransaction", {
                "connectorId": 1, "idTag": "BENCHTAG", "meterStart": ch.energy_wh, "timestamp": _now_text()})
            if reply[0] == 3 and isinstance(reply[2].get("transactionId"), int):
                ch.transaction_id = reply[2]["transactionId"]
        ch.boot_times.append(time.time())
        del ch.boot_times[:-8]

    async def _serve(self, ch: Charger, ws: ClientConnection) -> None:
        """Idle, or send MeterValues while a plan runs, until the connection closes."""
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            while not self.closing:
                plan = self.plan
                due = self._next_send(ch, plan)
                if plan is None or due is None:
                    await asyncio.wait({closed, self.plan_changed}, return_when=asyncio.FIRST_COMPLETED)
                    if closed.done():
                        return
                    continue
                delay = due - time.time()
                if delay > 0:
                    await asyncio.wait({closed}, timeout=delay)
                    if closed.done():
                        return
                    if self.plan is not plan:
                        continue
                ch.plan_k += 1
                await self._meter_values(ch, ws)
        finally:
            closed.cancel()

    @staticmethod
    def _next_send(ch: Charger, plan: Plan | None) -> float | None:
        if plan is None:
            return None
        if ch.plan_generation != plan.generation:
            ch.plan_generation, ch.plan_k = plan.generation, 0
        due = plan.start_at + (ch.phase + ch.plan_k) * plan.interval_s
        return due if due < plan.end_at else None

    async def _meter_values(self, ch: Charger, ws: ClientConnection) -> None:
        ch.energy_wh += 25
        ch.messages += 1
        message_id = str(ch.messages)
        # The sample time is the moment of sending, to the microsecond: CALL→row committed is
        # measured in the database as commit timestamp minus sample time.
        frame = meter_values_frame(message_id, ch.transaction_id, ch.energy_wh, datetime.now(UTC), precise=True)
        started = time.perf_counter()
        self.steady.sent += 1
        self.outstanding += 1
        try:
            await ws.send(frame)
            reply = await self._reply(ch, ws, message_id)
        except (ConnectionClosed, OSError, TimeoutError):
            self.steady.errors += 1
            raise
        finally:
            self.outstanding -= 1
        self.steady.latencies_ms.append(round((time.perf_counter() - started) * 1000, 3))
        if reply[0] == 3:
            self.steady.ok += 1
        else:
            self.steady.errors += 1

    # -- commands --------------------------------------------------------------------------

    def booted(self, since: float) -> tuple[list[float], int]:
        after = []
        for ch in self.chargers:
            first = next((t for t in ch.boot_times if t >= since), None)
            if first is not None:
                after.append(round(first - since, 4))
        return sorted(after), len(self.chargers) - len(after)

    async def wait_booted(self, since: float, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            after, missing = self.booted(since)
            if not missing:
                break
            await asyncio.sleep(0.05)
        after, missing = self.booted(since)
        return {"event": "booted", "after_s": after, "missing": missing, "connect_failures": self.connect_failures,
                "last_error": self.last_error,
                "deflate_negotiated": sum(1 for c in self.chargers if c.deflate_negotiated and c.ws is not None)}

    def set_plan(self, plan: Plan | None) -> None:
        self.plan = plan
        changed, self.plan_changed = self.plan_changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)

    async def run_steady(self, start_at: float, duration_s: float, interval_s: float) -> dict[str, Any]:
        self.generations += 1
        self.steady = Steady()
        self.set_plan(Plan(self.generations, start_at, duration_s, interval_s))
        await asyncio.sleep(max(0.0, start_at + duration_s - time.time()))
        deadline = time.monotonic() + self.cfg.call_timeout_s + 1
        while self.outstanding and time.monotonic() < deadline:  # noqa: ASYNC110 - a bounded poll of a counter
            await asyncio.sleep(0.02)
        steady, self.steady = self.steady, Steady()
        self.set_plan(None)
        return {"event": "steady", "sent": steady.sent, "ok": steady.ok, "errors": steady.errors,
                "unanswered": self.outstanding, "latencies_ms": sorted(steady.latencies_ms)}

    def drop(self) -> float:
        at = time.time()
        for ch in self.chargers:
            if ch.ws is not None:
                ch.ws.transport.abort()
        return at


def _now_text() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}Z"


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def _commands() -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=2**20)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def main(cfg: Config) -> None:
    fleet = Fleet(cfg)
    reader = await _commands()
    started = time.time()
    async with asyncio.timeout(cfg.max_lifetime_s), asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(fleet.run_charger(ch), name=f"charger-{ch.cp_id}") for ch in fleet.chargers]
        ready = await fleet.wait_booted(started, cfg.ready_timeout_s)
        # Thousands of long-lived connection objects make every full garbage collection a pause of
        # hundreds of milliseconds that would be measured as latency; keep them out of the scans.
        gc.collect()
        gc.freeze()
        _emit({**ready, "event": "ready", "booted": len(ready.pop("after_s")),
               "connect_s": round(time.time() - started, 3)})
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = json.loads(line)
            if cmd["cmd"] == "steady":
                _emit(await fleet.run_steady(float(cmd["start_at"]), float(cmd["duration_s"]),
                                             float(cmd["interval_s"])))
            elif cmd["cmd"] == "drop":
                _emit({"event": "dropped", "at": fleet.drop()})
            elif cmd["cmd"] == "wait_booted":
                _emit(await fleet.wait_booted(float(cmd["since"]), float(cmd["timeout_s"])))
            elif cmd["cmd"] == "close":
                break
        fleet.closing = True
        fleet.set_plan(None)
        fleet.drop()  # the benchmark is over: no closing handshake for thousands of sockets
        for task in tasks:
            task.cancel()
    _emit({"event": "closed"})


if __name__ == "__main__":
    asyncio.run(main(Config(**json.loads(sys.argv[1]))))
