"""A charger that behaves like a real one when answers go missing: it keeps its unanswered
transaction messages and sends them again (with a new message id) after a reconnect."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import websockets

from tests.chargers import basic_auth, iso

MEASURANDS = (("Energy.Active.Import.Register", "Wh", None), ("Power.Active.Import", "W", None),
              ("Current.Import", "A", "L1"), ("Voltage", "V", "L1-N"))


def meter_values(connector: int, ts: datetime, energy_wh: int) -> dict[str, Any]:
    return {"connectorId": connector, "meterValue": [{"timestamp": iso(ts), "sampledValue": [
        {"value": str(v), "measurand": m, "unit": u, **({"phase": p} if p else {}), "context": "Sample.Clock"}
        for (m, u, p), v in zip(MEASURANDS, (energy_wh, 7400, 32, 230), strict=True)]}]}


def expected_keys(cp_id: str, start: datetime, count: int) -> set[tuple[str, datetime, str, str]]:
    return {(cp_id, start + timedelta(seconds=k), m, p or "") for k in range(count) for m, _, p in MEASURANDS}


@dataclass
class ReplayingCharger:
    url: str
    cp_id: str
    password: str
    start: datetime
    count: int
    pace_s: float = 0.0
    answered: int = 0
    reconnects: int = 0
    retries: int = 0
    booted: bool = False
    log: list[str] = field(default_factory=list)

    async def run(self, deadline_s: float = 180.0) -> None:
        queue = deque(range(self.count))
        deadline = time.monotonic() + deadline_s
        attempt = 0
        while queue and time.monotonic() < deadline:
            try:
                async with websockets.connect(f"{self.url}/{self.cp_id}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                              additional_headers=basic_auth(self.cp_id, self.password),
                                              open_timeout=5, ping_interval=None) as ws:
                    if not self.booted:
                        await ws.send(json.dumps([2, "boot", "BootNotification",
                                                  {"chargePointVendor": "Replay", "chargePointModel": "R1"}]))
                        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                        self.booted = reply[0] == 3 and reply[2]["status"] == "Accepted"
                    while queue:
                        k = queue[0]
                        attempt += 1
                        await ws.send(json.dumps([2, f"{self.cp_id}-{k}-{attempt}", "MeterValues",
                                                  meter_values(1, self.start + timedelta(seconds=k), 1000 + 10 * k)]))
                        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                        if reply[0] == 3:
                            queue.popleft()
                            self.answered += 1
                            if self.pace_s:
                                await asyncio.sleep(self.pace_s)
                        else:  # CALLERROR (e.g. InternalError: not durable): retry later (1.6 §3.7.1)
                            self.retries += 1
                            await asyncio.sleep(0.5)
            except (OSError, TimeoutError, websockets.ConnectionClosed, websockets.InvalidStatus,
                    websockets.InvalidHandshake) as exc:
                self.reconnects += 1
                self.log.append(f"{type(exc).__name__}: {exc}"[:200])
                await asyncio.sleep(0.3)
        if queue:
            raise AssertionError(f"{self.cp_id}: {len(queue)} messages never answered; last errors {self.log[-3:]}")
