"""Password hashing off the event loop, in a bounded pool with a bounded queue."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class KdfMetrics:
    """Metrics of the KDF pool, of stored credentials and of onboarding (handshake refusals are counted by cause
    in csms_handshake_failures_total)."""

    kdf_queue_depth: Gauge
    kdf_running: Gauge
    kdf_refused: Counter
    kdf_wait_seconds: Histogram
    onboarded: Counter
    credential_checks: Counter
    slow_hash: Gauge
    credentials_migrated: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> KdfMetrics:
        return cls(
            kdf_queue_depth=Gauge("csms_kdf_queue_depth", "Password hash/verify jobs (Argon2id) waiting for a KDF "
                                  "thread", registry=registry),
            kdf_running=Gauge("csms_kdf_running", "Password hash/verify jobs running on the KDF threads",
                              registry=registry),
            kdf_refused=Counter("csms_kdf_refused_total", "Password checks refused because the KDF queue was full "
                                "(the handshake was answered 503)", registry=registry),
            kdf_wait_seconds=Histogram("csms_kdf_wait_seconds", "Time a password check waited for a KDF thread",
                                       buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                       registry=registry),
            onboarded=Counter("csms_chargers_onboarded_total", "Unknown charge point ids registered by "
                              "--onboard-unknown (credential pinned)", registry=registry),
            credential_checks=Counter("csms_credential_checks_total", "Charger password checks by how the stored "
                                      "credential was checked: hmac (microseconds, on the event loop), argon2id "
                                      "(KDF pool), argon2id_cached (remembered success)", ["scheme"],
                                      registry=registry),
            slow_hash=Gauge("csms_chargers_slow_hash", "Chargers whose credential is still an Argon2id hash, by "
                            "origin (operator: an operator's password; onboarded: pinned at first use; legacy: "
                            "stored before HMAC credentials, re-stored at its next login if generated); "
                            "fleet-wide, read from the database", ["origin"], registry=registry),
            credentials_migrated=Counter("csms_credentials_migrated_total", "Legacy Argon2id credentials re-stored "
                                         "as HMAC-SHA-256 by this process after a successful login",
                                         registry=registry),
        )


class KdfBusy(Exception):
    """The KDF queue is full: try again after ``retry_after_s``."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"KDF queue full; retry after {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s


class KdfPool:
    """Password hashing off the event loop: a dedicated pool of ``workers`` threads and at most ``queue_max``
    jobs waiting (scale-out issue, item 6), of which one key (a source address) may hold ``per_key_max``.
    Argon2id releases the GIL, so the event loop keeps serving connected chargers while the threads hash;
    beyond the bounds a handshake is refused at once (503 with Retry-After) instead of waiting into its open
    timeout, and a flood from one address cannot put more than its share ahead of everyone else's."""

    def __init__(self, *, workers: int, queue_max: int, per_key_max: int, metrics: KdfMetrics) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="csms-kdf")
        self._finalizer = weakref.finalize(self, self._executor.shutdown, wait=False, cancel_futures=True)
        self._workers = workers
        self._limit = workers + queue_max
        self._per_key_max = per_key_max
        self._metrics = metrics
        self._lock = threading.Lock()
        self._in_flight = 0            # submitted, not finished (running + waiting)
        self._per_key: dict[str, int] = {}   # the same per key; only keys with jobs in flight (bounded)
        self._mean_run_s = 0.02        # moving mean of one job (Argon2id ~20 ms here) for Retry-After

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def retry_after_s(self) -> float:
        """About when the jobs ahead will have run."""
        return self._in_flight * self._mean_run_s / self._workers

    async def run(self, fn: Callable[..., T], *args: Any, key: str = "") -> T:
        with self._lock:
            mine = self._per_key.get(key, 0)
            full = self._in_flight >= self._limit or mine >= self._per_key_max
            if not full:
                self._in_flight += 1
                self._per_key[key] = mine + 1
        if full:
            self._metrics.kdf_refused.inc()
            raise KdfBusy(self.retry_after_s())
        self._metrics.kdf_queue_depth.inc()
        try:
            future = self._executor.submit(self._job, fn, args, time.monotonic())
        except RuntimeError:  # shut down
            self._finished_one(key, cancelled=True)
            raise KdfBusy(1.0) from None
        future.add_done_callback(lambda f: self._finished_one(key, cancelled=f.cancelled()))
        return await asyncio.wrap_future(future)

    def _job(self, fn: Callable[..., T], args: tuple[Any, ...], submitted: float) -> T:
        started = time.monotonic()
        self._metrics.kdf_queue_depth.dec()
        self._metrics.kdf_running.inc()
        self._metrics.kdf_wait_seconds.observe(started - submitted)
        try:
            return fn(*args)
        finally:
            self._mean_run_s = 0.9 * self._mean_run_s + 0.1 * (time.monotonic() - started)
            self._metrics.kdf_running.dec()

    def _finished_one(self, key: str, *, cancelled: bool) -> None:
        if cancelled:  # never started: still counted as waiting
            self._metrics.kdf_queue_depth.dec()
        with self._lock:
            self._in_flight -= 1
            left = self._per_key.pop(key) - 1
            if left:
                self._per_key[key] = left

    def close(self) -> None:
        self._finalizer()
