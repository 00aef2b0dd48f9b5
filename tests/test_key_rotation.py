"""Key rotation of one charger (issue 14 item 3; 2.0.1 A01, 1.6 AuthorizationKey): a real charger over a websocket
to a running central system. Success (the new key works, the old one only until the new one was used), a charger
that rejects or never answers (the old key stays, the new one is refused), the old key mid-rotation, two
rotations in a row, an operator's password ending a rotation, and the sweep of rotations a stopped process left.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg
import pytest

from csms.security.secret import CredentialSecret, is_hmac
from csms.store import rotation as store
from csms.store.chargers import set_generated_password
from csms.store.registry import ChargePointSpec, add_charge_point
from tests.central import PASSWORD, RunningCentral, running_central
from tests.chargers import connect_charger
from tests.rotation_chargers import (
    Hanging16,
    KeyCharger16,
    KeyCharger201,
    Rejecting201,
    boot,
    db_row,
    rotations,
    status,
    steps,
)

pytestmark = pytest.mark.integration


async def _rotate(central: RunningCentral, cp_id: str, cls: type, version: str, password: str,
                  expect: int = 200) -> tuple[dict[str, Any], list[str]]:
    """Connect the charger with ``password``, ask for a rotation, return the answer and the keys it received."""
    async with connect_charger(central.ws_base, cp_id, version, password=password, cls=cls) as cp:
        await boot(cp, version)
        async with central.api() as api:
            reply = await api.post(f"/api/v1/charge-points/{cp_id}/credentials/rotate",
                                   json={"requested_by": "alice"})
        assert reply.status_code == expect, reply.text
        return reply.json(), list(cp.keys)


async def test_16_rotation_old_key_works_until_the_new_one_was_used(db_url: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_central(db_url) as central:
        await central.register("ROT-16")
        answer, keys = await _rotate(central, "ROT-16", KeyCharger16, "1.6", PASSWORD)
        (key,) = keys
        assert re.fullmatch(r"[0-9a-f]{40}", key)              # AuthorizationKey: 20 bytes as 40 hex digits
        assert answer["state"] == "accepted"
        assert answer["charger_status"] == "Accepted"
        assert answer["ocpp_version"] == "1.6"
        assert answer["requested_by"] == "operator:alice"
        assert steps(answer) == ["requested", "sent", "accepted"]
        assert answer["events"][0]["actor"] == "operator:alice"
        # Mid-rotation the old key still works (and is audited); the rotation stays in progress.
        assert await status(central.ws_base, "ROT-16", PASSWORD) == 101
        (now,) = await rotations(central, "ROT-16")
        assert now["state"] == "accepted"
        assert steps(now)[-1] == "old_key_login"
        # The first login with the new key, as the raw 20 bytes (1.6J §6.2.2), retires the old one.
        assert await status(central.ws_base, "ROT-16", bytes.fromhex(key)) == 101
        (done,) = await rotations(central, "ROT-16")
        assert done["state"] == "completed"
        assert done["completed_at"] is not None
        assert steps(done) == ["requested", "sent", "accepted", "old_key_login", "new_key_login", "old_key_retired"]
        assert await status(central.ws_base, "ROT-16", PASSWORD) == 401
        assert await status(central.ws_base, "ROT-16", key) == 101      # the hex text form too
        row = await db_row(db_url, "SELECT credential_hash, credential_origin, pending_credential_hash "
                                   "FROM charge_points WHERE id = 'ROT-16'")
        assert is_hmac(row["credential_hash"])
        assert row["credential_origin"] == "generated"
        assert row["pending_credential_hash"] is None
        # A01.FR.09: the key is in no log line of the CSMS (frames redacted; the websockets library's own frame
        # log is at WARNING in production, csms/run/logging_setup.py) and in no audit row.
        ours = [r.getMessage() for r in caplog.records if r.name.startswith("csms")]
        assert any("AuthorizationKey" in line for line in ours)      # the frame was logged, redacted
        assert not [line for line in ours if key in line]
        audit = await db_row(db_url, "SELECT string_agg(r::text, ' ') AS t FROM (SELECT * FROM "
                                     "credential_rotation_events) r")
        assert key not in audit["t"]


async def test_201_rotation_rejected_keeps_the_old_key(db_url: str) -> None:
    async with running_central(db_url) as central:
        await central.register("ROT-201R")
        answer, (key,) = await _rotate(central, "ROT-201R", Rejecting201, "2.0.1", PASSWORD)
        assert len(key) == 40
        assert answer["state"] == "rejected"
        assert answer["charger_status"] == "Rejected"
        assert steps(answer) == ["requested", "sent", "rejected"]
        assert await status(central.ws_base, "ROT-201R", key, "2.0.1") == 401
        assert await status(central.ws_base, "ROT-201R", PASSWORD, "2.0.1") == 101
        row = await db_row(db_url, "SELECT pending_credential_hash, pending_rotation_id FROM charge_points "
                                   "WHERE id = 'ROT-201R'")
        assert row["pending_credential_hash"] is None
        assert row["pending_rotation_id"] is None


async def test_rotation_timeout_keeps_the_old_key(db_url: str) -> None:
    async with running_central(db_url, call_timeout_s=1.0) as central:
        await central.register("ROT-TO")
        answer, (key,) = await _rotate(central, "ROT-TO", Hanging16, "1.6", PASSWORD)
        assert answer["state"] == "timeout"
        assert answer["charger_status"] is None
        assert steps(answer) == ["requested", "sent", "timeout"]
        assert await status(central.ws_base, "ROT-TO", key) == 401
        assert await status(central.ws_base, "ROT-TO", PASSWORD) == 101


async def test_two_rotations_in_a_row(db_url: str) -> None:
    async with running_central(db_url) as central:
        await central.register("ROT-2X")
        first, (key1,) = await _rotate(central, "ROT-2X", KeyCharger201, "2.0.1", PASSWORD)
        assert first["state"] == "accepted"
        # While the first is in progress (accepted, not used yet) a second one is refused; nothing is sent.
        second, keys = await _rotate(central, "ROT-2X", KeyCharger201, "2.0.1", PASSWORD, expect=409)
        assert second["detail"]["rotation_id"] == first["rotation_id"]
        assert keys == []
        # The charger comes back with the new key: the first ends, a second one may start (from that key).
        third, (key2,) = await _rotate(central, "ROT-2X", KeyCharger201, "2.0.1", key1)
        assert third["state"] == "accepted"
        assert key2 != key1
        history = await rotations(central, "ROT-2X")
        assert [r["state"] for r in history] == ["accepted", "completed"]
        assert await status(central.ws_base, "ROT-2X", PASSWORD, "2.0.1") == 401     # retired by the first rotation
        assert await status(central.ws_base, "ROT-2X", key1, "2.0.1") == 101         # still the current key
        assert await status(central.ws_base, "ROT-2X", key2, "2.0.1") == 101
        assert await status(central.ws_base, "ROT-2X", key1, "2.0.1") == 401
        assert [r["state"] for r in await rotations(central, "ROT-2X")] == ["completed", "completed"]


async def test_refusals(db_url: str) -> None:
    async with running_central(db_url) as central:
        await central.register("ROT-OFF")
        async with central.api() as api:
            offline = await api.post("/api/v1/charge-points/ROT-OFF/credentials/rotate")
            unknown = await api.post("/api/v1/charge-points/NOPE/credentials/rotate")
            unauthenticated = await api.post("/api/v1/charge-points/ROT-OFF/credentials/rotate",
                                             headers={"Authorization": "Bearer wrong-token-0123456789"})
        assert offline.status_code == 409
        assert "not connected" in offline.text
        assert unknown.status_code == 409          # connected nowhere: checked first, nothing recorded
        assert unauthenticated.status_code == 401
        assert await rotations(central, "ROT-OFF") == []


async def _pool(db_url: str) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    assert pool is not None
    return pool


async def test_operator_password_ends_a_rotation_and_stale_ones_are_swept(db_url: str) -> None:
    async with running_central(db_url) as central:
        await central.register("ROT-OP")
        await central.register("ROT-SW")
    secret = CredentialSecret(secret="test-credential-secret-0123456789abcdef")
    pool = await _pool(db_url)
    try:
        first = await store.request_rotation(pool, "ROT-OP", requested_by="operator:t")
        assert await store.mark_sent(pool, first, secret=secret, password="a" * 40, ocpp_version="1.6",
                                     actor="node:t")
        with pytest.raises(store.RotationConflict):
            await store.request_rotation(pool, "ROT-OP", requested_by="operator:t")
        assert await set_generated_password(pool, "ROT-OP", secret) is not None
        found = await store.rotation(pool, first)
        assert found is not None
        assert found["state"] == "cancelled"
        assert steps(found)[-1] == "cancelled"
        assert (await db_row(db_url, "SELECT pending_credential_hash FROM charge_points WHERE id = 'ROT-OP'")
                )["pending_credential_hash"] is None
        # A rotation a stopped process left 'sent': past every wait for its answer, any node ends it a timeout.
        stale = await store.request_rotation(pool, "ROT-SW", requested_by="operator:t")
        assert await store.mark_sent(pool, stale, secret=secret, password="b" * 40, ocpp_version="2.0.1",
                                     actor="node:t")
        assert await store.sweep_stale(pool, older_than_s=3600, actor="node:t") == 0
        await pool.execute("UPDATE credential_rotations SET updated_at = now() - interval '2 hours' WHERE id = $1",
                           stale)
        assert await store.sweep_stale(pool, older_than_s=3600, actor="node:t") == 1
        found = await store.rotation(pool, stale)
        assert found is not None
        assert found["state"] == "timeout"
        assert (await db_row(db_url, "SELECT pending_credential_hash FROM charge_points WHERE id = 'ROT-SW'")
                )["pending_credential_hash"] is None
        # A late "Accepted" after the sweep changes nothing (the key was discarded).
        assert await store.record_answer(pool, stale, outcome="accepted", actor="charger:ROT-SW") == "timeout"
        # Re-registering the charger with a new password ends its rotation too.
        third = await store.request_rotation(pool, "ROT-SW", requested_by="operator:t")
        assert await store.mark_sent(pool, third, secret=secret, password="c" * 40, ocpp_version="1.6",
                                     actor="node:t")
        await add_charge_point(pool, ChargePointSpec(id="ROT-SW", password="another-password-0123"))
        found = await store.rotation(pool, third)
        assert found is not None
        assert found["state"] == "cancelled"
    finally:
        await pool.close()
