"""Key rotation: a new generated password sent to the charger, both keys accepted until it uses the new one
(issue 14 item 3; OCPP 2.0.1 A01 "Update Charging Station Password for HTTP Basic Authentication", 1.6 Security
Whitepaper ed. 3 §3.4 AuthorizationKey).

* ``KeyRotation.rotate`` (one charger, for the operator API) and ``RotationCampaigns`` (a fleet, at a bounded
  rate) send the key through the operator command path (``csms.gateway.remote``: this node's socket or the node
  holding the charger): 1.6 ChangeConfiguration AuthorizationKey (40 hex digits), 2.x SetVariables
  SecurityCtrlr.BasicAuthPassword (A01.FR.01). The frames are redacted in every log (A01.FR.09,
  ``csms.ocpp.redact``).
* Accepted (or RebootRequired): both keys are accepted at the handshake until the charger's first login with the
  new one, which retires the old (``csms.gateway.handshake``). Anything else (Rejected, a CALLERROR, no answer
  within ``call_timeout_s``, not connected) discards the new key: the old one stays (A01.FR.04).
* A01.FR.03 says to stop accepting the old key once the charger answers Accepted. We stop at its first login
  with the new key instead: the earliest moment the CSMS knows the charger holds it (a charger that accepted but
  reboots late, or whose answer raced its reconnect, is never locked out).

All state is in the database (``csms.store.rotation``): any node or worker may serve any step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from csms.common.errors import ChargerCommandError, ChargerOfflineError, ChargerTimeoutError
from csms.gateway import remote
from csms.gateway.fleet import DB_ERRORS
from csms.gateway.node_messages import RemoteNodeError
from csms.gateway.outgoing import ChargerCallError
from csms.gateway.remote import Routed, Target
from csms.security.credentials import generate_password_for
from csms.security.secret import CredentialKeyError, CredentialSecret
from csms.store import rotation as store

logger = logging.getLogger(__name__)

# The charger's answers that mean it holds the new key (now or after the reboot it asks for).
_TAKEN = frozenset({"Accepted", "RebootRequired"})
_CAMPAIGN_MAX_CLAIM_ROWS = 1000


class ChargerNotConnected(store.RotationError):
    """The charger is connected to no node: nothing was requested (a command is never queued)."""


def key_command(ocpp_version: str, password: str) -> tuple[str, dict[str, Any]]:
    """The call that sets a charger's Basic-auth password (1.6 Security Whitepaper §3.4; 2.0.1 A01.FR.01)."""
    if ocpp_version == "1.6":
        return "ChangeConfiguration", {"key": "AuthorizationKey", "value": password}
    return "SetVariables", {"setVariableData": [{
        "attributeType": "Actual", "attributeValue": password,
        "component": {"name": "SecurityCtrlr"}, "variable": {"name": "BasicAuthPassword"}}]}


def charger_status(ocpp_version: str, response: dict[str, Any]) -> str:
    """The status the charger answered (1.6 ChangeConfiguration.conf status, 2.x attributeStatus)."""
    if ocpp_version == "1.6":
        return str(response.get("status", ""))
    results = response.get("setVariableResult") or [{}]
    return str(results[0].get("attributeStatus", ""))


class RotationMetrics(Collector):
    """``csms_credential_rotations_total{result}`` (rotations ended, by result) and
    ``csms_credential_rotations_in_progress{state}``, read from the database: fleet-wide, the same on every
    process (aggregate with max, not sum)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(store.STATES, 0)

    def collect(self) -> Iterator[Metric]:
        ended = CounterMetricFamily("csms_credential_rotations", "credential rotations ended, by result "
                                    "(fleet-wide, from the database)", labels=["result"])
        active = GaugeMetricFamily("csms_credential_rotations_in_progress", "credential rotations in progress, by "
                                   "state (fleet-wide, from the database)", labels=["state"])
        for state in store.FINAL:
            ended.add_metric([state], self.counts.get(state, 0))
        for state in store.ACTIVE:
            active.add_metric([state], self.counts.get(state, 0))
        yield ended
        yield active

    async def refresh(self, pool: asyncpg.Pool) -> None:
        try:
            self.counts = await store.state_counts(pool)
        except DB_ERRORS as exc:
            logger.debug("credential rotation counts not read: %s", exc)


class KeyRotation:
    """Send one rotation and record how it ended."""

    def __init__(self, *, pool: asyncpg.Pool, gateway: Routed, secret: CredentialSecret) -> None:
        self._pool = pool
        self._gateway = gateway
        self._secret = secret

    async def rotate(self, charge_point_id: str, *, requested_by: str) -> dict[str, Any]:
        """One charger, now: the rotation as it stands after the charger's answer (or its timeout).

        Raises ChargerNotConnected (nothing recorded), RotationRefused, RotationConflict, RemoteNodeError,
        CredentialKeyError."""
        target = await remote.locate(self._gateway, charge_point_id)
        if target is None:
            raise ChargerNotConnected(f"charge point {charge_point_id} is not connected to any node")
        rotation_id = await store.request_rotation(self._pool, charge_point_id, requested_by=requested_by)
        await self.send(rotation_id, charge_point_id, target)
        found = await store.rotation(self._pool, rotation_id)
        assert found is not None
        return found

    async def send(self, rotation_id: int, charge_point_id: str, target: Target | None) -> str | None:
        """Send a rotation in state 'sending' (to ``target``; None: connected nowhere) and record the end of the
        call. Returns the rotation's state after it."""
        if target is None:
            return await store.record_answer(self._pool, rotation_id, outcome="offline", actor="csms",
                                             detail="not connected to any node")
        version = target.ocpp_version
        password = generate_password_for(version)
        via = f"node:{target.node_id}"
        try:
            if not await store.mark_sent(self._pool, rotation_id, secret=self._secret, password=password,
                                         ocpp_version=version, actor=via):
                return None
        except CredentialKeyError as exc:
            return await store.record_answer(self._pool, rotation_id, outcome="error", actor=via, detail=str(exc))
        action, payload = key_command(version, password)
        del password
        try:
            response = await remote.send(self._gateway, target, action, payload)
        except ChargerTimeoutError as exc:
            return await store.record_answer(self._pool, rotation_id, outcome="timeout", actor=via, detail=str(exc))
        except ChargerCallError as exc:
            return await store.record_answer(self._pool, rotation_id, outcome="error", actor=via,
                                             charger_status=exc.code, detail=exc.description)
        except ChargerOfflineError as exc:
            return await store.record_answer(self._pool, rotation_id, outcome="offline", actor=via, detail=str(exc))
        except (ChargerCommandError, RemoteNodeError) as exc:   # refused before sending, busy, node unreachable
            return await store.record_answer(self._pool, rotation_id, outcome="error", actor=via, detail=str(exc))
        status = charger_status(version, response)
        outcome = "accepted" if status in _TAKEN else "rejected"
        logger.info("charge point %s answered its key rotation %d: %s", charge_point_id, rotation_id, status)
        return await store.record_answer(self._pool, rotation_id, outcome=outcome, actor=f"charger:{charge_point_id}",
                                         charger_status=status)


class RotationCampaigns:
    """Every node runs this: it claims the running campaign's queued rotations at the campaign's rate (shared
    by every node through the database), sends them, sweeps the rotations a stopped process left on the wire,
    and refreshes the metrics. A restart loses only the calls in flight (swept as timeouts after
    ``sweep_after_s``); queued rotations are sent by whichever node claims them next."""

    def __init__(self, *, pool: asyncpg.Pool, gateway: Routed, secret: CredentialSecret, node_id: str,
                 max_rate_per_s: float, poll_s: float, sweep_after_s: float,
                 registry: CollectorRegistry | None = None) -> None:
        self._pool = pool
        self._rotation = KeyRotation(pool=pool, gateway=gateway, secret=secret)
        self._gateway = gateway
        self._actor = f"node:{node_id}"
        self._max_rate_per_s = max_rate_per_s
        self._poll_s = poll_s
        self._sweep_after_s = sweep_after_s
        self.metrics = RotationMetrics()
        if registry is not None:
            registry.register(self.metrics)
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="csms-credential-campaigns")

    async def close(self) -> None:
        """Stop claiming; rotations on the wire are cancelled (swept as timeouts later, by any node)."""
        tasks = [t for t in (self._task, *self._sending) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None

    async def step(self) -> int:
        """One round: sweep, claim and start sends, refresh the metrics. Returns rotations started."""
        claimed: list[tuple[int, str]] = []
        try:
            swept = await store.sweep_stale(self._pool, older_than_s=self._sweep_after_s, actor=self._actor)
            if swept:
                logger.warning("%d key rotations had no recorded answer (their process stopped): timeouts", swept)
            claimed = await store.claim_campaign_rotations(self._pool, max_rate_per_s=self._max_rate_per_s,
                                                           max_rows=_CAMPAIGN_MAX_CLAIM_ROWS)
        except DB_ERRORS as exc:
            logger.warning("credential campaign round failed (retried): %s", exc)
        for rotation_id, cp_id in claimed:
            task = asyncio.create_task(self._send_one(rotation_id, cp_id), name=f"csms-rotation-{rotation_id}")
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        await self.metrics.refresh(self._pool)
        return len(claimed)

    async def _run(self) -> None:
        while True:
            await self.step()
            await asyncio.sleep(self._poll_s)

    async def _send_one(self, rotation_id: int, cp_id: str) -> None:
        try:
            try:
                target = await remote.locate(self._gateway, cp_id)
            except RemoteNodeError as exc:
                await store.record_answer(self._pool, rotation_id, outcome="error", actor=self._actor,
                                          detail=str(exc))
                return
            await self._rotation.send(rotation_id, cp_id, target)
        except DB_ERRORS as exc:   # the sweeper ends it later
            logger.warning("key rotation %d of %s not recorded: %s", rotation_id, cp_id, exc)
