"""Who may open an OCPP websocket: checked on the HTTP request, before the upgrade (1.6 Security
Whitepaper §2.3 remark; 2.0.1 A00.FR.203/207).

Order of checks (each refusal is an HTTP answer; no websocket is opened):

1. per-source handshake rate (token bucket)                                 → 429 + Retry-After
2. the charge point id is registered (1.6J §3.2, 2.0.1 Part 4 §3.2; R3)  → 404, unless onboarding admits it (below)
3. the charger's stored profile is not above the endpoint's (no downgrade, A05.FR.07) → 403
4. profile 3: the client certificate's subject CN = id (TC_A_07/08)                 → 403
   profile 1/2: exactly one Authorization header, Basic, username = id, password matches
   (2.0.1 A00.FR.203/204/207; R20–R22) → 401
   (WWW-Authenticate). A generated password (HMAC credential) is checked on the event loop in
   microseconds, and so is an Argon2id password remembered from an earlier success (one SHA-256): a right
   one is admitted whatever the budgets below. Any other check needs a token left in the
   failed-authentication budgets of its source address and of its id (stricter than 1.; beyond them → 429
   + Retry-After, before any KDF work), and its Argon2id runs in a bounded thread pool with a bounded share
   per source (full → 503 + Retry-After). Every failure spends a token of both budgets. An HMAC credential
   under a key this process does not have → 503 (a configuration error, logged), never a guess.
   During a key rotation (``csms.gateway.rotation``) the pending new key is accepted too (an HMAC check); the
   first login with it makes it the credential and retires the old one (A01), in the database.

Onboarding (``--onboard-unknown``) binds a credential, trust on first use: on a profile 1/2 endpoint an
unknown id must present Basic auth with a password that meets the spec's rules; its hash is pinned with
the new 'pending' row, and every later connection must present the same password, before and after an
operator accepts it. On profile 3 the certificate CN binds the id. Each onboarding spends a token of the
source's failed-authentication budget, and at most ``onboard_max_pending`` onboarded ids wait for an
operator (beyond: 404, no row).
"""

from __future__ import annotations

import dataclasses
import http
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
from prometheus_client import CollectorRegistry

from csms.gateway.budgets import SourceRateLimiter, TokenBuckets
from csms.gateway.credential_upkeep import CredentialUpkeep
from csms.security.credentials import (
    BasicCredentials,
    CredentialVerifier,
    hash_password,
    matches,
    parse_basic_auth,
    password_candidates,
    pinnable_password,
)
from csms.security.kdf_pool import KdfBusy, KdfMetrics, KdfPool
from csms.security.secret import CredentialKey, CredentialSecret, is_hmac, key_id_of
from csms.store.chargers import (
    ChargerRecord,
    check_credential_key,
    fetch_charger,
    onboard_unknown,
    pending_onboarded,
)
from csms.store.rotation import note_old_key_login, promote_pending

logger = logging.getLogger(__name__)

T = TypeVar("T")

_WWW_AUTHENTICATE = (("WWW-Authenticate", 'Basic realm="OCPP", charset="UTF-8"'),)  # RFC 7617 §2.1


@dataclass(frozen=True, slots=True)
class HandshakeVerdict:
    record: ChargerRecord | None
    status: http.HTTPStatus | None = None   # None: admitted
    reason: str = ""                        # a metrics label: low cardinality
    message: str = ""
    # Extra response headers on a refusal (WWW-Authenticate on 401, Retry-After on 429/503).
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def admitted(self) -> bool:
        return self.status is None


def _retry_after(seconds: float) -> tuple[tuple[str, str], ...]:
    # RFC 9110 §10.2.3: delay-seconds, a non-negative integer.
    return (("Retry-After", str(max(1, math.ceil(seconds)))),)


class HandshakePolicy:
    def __init__(self, *, pool: asyncpg.Pool, endpoint_profile: int, onboard_unknown: bool,
                 rate_per_s: float, burst: int, auth_failures_per_source_per_min: float,
                 auth_failures_per_id_per_min: float, kdf_workers: int, kdf_queue_max: int,
                 kdf_queue_max_per_source: int, onboard_max_pending: int,
                 credentials: CredentialSecret | None = None, slow_hash_count_interval_s: float = 60.0,
                 registry: CollectorRegistry | None = None) -> None:
        self._pool = pool
        self._profile = endpoint_profile
        self._onboard = onboard_unknown
        self._onboard_max_pending = onboard_max_pending
        self._limiter = SourceRateLimiter(rate_per_s=rate_per_s, burst=burst)
        # "N per minute" buckets hold N tokens: a minute's worth may be spent at once.
        self._source_failures = TokenBuckets(rate_per_s=auth_failures_per_source_per_min / 60.0,
                                             burst=auth_failures_per_source_per_min)
        self._id_failures = TokenBuckets(rate_per_s=auth_failures_per_id_per_min / 60.0,
                                         burst=auth_failures_per_id_per_min)
        self.metrics = KdfMetrics.create(registry if registry is not None else CollectorRegistry())
        self.kdf = KdfPool(workers=kdf_workers, queue_max=kdf_queue_max, per_key_max=kdf_queue_max_per_source,
                           metrics=self.metrics)
        # The Argon2id cache only: an HMAC check costs about what a cache look-up does.
        self.verifier = CredentialVerifier()
        self.credentials = credentials if credentials is not None else CredentialSecret()
        self._key: CredentialKey | None = None
        self._unknown_keys_logged: set[str | None] = set()
        self._upkeep = CredentialUpkeep(pool=pool, secret=self.credentials, metrics=self.metrics,
                                        slow_hash_count_interval_s=slow_hash_count_interval_s)

    async def start(self) -> None:
        """Refuse to start (CredentialKeyError) when the database holds HMAC credentials under a secret this
        process does not have; then start the credential upkeep (migration, slow-hash gauge)."""
        self._key = await check_credential_key(self._pool, self.credentials)
        self._upkeep.start()

    def close(self) -> None:
        """Stop the KDF threads (jobs still waiting are cancelled) and the credential upkeep."""
        self.kdf.close()
        self._upkeep.close()

    async def check(self, *, charge_point_id: str, source: str, authorization: Sequence[str],
                    client_cert_cn: str | None) -> HandshakeVerdict:
        """``authorization``: every Authorization header of the request (``headers.get_all``)."""
        now = time.monotonic()
        if not self._limiter.allow(source, now):
            return HandshakeVerdict(None, http.HTTPStatus.TOO_MANY_REQUESTS, "rate_limited",
                                    "too many connection attempts from this address",
                                    _retry_after(self._limiter.retry_after_s(source, now)))
        record = await fetch_charger(self._pool, charge_point_id)
        if record is None and not self._onboard:
            return HandshakeVerdict(None, http.HTTPStatus.NOT_FOUND, "unknown_id", "unknown charge point")
        if record is not None and record.security_profile > self._profile:
            return HandshakeVerdict(record, http.HTTPStatus.FORBIDDEN, "profile_downgrade",
                                    f"this charge point requires security profile {record.security_profile}")
        if self._profile == 3:
            if client_cert_cn != charge_point_id:
                self._spend_failure(source, charge_point_id, now)
                return HandshakeVerdict(record, http.HTTPStatus.FORBIDDEN, "certificate_mismatch",
                                        "client certificate subject does not match the charge point id")
            return HandshakeVerdict(record) if record is not None else \
                await self._onboard_new(charge_point_id, source, None, now)
        if self._profile == 0:  # an endpoint without charger authentication (lab)
            return HandshakeVerdict(record) if record is not None else \
                await self._onboard_new(charge_point_id, source, None, now)
        if record is not None and record.security_profile == 0 and record.credential_hash is None \
                and not record.onboarded:
            # Registered by an operator as a charger without credentials (per-charger profile 0).
            return HandshakeVerdict(record)
        verdict = await self._basic_auth(record, charge_point_id, source, authorization, now)
        if verdict.admitted and verdict.record is not None and verdict.record.pending_credential_hash is not None:
            # The old key mid-rotation: still accepted (the rotation goes on), and audited.
            await note_old_key_login(self._pool, charge_point_id, actor=f"charger:{charge_point_id}@{source}")
        return verdict

    async def _basic_auth(self, record: ChargerRecord | None, charge_point_id: str, source: str,
                          headers: Sequence[str], now: float) -> HandshakeVerdict:
        # Two Authorization headers are ambiguous (RFC 9110 §5.3: not a list field): refuse, never pick one.
        creds = parse_basic_auth(headers[0]) if len(headers) == 1 else None
        if creds is not None and creds.username == charge_point_id and record is not None \
                and record.credential_hash is not None:
            # Cheap checks first: a right password gets in even while its id's or source's failure budget is
            # empty (someone flooding wrong passwords cannot lock it out).
            if is_hmac(record.credential_hash):
                ok = self._check_hmac(record.id, record.credential_hash, creds)
                if ok is None:
                    return self._key_unknown(record, record.credential_hash)
                if ok:
                    return HandshakeVerdict(record)
            elif self.verifier.verify_cached(charge_point_id, record.credential_hash, creds.password):
                self.metrics.credential_checks.labels("argon2id_cached").inc()
                return HandshakeVerdict(record)
            # Key rotation (A01): the new key, sent and not used yet, is accepted beside the old one; its first
            # use retires the old one.
            if record.pending_credential_hash is not None \
                    and self._check_hmac(record.id, record.pending_credential_hash, creds):
                return await self._promote(record, record.pending_credential_hash, source)
        refused = self._budget_refusal(record, source, charge_point_id, now)
        if refused is not None:
            return refused
        if len(headers) > 1:
            return self._failed(record, source, charge_point_id, now, "duplicate_authorization",
                                "send exactly one Authorization header")
        if creds is None:
            return self._failed(record, source, charge_point_id, now, "no_credentials",
                                "HTTP Basic authentication required")
        if creds.username != charge_point_id:
            return self._failed(record, source, charge_point_id, now, "username_mismatch",
                                "username must equal the charge point id")
        if record is None or (record.credential_hash is None and record.onboarded and self._onboard):
            return await self._onboard_new(charge_point_id, source, creds, now, new=record is None)
        if record.credential_hash is None:
            return self._failed(record, source, charge_point_id, now, "bad_credentials", "wrong credentials")
        return await self._verify(record, record.credential_hash, source, creds, now)

    async def _verify(self, record: ChargerRecord, stored_hash: str, source: str, creds: BasicCredentials,
                      now: float) -> HandshakeVerdict:
        # A failure is charged when it is known, never reserved up front: a fleet behind one NAT address that
        # reconnects all at once (field lessons: LTE/CGNAT) must not be refused by the *failure* budget. What
        # a flooder's parallel attempts overrun is bounded by the KDF pool's per-source share and repaid (the
        # bucket goes negative).
        if is_hmac(stored_hash):
            hmac_ok = self._check_hmac(record.id, stored_hash, creds, count=False)  # counted in _basic_auth
            if hmac_ok is None:
                return self._key_unknown(record, stored_hash)
            ok = hmac_ok
        else:
            try:
                ok = await self.kdf.run(matches, stored_hash, creds.password, key=source)
            except KdfBusy as busy:
                return HandshakeVerdict(record, http.HTTPStatus.SERVICE_UNAVAILABLE, "kdf_busy",
                                        "too many connection attempts being checked; try again later",
                                        _retry_after(busy.retry_after_s))
            self.metrics.credential_checks.labels("argon2id").inc()
        if not ok:
            return self._failed(record, source, record.id, time.monotonic(), "bad_credentials",
                                "wrong credentials")
        if not is_hmac(stored_hash):
            self.verifier.remember(record.id, stored_hash, creds.password)
            self._upkeep.after_slow_login(record, stored_hash, creds.password)
        return HandshakeVerdict(record)

    async def _promote(self, record: ChargerRecord, pending_hash: str, source: str) -> HandshakeVerdict:
        """The first login with a rotated key: it becomes the credential and the old one is retired."""
        rotation_id = await promote_pending(self._pool, record.id, pending_hash,
                                            actor=f"charger:{record.id}@{source}")
        if rotation_id is None:
            # Someone was first: a concurrent login with the same key (admitted), or an operator's new
            # password (this key is no longer valid).
            fresh = await fetch_charger(self._pool, record.id)
            if fresh is None or fresh.credential_hash != pending_hash:
                return HandshakeVerdict(fresh, http.HTTPStatus.UNAUTHORIZED, "bad_credentials",
                                        "wrong credentials", _WWW_AUTHENTICATE)
            return HandshakeVerdict(fresh)
        logger.info("charge point %s logged in with its rotated key (rotation %d): the old key is retired",
                    record.id, rotation_id)
        return HandshakeVerdict(dataclasses.replace(record, credential_hash=pending_hash,
                                                    credential_origin="generated", pending_credential_hash=None))

    def _check_hmac(self, charge_point_id: str, stored_hash: str, creds: BasicCredentials, *,
                    count: bool = True) -> bool | None:
        """The HMAC check, on the event loop (microseconds); None if this process has no key for the credential."""
        key = self._key
        if key is None or key.key_id != key_id_of(stored_hash):
            # A secret that appeared after start (first use by another process on a shared data dir or mount).
            key = self.credentials.load()
            if key is None or key.key_id != key_id_of(stored_hash):
                return None
            self._key = key
        if count:
            self.metrics.credential_checks.labels("hmac").inc()
        return key.verify(stored_hash, charge_point_id, password_candidates(creds.password))

    def _key_unknown(self, record: ChargerRecord, stored_hash: str) -> HandshakeVerdict:
        key_id = key_id_of(stored_hash)
        if key_id not in self._unknown_keys_logged:   # once per key id: they come from the database, not peers
            self._unknown_keys_logged.add(key_id)
            logger.error("charge point %s has an HMAC credential under key id %s, but this process's credential "
                         "secret (%s) %s: give every node on this database the same secret", record.id, key_id,
                         self.credentials.describe(),
                         f"has key id {self._key.key_id}" if self._key else "does not exist")
        return HandshakeVerdict(record, http.HTTPStatus.SERVICE_UNAVAILABLE, "credential_key_unknown",
                                "this server cannot check this charge point's credential; try again later",
                                _retry_after(60))

    async def _onboard_new(self, charge_point_id: str, source: str, creds: BasicCredentials | None,
                           now: float, *, new: bool = True) -> HandshakeVerdict:
        """Register an unknown id (or pin the first password of an id onboarded without one)."""
        password: str | None = None
        if creds is not None:
            password = pinnable_password(creds.password)
            if password is None:
                return self._failed(None, source, charge_point_id, now, "onboard_bad_password",
                                    "an onboarding charger needs a password of 16–64 characters (2.0.1 A00.FR.205; "
                                    "2.1: up to 64) or a 1.6 AuthorizationKey of 16–20 bytes")
        if not self._source_failures.has_token(source, now):
            return self._budget_verdict(None, self._source_failures.retry_after_s(source, now))
        # Onboarding creates a row and costs a KDF: it spends the source's budget like a failure, for good
        # (spent before the first await, so that concurrent attempts cannot overrun it).
        self._source_failures.spend(source, now)
        if new and await pending_onboarded(self._pool) >= self._onboard_max_pending:
            return _onboarding_full()
        digest: str | None = None
        if password is not None:
            try:
                digest = await self.kdf.run(hash_password, password, key=source)
            except KdfBusy as busy:
                self._source_failures.refund(source)
                return HandshakeVerdict(None, http.HTTPStatus.SERVICE_UNAVAILABLE, "kdf_busy",
                                        "too many connection attempts being checked; try again later",
                                        _retry_after(busy.retry_after_s))
        record = await onboard_unknown(self._pool, charge_point_id, credential_hash=digest,
                                       security_profile=self._profile, max_pending=self._onboard_max_pending)
        if record is None:
            return _onboarding_full()
        if digest is not None and record.credential_hash == digest:
            assert creds is not None
            self.verifier.remember(charge_point_id, digest, creds.password)
        elif digest is not None:
            # Another connection pinned (or an operator registered) this id first: its credential applies.
            if record.credential_hash is None:
                return HandshakeVerdict(record, http.HTTPStatus.UNAUTHORIZED, "bad_credentials",
                                        "wrong credentials", _WWW_AUTHENTICATE)
            assert creds is not None
            return await self._verify(record, record.credential_hash, source, creds, now)
        self.metrics.onboarded.inc()
        logger.info("onboarded unknown charge point %s from %s (%s); pending until an operator accepts it",
                    charge_point_id, source, "password pinned" if digest else f"profile {self._profile}")
        return HandshakeVerdict(record)

    def _budget_refusal(self, record: ChargerRecord | None, source: str, charge_point_id: str,
                        now: float) -> HandshakeVerdict | None:
        waits = [b.retry_after_s(k, now) for b, k in ((self._source_failures, source),
                                                      (self._id_failures, charge_point_id))
                 if not b.has_token(k, now)]
        return self._budget_verdict(record, max(waits)) if waits else None

    @staticmethod
    def _budget_verdict(record: ChargerRecord | None, retry_after_s: float) -> HandshakeVerdict:
        return HandshakeVerdict(record, http.HTTPStatus.TOO_MANY_REQUESTS, "auth_failures_limited",
                                "too many failed authentications; try again later", _retry_after(retry_after_s))

    def _failed(self, record: ChargerRecord | None, source: str, charge_point_id: str, now: float, reason: str,
                message: str) -> HandshakeVerdict:
        self._spend_failure(source, charge_point_id, now)
        return HandshakeVerdict(record, http.HTTPStatus.UNAUTHORIZED, reason, message, _WWW_AUTHENTICATE)

    def _spend_failure(self, source: str, charge_point_id: str, now: float) -> None:
        self._source_failures.spend(source, now)
        self._id_failures.spend(charge_point_id, now)


def _onboarding_full() -> HandshakeVerdict:
    return HandshakeVerdict(None, http.HTTPStatus.NOT_FOUND, "onboard_full",
                            "unknown charge point (too many onboarded charge points await an operator)")

