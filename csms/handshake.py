"""Who may open an OCPP websocket: checked on the HTTP request, before the upgrade.

Order of checks (each refusal is an HTTP answer; no websocket is opened):

1. per-source handshake rate (token bucket)           → 429
2. the charge point id is registered (R3)             → 404, unless onboarding admits it
3. the charger's stored profile is not above the endpoint's (no downgrade, A05.FR.07) → 403
4. profile 1/2: Basic auth present, username = id, password matches (R20–R22) → 401
   profile 3: the client certificate's subject CN = id (A00.FR.405-ish; TC_A_07/08) → 403
"""

from __future__ import annotations

import asyncio
import http
import time
from collections import OrderedDict
from dataclasses import dataclass

import asyncpg

from csms.credentials import CredentialVerifier, parse_basic_auth
from csms.registry import ChargerRecord, fetch_charger, onboard_unknown


@dataclass(frozen=True, slots=True)
class HandshakeVerdict:
    record: ChargerRecord | None
    status: http.HTTPStatus | None = None   # None: admitted
    reason: str = ""                        # a metrics label: low cardinality
    message: str = ""

    @property
    def admitted(self) -> bool:
        return self.status is None


class SourceRateLimiter:
    """Token bucket per source address; bounded in memory (least recently seen dropped)."""

    def __init__(self, *, rate_per_s: float, burst: int, max_sources: int = 100_000) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max_sources = max_sources

    def allow(self, source: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(source, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[source] = (tokens, now)
        self._buckets.move_to_end(source)
        if len(self._buckets) > self._max_sources:
            self._buckets.popitem(last=False)
        return allowed


class HandshakePolicy:
    def __init__(self, *, pool: asyncpg.Pool, endpoint_profile: int, onboard_unknown: bool,
                 rate_per_s: float, burst: int) -> None:
        self._pool = pool
        self._profile = endpoint_profile
        self._onboard = onboard_unknown
        self._limiter = SourceRateLimiter(rate_per_s=rate_per_s, burst=burst)
        self.verifier = CredentialVerifier()

    async def check(self, *, charge_point_id: str, source: str, authorization: str | None,
                    client_cert_cn: str | None) -> HandshakeVerdict:
        if not self._limiter.allow(source):
            return HandshakeVerdict(None, http.HTTPStatus.TOO_MANY_REQUESTS, "rate_limited",
                                    "too many connection attempts from this address")
        record = await fetch_charger(self._pool, charge_point_id)
        if record is None:
            if not self._onboard:
                return HandshakeVerdict(None, http.HTTPStatus.NOT_FOUND, "unknown_id", "unknown charge point")
            record = await onboard_unknown(self._pool, charge_point_id)
        if record.security_profile > self._profile:
            return HandshakeVerdict(record, http.HTTPStatus.FORBIDDEN, "profile_downgrade",
                                    f"this charge point requires security profile {record.security_profile}")
        if self._profile == 3:
            if client_cert_cn != charge_point_id:
                return HandshakeVerdict(record, http.HTTPStatus.FORBIDDEN, "certificate_mismatch",
                                        "client certificate subject does not match the charge point id")
            return HandshakeVerdict(record)
        if self._profile == 0 or (record.security_profile == 0 and record.credential_hash is None):
            # Endpoint without charger authentication (lab), or a charger onboarded without credentials.
            return HandshakeVerdict(record)
        creds = parse_basic_auth(authorization)
        if creds is None:
            return HandshakeVerdict(record, http.HTTPStatus.UNAUTHORIZED, "no_credentials",
                                    "HTTP Basic authentication required")
        if creds.username != charge_point_id:
            return HandshakeVerdict(record, http.HTTPStatus.UNAUTHORIZED, "username_mismatch",
                                    "username must equal the charge point id")
        if record.credential_hash is None or not (
                self.verifier.verify_cached(charge_point_id, record.credential_hash, creds.password)
                or await asyncio.to_thread(self.verifier.verify, charge_point_id, record.credential_hash,
                                           creds.password)):
            return HandshakeVerdict(record, http.HTTPStatus.UNAUTHORIZED, "bad_credentials", "wrong credentials")
        return HandshakeVerdict(record)
