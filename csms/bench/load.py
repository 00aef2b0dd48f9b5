"""Closed-loop OCPP load: N connections, each with one CALL outstanding, for a bounded time.

Usage: python -m csms.bench.load URL CONNECTIONS SECONDS PREFIX PASSWORD(-|pw) [BOOT(0|1) [SAMPLES(10|1)]]
Prints one JSON line: {"messages": n, "errors": e, "seconds": s, "connected": c, "latencies_ms": {...}}.

With BOOT each charger boots, then starts a transaction (StartTransaction) and sends its
MeterValues with the transactionId it was given, as a charger in a charging session does; a
server that gives none (the baselines answer ``{}``) gets transactionId 1. Without BOOT the
MeterValues go at once, with transactionId 1.

The measured window starts once every connection is open (and booted): a server that makes
chargers wait at the door (csms's per-source share of the password-hashing threads answers
503 + Retry-After, as it should to 50 chargers from one address at once) is then measured with
all of them, like the others. Refused handshakes are tried again as a charger would, after the
server's Retry-After (bounded); one that still fails counts as an error.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any


def meter_values_frame(message_id: str, tx: int, energy_wh: int, at: datetime | None = None, *,
                       precise: bool = False, samples: int = 10) -> str:
    """A typical 1.6 MeterValues: 10 sampled values with context, measurand, location and unit.

    ``samples=1`` sends only the energy register (the smallest useful MeterValues, what many
    AC chargers send). The timestamp has milliseconds, as chargers send them, or
    microseconds with ``precise``.
    """
    now = at or datetime.now(UTC)
    fraction = f"{now.microsecond:06d}" if precise else f"{now.microsecond // 1000:03d}"
    ts = now.strftime("%Y-%m-%dT%H:%M:%S.") + fraction + "Z"

    def sv(value: str, measurand: str, unit: str, phase: str | None = None) -> dict[str, Any]:
        out = {"value": value, "context": "Sample.Periodic", "format": "Raw", "measurand": measurand,
               "location": "Outlet", "unit": unit}
        if phase:
            out["phase"] = phase
        return out

    sampled = [sv(str(energy_wh), "Energy.Active.Import.Register", "Wh"),
               sv("7400", "Power.Active.Import", "W"),
               *(sv("32.0", "Current.Import", "A", p) for p in ("L1", "L2", "L3")),
               *(sv("230.1", "Voltage", "V", p) for p in ("L1-N", "L2-N", "L3-N")),
               sv("32", "Current.Offered", "A"), sv("54", "SoC", "Percent")][:samples]
    payload = {"connectorId": 1, "transactionId": tx, "meterValue": [{"timestamp": ts, "sampledValue": sampled}]}
    return json.dumps([2, message_id, "MeterValues", payload])


RETRY_STATUSES = (429, 503)   # "come back later" (with Retry-After), not "you may not"
MAX_RETRY_WAIT_S = 2.0


async def _connect(url: str, headers: dict[str, str], give_up_at: float) -> Any:
    """Open the websocket; a 429/503 refusal is tried again after its Retry-After until ``give_up_at``."""
    import websockets
    from websockets.exceptions import InvalidStatus

    while True:
        try:
            return await websockets.connect(url, subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                            additional_headers=headers, compression=None, ping_interval=None,
                                            open_timeout=30)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status not in RETRY_STATUSES or time.monotonic() >= give_up_at:
                raise
            try:
                wait_s = float(exc.response.headers.get("Retry-After", "0.2"))
            except ValueError:
                wait_s = 0.2
            await asyncio.sleep(min(max(wait_s, 0.05), MAX_RETRY_WAIT_S, max(0.0, give_up_at - time.monotonic())))


async def _client(url: str, cp_id: str, password: str | None, boot: bool, stop_at: list[float],
                  counts: list[int], latencies: list[float], samples: int, ready: list[str],
                  connect_give_up_at: float) -> None:
    headers = {}
    if password:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{cp_id}:{password}".encode()).decode()
    async with await _connect(f"{url}/{cp_id}", headers, connect_give_up_at) as ws:
        if boot:
            await ws.send(json.dumps([2, "boot", "BootNotification", {"chargePointVendor": "Bench",
                                                                      "chargePointModel": "Load"}]))
            await ws.recv()
        n = 0
        energy = 1000
        last = datetime.now(UTC) - timedelta(seconds=1)
        tx = 1
        if boot:
            started = (last - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")  # before every sample
            await ws.send(json.dumps([2, "start", "StartTransaction", {"connectorId": 1, "idTag": "BENCHTAG",
                                                                       "meterStart": energy, "timestamp": started}]))
            reply = json.loads(await ws.recv())
            if reply[0] == 3 and isinstance(reply[2].get("transactionId"), int):
                tx = reply[2]["transactionId"]
        ready.append(cp_id)
        while time.monotonic() < stop_at[0]:
            n += 1
            energy += 25
            # Sample times strictly increase per charger, as a meter's do: two answers can come
            # back within one millisecond, and samples with the same key are the same sample.
            last = max(datetime.now(UTC), last + timedelta(milliseconds=1))
            frame = meter_values_frame(f"{cp_id}-{n}", tx, energy, last, samples=samples)
            sent = time.perf_counter()
            await ws.send(frame)
            reply = json.loads(await ws.recv())
            latencies.append(time.perf_counter() - sent)
            if reply[0] == 3:
                counts[0] += 1
            else:
                counts[1] += 1


async def run(url: str, connections: int, seconds: float, prefix: str, password: str | None, boot: bool,
              warmup_s: float = 1.0, samples: int = 10, connect_timeout_s: float = 60.0) -> dict[str, Any]:
    counts = [0, 0]
    latencies: list[float] = []
    ready: list[str] = []
    connect_give_up_at = time.monotonic() + connect_timeout_s
    stop_at = [connect_give_up_at + warmup_s + seconds]   # moved up once every connection is open
    tasks = [asyncio.create_task(_client(url, f"{prefix}{i}", password, boot, stop_at, counts, latencies,
                                         samples, ready, connect_give_up_at))
             for i in range(connections)]
    while len(ready) < connections and time.monotonic() < connect_give_up_at:
        if all(task.done() for task in tasks):
            break
        await asyncio.sleep(0.02)
    connected = len(ready)
    stop_at[0] = time.monotonic() + warmup_s + seconds
    await asyncio.sleep(warmup_s)
    base = counts[0]
    latencies.clear()   # the connect phase and the warm-up are not measured
    measured_from = time.monotonic()
    print(json.dumps({"marker": "measuring"}), flush=True)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.monotonic() - measured_from
    failures = [r for r in results if isinstance(r, BaseException)]
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 3) if latencies else 0.0

    return {"messages": counts[0] - base, "total_ok": counts[0], "errors": counts[1] + len(failures),
            "seconds": round(elapsed, 3), "connected": connected,
            "latencies_ms": {"p50": pct(0.5), "p99": pct(0.99)},
            "first_failure": repr(failures[0])[:200] if failures else None}


def main() -> None:
    url, conns, seconds, prefix, password = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], \
        sys.argv[5]
    boot = len(sys.argv) > 6 and sys.argv[6] == "1"
    samples = int(sys.argv[7]) if len(sys.argv) > 7 else 10
    result = asyncio.run(run(url, conns, seconds, prefix, None if password == "-" else password, boot,  # noqa: S105
                             samples=samples))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
