"""Certificate signing, renewal and security events on the gateway side: ``SecurityServices`` for the handlers.

* **Signing** (2.0.1 A02/A03; 1.6 Security Whitepaper §3.2). ``submit_csr`` records the request before the
  SignCertificate answer (a refusal with its reason) and queues an accepted one (bounded; a full queue is a
  Rejected answer). One task, ``csms-certificate-signer``, signs off the event loop, stores the certificate,
  then sends CertificateSigned on the charger's connection and records its answer. The handler's answer
  carries no bus event, so it is written to the socket before this task can run: the charger always sees
  its SignCertificateResponse first (the one exception is a tolerated schema violation, whose record is
  published first; the signing in a thread makes the CertificateSigned follow it in practice).
* **Renewal**. ``csms-certificate-renewal`` wakes every ``renewal_check_interval_s``: it sets the fleet
  gauges (chargers whose current certificate expires within the lead time, the soonest expiry), then, for
  chargers connected to this process whose certificate expires within the lead time and that were not asked
  within one interval, sends TriggerMessage SignChargingStationCertificate (2.x, A03) / ExtendedTriggerMessage
  SignChargePointCertificate (1.6), at most ``renewal_rate_per_s``.
* **Security events** (A04) are stored before the answer (the charger's data), once per notification, and
  counted: ``csms_security_events_total{type,critical}`` (type: the standardized names or "Other").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge

from csms.common.errors import ChargerCommandError
from csms.gateway.connection import ChargerConnection
from csms.gateway.server import Gateway
from csms.ocpp.certificates import CsrPolicy, SecurityEvent, SignDecision, SignRequest
from csms.ocpp.handlers_security import CRITICAL_EVENTS, event_label
from csms.security.ca import OperatorCa, describe
from csms.store import certificates as store
from csms.store.security_events import store_event

logger = logging.getLogger(__name__)

_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
_STATION = "ChargingStationCertificate"
_PRESENTED_REMEMBERED = 200_000   # ~100 bytes each
_PRESENTED_REFRESH_S = 3600.0      # last_presented_at is kept to the hour: one upsert per charger and hour at most


@dataclass(frozen=True, slots=True)
class CertificateMetrics:
    sign_requests: Counter
    certificates_signed: Counter
    renewal_triggers: Counter
    expiring: Gauge
    soonest_expiry: Gauge
    security_events: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> CertificateMetrics:
        metrics = cls._create(registry)
        for event_type in CRITICAL_EVENTS:   # present from the start, so that increase() sees the first one
            metrics.security_events.labels(event_type, "true")
        return metrics

    @classmethod
    def _create(cls, registry: CollectorRegistry) -> CertificateMetrics:
        return cls(
            sign_requests=Counter("csms_certificate_sign_requests_total",
                                  "SignCertificate requests, by how they were answered", ["status"],
                                  registry=registry),
            certificates_signed=Counter("csms_certificates_signed_total",
                                        "Certificates signed and sent with CertificateSigned, by the charger's "
                                        "answer (Accepted, Rejected, not_delivered)", ["outcome"], registry=registry),
            renewal_triggers=Counter("csms_certificate_renewal_triggers_total",
                                     "Renewal triggers (TriggerMessage SignChargingStationCertificate) sent, by "
                                     "the charger's answer", ["outcome"], registry=registry),
            expiring=Gauge("csms_charger_certificates_expiring",
                           "Chargers whose current certificate expires within the renewal lead time (fleet-wide; "
                           "aggregate with max)", registry=registry),
            soonest_expiry=Gauge("csms_charger_certificate_soonest_expiry_timestamp_seconds",
                                 "Soonest expiry of any charger's current certificate, Unix time (fleet-wide; "
                                 "aggregate with min; absent while no charger has one)", ["certificate_type"],
                                 registry=registry),
            security_events=Counter("csms_security_events_total",
                                    "SecurityEventNotifications stored (retries not counted), by type (the "
                                    "standardized names, else Other) and whether the spec marks it critical",
                                    ["type", "critical"], registry=registry),
        )


@dataclass(frozen=True, slots=True)
class _Job:
    request_id: int
    request: SignRequest


class SecurityDesk:
    """``csms.ocpp.certificates.SecurityServices`` over PostgreSQL, the operator CA and the gateway."""

    def __init__(self, *, pool: asyncpg.Pool, gateway: Gateway, metrics: CertificateMetrics,
                 ca: OperatorCa | None, organisation: str, min_rsa_bits: int, validity_s: float,
                 renewal_lead_time_s: float, renewal_check_interval_s: float, renewal_rate_per_s: float,
                 sign_queue_max: int) -> None:
        self._pool = pool
        self._gateway = gateway
        self._metrics = metrics
        self._ca = ca
        self._policy = CsrPolicy(organisation=organisation, min_rsa_bits=min_rsa_bits) if ca is not None else None
        self._validity_s = validity_s
        self._lead_s = renewal_lead_time_s
        self._interval_s = renewal_check_interval_s
        self._rate = renewal_rate_per_s
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=sign_queue_max)
        self._tasks: list[asyncio.Task[None]] = []
        self._recount = asyncio.Event()
        self._presented: dict[tuple[str, bytes], float] = {}   # (charger, certificate digest) → recorded at

    @property
    def csr_policy(self) -> CsrPolicy | None:
        return self._policy

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._sign_forever(), name="csms-certificate-signer"),
                           asyncio.create_task(self._renew_forever(), name="csms-certificate-renewal")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks = []

    # --- handlers' side (awaited before the answer) -------------------------------------------------------

    async def submit_csr(self, request: SignRequest) -> SignDecision:
        verdict = request.verdict
        decision = SignDecision("Accepted") if verdict.ok else SignDecision("Rejected", verdict.reason)
        if decision.status == "Accepted" and self._queue.full():
            decision = SignDecision("Rejected", "too many certificate requests waiting; try again later")
        request_id = await store.record_request(
            self._pool, charge_point_id=request.charge_point_id, received_at=request.received_at,
            ocpp_version=request.version, certificate_type=request.certificate_type, csr_subject=verdict.subject,
            status=decision.status, reason=decision.reason)
        self._metrics.sign_requests.labels(decision.status).inc()
        if decision.status == "Accepted":
            self._queue.put_nowait(_Job(request_id, request))
        else:
            logger.info("SignCertificate from %s rejected: %s", request.charge_point_id, decision.reason,
                        extra={"charge_point_id": request.charge_point_id})
        return decision

    async def store_security_event(self, event: SecurityEvent) -> bool:
        new = await store_event(self._pool, event)
        if new:
            self._metrics.security_events.labels(event_label(event.type), str(event.critical).lower()).inc()
            if event.critical:
                logger.warning("critical security event %s from %s: %s", event.type[:50], event.charge_point_id,
                               (event.tech_info or "")[:255], extra={"charge_point_id": event.charge_point_id})
        return new

    # --- signing -------------------------------------------------------------------------------------------

    async def record_presented(self, charge_point_id: str, der: bytes) -> None:
        """A client certificate admitted at a profile 3 handshake (Gateway.client_certificate_seen): recorded
        (at most once an hour per charger and certificate), before the upgrade, so that its expiry counts from
        the charger's first message on."""
        key = (charge_point_id, hashlib.sha256(der).digest())
        seen = self._presented.get(key)
        if seen is not None and time.monotonic() - seen < _PRESENTED_REFRESH_S:
            return
        try:
            certificate = describe(x509.load_der_x509_certificate(der))
            await store.record_presented(self._pool, charge_point_id=charge_point_id, certificate=certificate)
        except (ValueError, *_DB_ERRORS) as exc:
            logger.warning("client certificate of %s not recorded: %s", charge_point_id, exc)
            return
        if len(self._presented) >= _PRESENTED_REMEMBERED:   # bounded: forgetting costs one more upsert
            self._presented.clear()
        self._presented[key] = time.monotonic()
        self._recount.set()

    async def _sign_forever(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._sign(job)
            except Exception:
                logger.exception("signing the certificate of %s failed", job.request.charge_point_id)

    async def _sign(self, job: _Job) -> None:
        request, csr, ca = job.request, job.request.verdict.csr, self._ca
        assert csr is not None
        assert ca is not None
        cp = request.charge_point_id
        issued = await asyncio.to_thread(ca.sign, csr, validity_s=self._validity_s)
        await store.record_signed(self._pool, request_id=job.request_id, charge_point_id=cp,
                                  certificate_type=request.certificate_type, issued=issued)
        payload: dict[str, Any] = {"certificateChain": issued.pem_chain}
        if request.version != "1.6":
            payload["certificateType"] = request.certificate_type
            if request.version == "2.1" and request.request_id is not None:
                payload["requestId"] = request.request_id
        conn = await self._gateway.live_connection(cp)
        if conn is None:
            outcome, detail = "not_delivered", "the charger disconnected before CertificateSigned"
        else:
            try:
                answer = await conn.command("CertificateSigned", payload)
                outcome, detail = str(answer.get("status", ""))[:32], ""
            except ChargerCommandError as exc:
                outcome, detail = "not_delivered", str(exc)
        self._metrics.certificates_signed.labels(outcome if outcome in ("Accepted", "Rejected")
                                                 else "not_delivered").inc()
        await store.record_delivery(self._pool, request_id=job.request_id, charge_point_id=cp,
                                    serial=issued.serial, charger_status=outcome, detail=detail)
        logger.info("certificate %s signed for %s (expires %s): CertificateSigned %s", issued.serial, cp,
                    issued.not_after.isoformat(), outcome, extra={"charge_point_id": cp})
        if outcome == "Accepted":
            self._recount.set()

    # --- renewal and the fleet gauges --------------------------------------------------------------------

    async def _renew_forever(self) -> None:
        while True:
            try:
                await self._count()
                if self._ca is not None:
                    await self._trigger_renewals()
            except _DB_ERRORS as exc:
                logger.warning("certificate renewal check failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recount.wait(), self._interval_s)
            self._recount.clear()

    async def _count(self) -> None:
        expiry = await store.fleet_expiry(self._pool, lead_time_s=self._lead_s)
        self._metrics.expiring.set(expiry.expiring)
        if expiry.soonest is not None:
            self._metrics.soonest_expiry.labels(_STATION).set(expiry.soonest.timestamp())
        else:
            with contextlib.suppress(KeyError):
                self._metrics.soonest_expiry.remove(_STATION)

    async def _trigger_renewals(self) -> None:
        connected: dict[str, ChargerConnection] = {c.charge_point_id: c for c in self._gateway.connections()}
        limit = max(1, int(self._rate * self._interval_s))
        candidates = await store.renewal_candidates(self._pool, list(connected), lead_time_s=self._lead_s,
                                                    retry_after_s=self._interval_s, limit=limit)
        for candidate in candidates:
            conn = connected[candidate.charge_point_id]
            if conn.ocpp_version == "1.6":
                action, payload = "ExtendedTriggerMessage", {"requestedMessage": "SignChargePointCertificate"}
            else:
                action, payload = "TriggerMessage", {"requestedMessage": "SignChargingStationCertificate"}
            await store.mark_renewal_requested(self._pool, candidate.charge_point_id, candidate.serial)
            try:
                answer = await conn.command(action, payload)
                outcome = str(answer.get("status", ""))
            except ChargerCommandError as exc:
                outcome = "not_delivered"
                logger.info("renewal trigger to %s not delivered: %s", candidate.charge_point_id, exc)
            self._metrics.renewal_triggers.labels(
                outcome if outcome in ("Accepted", "Rejected", "NotImplemented") else "not_delivered").inc()
            await asyncio.sleep(1.0 / self._rate)   # bounded rate (the chargers' CSRs then come at this rate)
