"""Credential upkeep next to the handshake: legacy hashes re-stored as HMAC after a login, and the slow-hash gauge.

* A charger registered before HMAC credentials existed has an Argon2id hash of (usually) a generated password.
  After it logs in with a password of the generated form (``is_generated_form``), its credential is re-stored as
  HMAC under this process's secret, in the background and once: queued by charger id (so bounded by the fleet),
  written by one task in batches with a compare-and-set on the verified hash (an operator's new password made
  meanwhile is never overwritten). A failure is logged and retried at that charger's next login.
* ``csms_chargers_slow_hash{origin}`` counts the chargers still on Argon2id, read from the database every
  ``interval_s`` (a partial index bounds the cost) and right after a migration batch. The value is fleet-wide:
  every process exports the same number (aggregate with max, not sum).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from csms.security.credentials import is_generated_form
from csms.security.kdf_pool import KdfMetrics
from csms.security.secret import CredentialKeyError, CredentialSecret
from csms.store.chargers import ChargerRecord, count_slow_hashes, store_migrated_credentials, writing_key

logger = logging.getLogger(__name__)

# Rows per UPDATE of the migration (one statement with arrays; a restart storm of a legacy fleet migrates in a
# few statements, not one per charger).
_MIGRATION_BATCH_ROWS = 1000


class CredentialUpkeep:
    def __init__(self, *, pool: asyncpg.Pool, secret: CredentialSecret, metrics: KdfMetrics,
                 slow_hash_count_interval_s: float) -> None:
        self._pool = pool
        self._secret = secret
        self._metrics = metrics
        self._interval_s = slow_hash_count_interval_s
        self._pending: dict[str, tuple[str, str]] = {}   # charger id -> (verified Argon2id hash, password)
        self._migrator: asyncio.Task[None] | None = None
        self._counter: asyncio.Task[None] | None = None
        self._recount = asyncio.Event()

    def start(self) -> None:
        if self._counter is None:
            self._counter = asyncio.create_task(self._count_forever(), name="csms-slow-hash-count")

    def close(self) -> None:
        for task in (self._migrator, self._counter):
            if task is not None:
                task.cancel()
        self._pending.clear()

    def after_slow_login(self, record: ChargerRecord, verified_hash: str, password: bytes) -> None:
        """A charger just logged in against an Argon2id hash: re-store it as HMAC if it is a legacy credential
        of an operator-registered charger and the password has the generated form."""
        if record.credential_origin is not None or record.onboarded or record.id in self._pending:
            return
        try:
            text = password.decode("utf-8")
        except UnicodeDecodeError:
            return
        if not is_generated_form(text):
            return
        self._pending[record.id] = (verified_hash, text)
        if self._migrator is None or self._migrator.done():
            self._migrator = asyncio.create_task(self._migrate(), name="csms-credential-migration")

    async def _migrate(self) -> None:
        while self._pending:
            batch = [(cp_id, *self._pending.pop(cp_id)) for cp_id in list(self._pending)[:_MIGRATION_BATCH_ROWS]]
            try:
                async with self._pool.acquire() as conn:
                    key = await writing_key(conn, self._secret)
                changed = await store_migrated_credentials(
                    self._pool, [(cp_id, old, key.digest(cp_id, password)) for cp_id, old, password in batch])
            except (asyncpg.PostgresError, OSError, CredentialKeyError) as exc:
                logger.warning("could not re-store %d charger credentials as HMAC (retried at their next login): "
                               "%s", len(batch), exc)
                continue
            self._metrics.credentials_migrated.inc(changed)
            logger.info("re-stored %d legacy charger credentials as HMAC-SHA-256", changed)
            self._recount.set()

    async def _count_forever(self) -> None:
        while True:
            try:
                for origin, n in (await count_slow_hashes(self._pool)).items():
                    self._metrics.slow_hash.labels(origin).set(n)
            except (asyncpg.PostgresError, OSError) as exc:
                logger.debug("slow-hash count failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recount.wait(), self._interval_s)
            self._recount.clear()
