"""Offline time from connection epochs (issue 11 item 2): a replaced connection's late
"disconnected" never makes a connected charger offline, whatever the order the events are
stored in. The rule is one pure function (``csms.reporting.outages.offline_periods``); these
tests walk every interleaving, then check it through the real HTTP API."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import websockets

from csms.reporting.outages import (
    ConnectivityRow,
    PortTimeline,
    StatusChange,
    offline_intervals,
    offline_periods,
)
from csms.reporting.uptime import uptime
from tests.central import PASSWORD, running_central
from tests.chargers import basic_auth, iso

T0 = datetime(2026, 3, 2, tzinfo=UTC)
END = T0 + timedelta(hours=10)


def at(minute: int) -> datetime:
    return T0 + timedelta(minutes=minute)


def test_replaced_connections_late_disconnect_is_ignored() -> None:
    # Socket 2 replaces socket 1; socket 1's "disconnected" is stored after socket 2's "connected".
    rows = [(at(0), "connected", 1), (at(10), "connected", 2), (at(11), "disconnected", 1)]
    assert offline_periods(rows, END) == []
    # The same rows without epochs (stored before epochs existed) read in order, as before.
    assert offline_periods([(t, e) for t, e, _ in rows], END) == [(at(11), END)]


def test_normal_reconnect_counts_the_gap() -> None:
    rows: list[ConnectivityRow] = [(at(0), "connected", 1), (at(10), "disconnected", 1), (at(25), "connected", 2)]
    assert offline_periods(rows, END) == [(at(10), at(25))]
    assert offline_intervals(rows, END, timedelta(minutes=5)) == [(at(15), at(25))]
    assert offline_intervals(rows, END, timedelta(minutes=15)) == []


def test_a_newer_sockets_disconnect_before_its_connect_is_offline() -> None:
    # disconnected(e) with e above the current epoch: a newer socket closed (its "connected" was lost).
    rows: list[ConnectivityRow] = [(at(0), "connected", 1), (at(10), "disconnected", 2),
                                   (at(12), "disconnected", 1), (at(30), "connected", 3)]
    assert offline_periods(rows, END) == [(at(10), at(30))]


def test_a_stale_connect_of_a_replaced_socket_changes_nothing() -> None:
    rows: list[ConnectivityRow] = [(at(0), "connected", 2), (at(10), "disconnected", 2), (at(15), "connected", 1)]
    assert offline_periods(rows, END) == [(at(10), END)]


def test_equal_times_connect_first() -> None:
    assert offline_periods([(at(5), "disconnected", 1), (at(5), "connected", 1)], END) == [(at(5), END)]
    assert offline_periods([(at(5), "disconnected", 1), (at(5), "connected", 2)], END) == []


def test_legacy_rows_then_epochs() -> None:
    rows: list[ConnectivityRow] = [(at(0), "connected", None), (at(10), "disconnected", None),
                                   (at(20), "connected", 1), (at(30), "connected", 2), (at(31), "disconnected", 1)]
    assert offline_periods(rows, END) == [(at(10), at(20))]


def _offline_at(rows: list[tuple[datetime, str, int]], moment: datetime) -> bool:
    """The rule stated declaratively: at ``moment`` the charger is offline iff, among the events
    so far of the highest epoch seen so far, the latest is a "disconnected"."""
    seen = [r for r in rows if r[0] <= moment]
    if not seen:
        return False
    top = max(r[2] for r in seen)
    return max((r for r in seen if r[2] == top), key=lambda r: (r[0], r[1] != "connected"))[1] == "disconnected"


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_every_interleaving_of_two_sockets(order: tuple[int, ...]) -> None:
    """C1, D1 (socket 1) and C2, D2 (socket 2, the newer) stored in every time order."""
    events = [("connected", 1), ("disconnected", 1), ("connected", 2), ("disconnected", 2)]
    rows = [(at(10 * (n + 1)), *events[i]) for n, i in enumerate(order)]
    periods = offline_periods(rows, END)
    moments = sorted({r[0] for r in rows} | {END})
    expected: list[tuple[datetime, datetime]] = []
    for begin, end in itertools.pairwise(moments):
        if _offline_at(rows, begin):
            if expected and expected[-1][1] == begin:
                expected[-1] = (expected[-1][0], end)
            else:
                expected.append((begin, end))
    assert periods == expected, (order, periods)
    times = {(event, epoch): t for t, event, epoch in rows}
    # Socket 2 connected last of all: whatever socket 1 did, the charger ends online.
    if times[("connected", 2)] == max(times.values()):
        assert not periods or periods[-1][1] == times[("connected", 2)]
    # Socket 1 closing after socket 2 was seen never starts an outage.
    first_2 = min(times[("connected", 2)], times[("disconnected", 2)])
    if times[("disconnected", 1)] > first_2:
        assert all(start != times[("disconnected", 1)] for start, _ in periods)


def test_uptime_has_no_offline_outage_for_a_replaced_connection() -> None:
    window = (T0, END)
    timeline = PortTimeline(port_status=[StatusChange(at(0), "Available")],
                            connectivity=[(at(0), "connected", 7), (at(60), "connected", 8),
                                          (at(61), "disconnected", 7)])
    result = uptime(method="generic", timeline=timeline, window=window, opening=[window])
    assert result.t_outage_min == 0
    assert result.outages == []


# -- through the real HTTP API ---------------------------------------------------------------

async def _send(ws: websockets.ClientConnection, action: str, payload: dict[str, object]) -> None:
    await ws.send(json.dumps([2, f"m-{action}", action, payload]))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert reply[0] == 3, reply


async def _wait_rows(db: asyncpg.Connection, cp: str, count: int) -> list[asyncpg.Record]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        rows = await db.fetch("SELECT time, event, connection_epoch FROM connection_events WHERE charge_point_id = $1 "
                              "AND event <> 'boot' ORDER BY time", cp)
        if len(rows) >= count or loop.time() > deadline:
            return list(rows)
        await asyncio.sleep(0.05)


@pytest.mark.integration
async def test_stored_interleaving_shows_no_outage_in_port_uptime(db_url: str, db: asyncpg.Connection) -> None:
    """The rows as a replaced connection leaves them (old "disconnected" after the new
    "connected"), stored with their epochs: the port's uptime and outages show no offline time,
    also for a window starting after the late "disconnected" (the state at the window's start
    is the highest epoch's, not the latest row's)."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    async with running_central(db_url) as central:
        await central.register("EPO1", evses=1)
        await db.execute("INSERT INTO connector_status (time, charge_point_id, evse_id, connector_id, status, "
                         "received_at) VALUES ($1, 'EPO1', 1, 1, 'Available', $1)", start)
        for minutes_after, event, epoch in ((0, "connected", 1), (60, "connected", 2), (61, "disconnected", 1)):
            await db.execute("INSERT INTO connection_events (time, charge_point_id, event, node_id, connection_epoch) "
                             "VALUES ($1, 'EPO1', $2, 'n1', $3)", start + timedelta(minutes=minutes_after), event,
                             epoch)
        async with central.api() as api:
            base = "/api/v1/reporting/ports/EPO1/1"
            for begin in (start, start + timedelta(minutes=90)):
                window = {"method": "generic", "from": iso(begin), "to": iso(start + timedelta(hours=4))}
                body = (await api.get(f"{base}/uptime", params=window)).json()
                assert body["t_outage_min"] == 0, body
                assert body["uptime_pct"] == 100
                assert body["complete"] is False                 # the window reaches past now
                outages = (await api.get(f"{base}/outages", params={k: window[k] for k in ("from", "to")})).json()
                assert outages["outages"] == []
            # Without epochs (legacy rows) the same order is read as before: offline since minute 61.
            await db.execute("UPDATE connection_events SET connection_epoch = NULL WHERE charge_point_id = 'EPO1'")
            body = (await api.get(f"{base}/uptime", params={"method": "generic", "from": iso(start),
                                                             "to": iso(start + timedelta(hours=2))})).json()
            assert body["t_outage_min"] == 59


@pytest.mark.integration
async def test_reconnect_while_the_old_socket_is_open_shows_no_outage(db_url: str, db: asyncpg.Connection) -> None:
    """Through the gateway: a charger opens a second websocket while its first is still open
    (the gateway closes the first, OCPP R28); its "disconnected" is stored after the new
    "connected". The port's uptime must not count the connected charger as offline."""
    async with running_central(db_url) as central:
        await central.register("EPO2", evses=1)
        began = datetime.now(UTC) - timedelta(seconds=1)
        url = f"{central.ws_base}/EPO2"
        first = await websockets.connect(url, subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                         additional_headers=basic_auth("EPO2", PASSWORD))
        try:
            await _send(first, "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
            await _send(first, "StatusNotification", {"connectorId": 1, "status": "Available", "errorCode": "NoError",
                                                      "timestamp": iso(began)})
            async with websockets.connect(url, subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                          additional_headers=basic_auth("EPO2", PASSWORD)) as second:
                await _send(second, "Heartbeat", {})
                rows = await _wait_rows(db, "EPO2", 3)
                assert [r["event"] for r in rows].count("disconnected") == 1, rows
                async with central.api() as api:
                    window = {"method": "generic", "from": iso(began), "to": iso(began + timedelta(hours=1))}
                    for _ in range(3):   # an offline outage would grow with time: look a few times
                        body = (await api.get("/api/v1/reporting/ports/EPO2/1/uptime", params=window)).json()
                        assert body["t_outage_min"] == 0, (rows, body)
                        await asyncio.sleep(0.5)
                    outages = (await api.get("/api/v1/reporting/ports/EPO2/1/outages",
                                             params={"from": window["from"], "to": window["to"]})).json()
                    assert outages["outages"] == [], outages
        finally:
            await first.close()
