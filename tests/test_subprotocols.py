"""Subprotocol negotiation and duplicate connections, over real sockets."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, cast

import pytest
import websockets

from tests.central import PASSWORD, running_central
from tests.chargers import basic_auth

pytestmark = pytest.mark.integration


async def test_client_order_is_honoured_and_no_match_means_101_then_close(db_url: str) -> None:
    async with running_central(db_url) as central:
        await central.register("SUB")
        auth = basic_auth("SUB", PASSWORD)
        url = f"{central.ws_base}/SUB"
        for offered, chosen in ((["ocpp1.6", "ocpp2.0.1"], "ocpp1.6"), (["ocpp2.0.1", "ocpp1.6"], "ocpp2.0.1"),
                                (["ocpp2.1", "ocpp2.0.1"], "ocpp2.1"), (["ocpp1.5", "ocpp2.0.1"], "ocpp2.0.1")):
            async with websockets.connect(url, subprotocols=offered, additional_headers=auth) as ws:  # type: ignore[arg-type]
                assert ws.subprotocol == chosen
        for offered_or_none in (["ocpp1.5", "soap"], None):
            # The handshake completes (101) without a Sec-WebSocket-Protocol header, then the
            # server closes (1.6J §3.2; 2.0.1 Part 4 §3.2) — not websockets' default HTTP 400.
            async with websockets.connect(url, subprotocols=offered_or_none,  # type: ignore[arg-type]
                                          additional_headers=auth) as ws:
                assert ws.response is not None
                assert ws.response.status_code == 101
                assert "Sec-WebSocket-Protocol" not in ws.response.headers
                with pytest.raises(websockets.ConnectionClosedError) as info:
                    await asyncio.wait_for(ws.recv(), 5)
                assert info.value.rcvd is not None
                assert info.value.rcvd.code == 1002


async def test_a_new_connection_replaces_the_old_one(db_url: str) -> None:
    async with running_central(db_url) as central:
        await central.register("DUP")
        auth = basic_auth("DUP", PASSWORD)
        url = f"{central.ws_base}/DUP"
        old = await websockets.connect(url, subprotocols=["ocpp1.6"], additional_headers=auth)  # type: ignore[list-item]
        await old.send(json.dumps([2, "b", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]))
        assert json.loads(await old.recv())[2]["status"] == "Accepted"
        new = await websockets.connect(url, subprotocols=["ocpp1.6"], additional_headers=auth)  # type: ignore[list-item]
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(old.recv(), 5)
        # Wait until the old connection's clean-up has run (its close is counted), not a fixed time.
        async with central.api() as api:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                metrics = (await api.get("/metrics")).text
                if any(line.startswith("csms_connections_closed_total{") and float(line.split()[-1]) >= 1
                       for line in metrics.splitlines()):
                    break
                await asyncio.sleep(0.05)
        assert central.system.gateway is not None
        live = central.system.gateway.live.get("DUP")
        assert live is not None
        assert cast(Any, live.socket).remote_address == new.local_address
        await new.send(json.dumps([2, "h", "Heartbeat", {}]))
        assert json.loads(await asyncio.wait_for(new.recv(), 5))[:2] == [3, "h"]
        # The handshake's headers are not kept for the connection's life (issue 15), and it works on.
        server_side = cast(Any, live.socket)
        assert len(server_side.request.headers) == 0
        assert server_side.response is None
        async with central.api() as api:
            pending = asyncio.create_task(api.post("/api/v1/charge-points/DUP/ocpp/ClearCache", json={}))
            # The command goes to the new socket: answer it there.
            frame = json.loads(await asyncio.wait_for(new.recv(), 5))
            assert frame[2] == "ClearCache"
            await new.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
            reply = await pending
            assert reply.status_code == 200
            assert reply.json()["response"] == {"status": "Accepted"}
        await new.close()
