"""A key rotation campaign (issue 14 item 3): three connected chargers (1.6 and 2.0.1) and one offline, sent at a
bounded rate, progress in the API until done, the chargers come back with their new keys, the metrics count it."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from tests.central import PASSWORD, RunningCentral, running_central
from tests.chargers import connect_charger
from tests.rotation_chargers import KeyCharger16, KeyCharger201, boot, db_row, status, wait_for

pytestmark = pytest.mark.integration

CHARGERS = {"CAM-A": "1.6", "CAM-B": "1.6", "CAM-C": "2.0.1"}


async def _campaign(central: RunningCentral, campaign_id: int) -> dict[str, Any]:
    async with central.api() as api:
        reply = await api.get(f"/api/v1/credentials/rotations/{campaign_id}")
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


async def _metric(central: RunningCentral, name: str) -> float | None:
    async with central.api() as api:
        text = (await api.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_campaign_over_three_chargers_reaches_done(db_url: str) -> None:
    async with running_central(db_url, rotation_campaign_per_s=2.0, rotation_poll_s=0.2) as central:
        for cp_id in (*CHARGERS, "CAM-OFF"):
            await central.register(cp_id)
        async with contextlib.AsyncExitStack() as stack:
            chargers = {}
            for cp_id, version in CHARGERS.items():
                cls = KeyCharger16 if version == "1.6" else KeyCharger201
                chargers[cp_id] = await stack.enter_async_context(
                    connect_charger(central.ws_base, cp_id, version, password=PASSWORD, cls=cls))
                await boot(chargers[cp_id], version)
            async with central.api() as api:
                refused = await api.post("/api/v1/credentials/rotations", json={})
                assert refused.status_code == 400                     # "all" must be said
                started = await api.post("/api/v1/credentials/rotations",
                                         json={"charge_point_ids": [*CHARGERS, "CAM-OFF"], "requested_by": "bob"})
                assert started.status_code == 202, started.text
                second = await api.post("/api/v1/credentials/rotations", json={"all": True})
            campaign_id = started.json()["campaign_id"]
            assert started.json()["total"] == 4
            assert started.json()["state"] == "running"
            assert second.status_code == 409                          # one campaign at a time

            async def finished() -> dict[str, Any] | None:
                found = await _campaign(central, campaign_id)
                return found if found["state"] == "done" else None

            done = await wait_for(finished, what="the campaign to be done")
            assert (done["counts"]["accepted"], done["counts"]["offline"]) == (3, 1), done
            keys = {cp_id: cp.keys[0] for cp_id, cp in chargers.items()}
        # The rate held: the k-th send (from 0) no earlier than k / rate after the campaign started (2 per second).
        sends = await db_row(db_url, "SELECT array_agg(extract(epoch FROM r.sent_at - c.requested_at)::float8 "
                                     "ORDER BY r.sent_at) AS s FROM credential_rotations r JOIN credential_campaigns c "
                                     "ON c.id = r.campaign_id WHERE r.campaign_id = $1 AND r.sent_at IS NOT NULL",
                             campaign_id)
        assert len(sends["s"]) == 3
        assert all(at >= k / 2.0 - 0.01 for k, at in enumerate(sends["s"])), sends["s"]
        # Each charger comes back with its new key; the old ones stop working.
        for cp_id, version in CHARGERS.items():
            assert await status(central.ws_base, cp_id, keys[cp_id], version) == 101
            assert await status(central.ws_base, cp_id, PASSWORD, version) == 401
        assert await status(central.ws_base, "CAM-OFF", PASSWORD) == 101     # offline: untouched
        completed = await _campaign(central, campaign_id)
        assert completed["counts"]["completed"] == 3
        assert completed["counts"]["offline"] == 1

        async def counted() -> bool:
            return await _metric(central, 'csms_credential_rotations_total{result="completed"}') == 3.0

        await wait_for(counted, what="csms_credential_rotations_total{result=completed} = 3")
        assert await _metric(central, 'csms_credential_rotations_total{result="offline"}') == 1.0
        assert await _metric(central, 'csms_credential_rotations_in_progress{state="accepted"}') == 0.0
