"""Handshake security (issue 11 items 15, 17, 18): failed-authentication budgets, the bounded KDF pool,
duplicate Authorization headers, and onboarding that binds a credential (trust on first use).

Integration tests go through the real gateway over real websockets; the flood test uses two loopback
source addresses (127.0.0.1 floods, 127.0.0.2 is the legitimate fleet).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import threading
from collections import Counter
from collections.abc import Iterator, Sequence

import asyncpg
import pytest
import websockets
from prometheus_client import CollectorRegistry
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus

from csms.gateway.budgets import TokenBuckets
from csms.security.credentials import pinnable_password
from csms.security.kdf_pool import KdfBusy, KdfMetrics, KdfPool
from schemas.migrate import apply_migrations, load_migrations
from tests.central import PASSWORD, RunningCentral, running_central
from tests.chargers import basic_auth
from tests.harness import make_shared_tmpdir
from tests.pki import Pki, make_pki

BOOT = [2, "boot", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]
FLOODER, FLEET = "127.0.0.1", "127.0.0.2"
OTHER_PASSWORD = "another-password-of-twenty-chars"

HeaderList = Sequence[tuple[str, str]] | dict[str, str]


async def _attempt(central: RunningCentral, cp_id: str, headers: HeaderList, *, source: str = FLOODER,
                   ) -> tuple[int, Headers]:
    """101 and the response headers if the websocket opened (then closed), else the refusal's status."""
    try:
        async with websockets.connect(f"{central.ws_base}/{cp_id}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                      additional_headers=headers, open_timeout=60,
                                      local_addr=(source, 0)) as ws:
            assert ws.response is not None
            return 101, ws.response.headers
    except InvalidStatus as exc:
        return exc.response.status_code, exc.response.headers


async def _call(ws: websockets.ClientConnection, frame: list[object]) -> list[object]:
    await ws.send(json.dumps(frame))
    return list(json.loads(await asyncio.wait_for(ws.recv(), 30)))


async def _metric(central: RunningCentral, line_start: str) -> float:
    async with central.api() as api:
        text = (await api.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --------------------------------------------------------------------------------------------- pure parts

def test_token_buckets_spend_refund_and_retry_after() -> None:
    buckets = TokenBuckets(rate_per_s=0.5, burst=2)
    assert buckets.take("a", now=0.0)
    assert buckets.take("a", now=0.0)
    assert not buckets.take("a", now=0.0)
    assert not buckets.has_token("a", now=0.0)
    assert buckets.retry_after_s("a", now=0.0) == pytest.approx(2.0)
    assert buckets.has_token("a", now=2.0)          # refilled at 0.5 token/s
    buckets.spend("a", now=2.0)
    buckets.spend("a", now=2.0)                     # a failure beyond the budget: never below -1 token
    assert buckets.retry_after_s("a", now=2.0) == pytest.approx(4.0)
    buckets.refund("a", now=2.0)
    assert buckets.retry_after_s("a", now=2.0) == pytest.approx(2.0)
    assert buckets.has_token("b", now=0.0)          # another key is not affected
    small = TokenBuckets(rate_per_s=1.0, burst=1, max_keys=2)
    for key in "xyz":
        small.take(key, now=0.0)
    assert small.has_token("x", now=0.0)            # bounded memory: the least recently seen is forgotten


def test_pinnable_password_follows_the_spec_length_rules() -> None:
    assert pinnable_password(b"x" * 15) is None                                 # 2.0.1 A00.FR.205: ≥ 16
    assert pinnable_password(b"x" * 16) == "x" * 16
    assert pinnable_password(b"x" * 64) == "x" * 64                             # 2.1: ≤ 64
    assert pinnable_password(b"x" * 65) is None
    raw_key = bytes.fromhex("00112233445566778899aabbccddeeff01234567")       # a 1.6 key sent raw
    assert pinnable_password(raw_key) == raw_key.hex()
    assert pinnable_password(b"\xff" * 15) is None


async def test_kdf_pool_runs_off_the_event_loop_and_refuses_beyond_its_queue() -> None:
    registry = CollectorRegistry()
    pool = KdfPool(workers=1, queue_max=2, per_key_max=2, metrics=KdfMetrics.create(registry))
    release, started = threading.Event(), threading.Event()

    def hold() -> bool:
        started.set()
        return release.wait(30)
    try:
        assert await pool.run(lambda: threading.current_thread().name) != threading.current_thread().name
        assert (await pool.run(lambda: threading.current_thread().name)).startswith("csms-kdf")
        running = asyncio.ensure_future(pool.run(hold, key="flooder"))
        waiting = asyncio.ensure_future(pool.run(lambda: "queued", key="flooder"))
        assert await asyncio.to_thread(started.wait, 30)
        assert registry.get_sample_value("csms_kdf_running") == 1.0
        assert registry.get_sample_value("csms_kdf_queue_depth") == 1.0
        with pytest.raises(KdfBusy) as busy:            # the flooder's share (2) is used up: refused at once
            await pool.run(lambda: "refused", key="flooder")
        assert busy.value.retry_after_s > 0
        other = asyncio.ensure_future(pool.run(lambda: "other", key="fleet"))   # another source still fits
        await asyncio.sleep(0)
        with pytest.raises(KdfBusy):                    # 1 running + 2 waiting: the whole pool is full
            await pool.run(lambda: "refused", key="third")
        assert registry.get_sample_value("csms_kdf_refused_total") == 2.0
        release.set()
        assert await running is True
        assert await waiting == "queued"
        assert await other == "other"
        assert pool.in_flight == 0
        assert registry.get_sample_value("csms_kdf_queue_depth") == 0.0
    finally:
        release.set()
        pool.close()


# ------------------------------------------------------------------------- item 18: duplicate Authorization

@pytest.mark.integration
async def test_duplicate_authorization_header_is_401_and_spends_the_failure_budget(db_url: str) -> None:
    async with running_central(db_url, auth_failures_per_id_per_min=3.0) as central:
        await central.register("DUP")
        both = [*basic_auth("DUP", PASSWORD).items(), *basic_auth("DUP", PASSWORD).items()]
        for _ in range(3):
            status, headers = await _attempt(central, "DUP", both)
            assert status == 401                       # never 503 (it was websockets' MultipleValuesError)
            assert headers["WWW-Authenticate"].startswith("Basic")
        # The three refusals spent the id's budget: even the right single header is now refused before
        # any KDF work, with a Retry-After.
        status, headers = await _attempt(central, "DUP", basic_auth("DUP", PASSWORD))
        assert status == 429
        assert int(headers["Retry-After"]) >= 1
        assert await _metric(central, 'csms_handshake_failures_total{cause="duplicate_authorization"}') == 3
        assert await _metric(central, 'csms_handshake_failures_total{cause="internal_error"}') == 0


# ---------------------------------------------------------------------------- item 15: wrong-password flood

@pytest.mark.integration
async def test_wrong_password_flood_does_not_starve_first_logins(db_url: str) -> None:
    fleet = [f"FLEET-{n}" for n in range(12)]
    targets = [f"TARGET-{n}" for n in range(4)]
    async with running_central(db_url, auth_failures_per_source_per_min=20.0, auth_failures_per_id_per_min=1000.0,
                               kdf_workers=1, kdf_queue_max=64) as central:
        for cp in fleet + targets:
            await central.register(cp)
        seen: Counter[int] = Counter()
        fleet_done, limited = asyncio.Event(), asyncio.Event()

        async def flood() -> None:
            # Bounded: until the fleet is in, at most 2,000 attempts; 8 in parallel.
            attempts = iter(range(2000))

            async def one_lane() -> None:
                for n in attempts:
                    if fleet_done.is_set():
                        return
                    cp = targets[n % len(targets)]
                    # 17 characters: also a 1.6 key length, so each check costs three Argon2id runs.
                    status, _ = await _attempt(central, cp, basic_auth(cp, f"wrong-pw-{n:08d}"))
                    seen[status] += 1
                    if status == 429:
                        limited.set()

            await asyncio.gather(*(one_lane() for _ in range(8)))

        flooding = asyncio.create_task(flood())
        waiting = asyncio.create_task(limited.wait())
        await asyncio.wait([flooding, waiting], timeout=120, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        assert seen[429] > 0, f"the flooder was never limited: {dict(seen)}"

        async def first_login(cp: str) -> int:
            try:
                async with websockets.connect(f"{central.ws_base}/{cp}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                              additional_headers=basic_auth(cp, PASSWORD), open_timeout=60,
                                              local_addr=(FLEET, 0)) as ws:
                    boot = await _call(ws, BOOT)
                    assert boot[2]["status"] == "Accepted"  # type: ignore[index]
                    return 101
            except InvalidStatus as exc:
                return exc.response.status_code

        try:
            statuses = await asyncio.gather(*(first_login(cp) for cp in fleet))
        finally:
            fleet_done.set()
            await flooding
        assert statuses == [101] * len(fleet)          # no 429, no 503, no timeout for the fleet
        assert seen[401] + seen[429] == sum(seen.values())
        # Each 401 cost a KDF; they are bounded by the source's budget, the rest were refused before hashing.
        assert seen[401] < sum(seen.values())
        assert await _metric(central, 'csms_handshake_failures_total{cause="auth_failures_limited"}') == seen[429]
        assert await _metric(central, "csms_kdf_refused_total") == 0
        assert await _metric(central, "csms_kdf_queue_depth") == 0


@pytest.mark.integration
async def test_kdf_queue_full_answers_503_with_retry_after(db_url: str) -> None:
    # One KDF thread, no waiting room, and that thread busy: first logins are told to come back later
    # instead of waiting into their open timeout.
    fleet = [f"BUSY-{n}" for n in range(4)]
    async with running_central(db_url, kdf_workers=1, kdf_queue_max=0) as central:
        for cp in fleet:
            await central.register(cp)
        assert central.system.gateway is not None
        kdf = central.system.gateway._policy.kdf  # the in-process server's own pool
        release, started = threading.Event(), threading.Event()

        def hold() -> bool:
            started.set()
            return release.wait(60)

        holding = asyncio.ensure_future(kdf.run(hold))
        try:
            assert await asyncio.to_thread(started.wait, 60)
            results = await asyncio.gather(*(_attempt(central, cp, basic_auth(cp, PASSWORD), source=FLEET)
                                             for cp in fleet))
        finally:
            release.set()
            await holding
        assert [s for s, _ in results] == [503] * len(fleet)
        assert all(int(h["Retry-After"]) >= 1 for _, h in results)
        assert await _metric(central, "csms_kdf_refused_total") == len(fleet)
        # They come back and get in: a 503 spent none of their failure budget.
        for cp in fleet:
            assert (await _attempt(central, cp, basic_auth(cp, PASSWORD), source=FLEET))[0] == 101


# ------------------------------------------------------------------------- item 17: onboarding binds a key

@pytest.mark.integration
async def test_onboarding_pins_the_first_password_before_and_after_acceptance(db_url: str,
                                                                             db: asyncpg.Connection) -> None:
    async with running_central(db_url, onboard_unknown=True) as central:
        url = f"{central.ws_base}/NEWCOMER"
        # Without credentials, or with a password the spec does not allow, an unknown id is not onboarded.
        assert (await _attempt(central, "NEWCOMER", {}))[0] == 401
        assert (await _attempt(central, "NEWCOMER", basic_auth("NEWCOMER", "short")))[0] == 401
        assert await db.fetchval("SELECT count(*) FROM charge_points") == 0
        async with websockets.connect(url, subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                      additional_headers=basic_auth("NEWCOMER", PASSWORD)) as first:
            boot = await _call(first, BOOT)
            assert boot[2]["status"] == "Pending"  # type: ignore[index]
            # A takeover attempt: no password, another password, two headers: all refused before the upgrade.
            assert (await _attempt(central, "NEWCOMER", {}, source=FLEET))[0] == 401
            assert (await _attempt(central, "NEWCOMER", basic_auth("NEWCOMER", OTHER_PASSWORD),
                                   source=FLEET))[0] == 401
            assert (await _attempt(central, "NEWCOMER",
                                   [*basic_auth("NEWCOMER", OTHER_PASSWORD).items(),
                                    *basic_auth("NEWCOMER", PASSWORD).items()], source=FLEET))[0] == 401
            # The first charger keeps its socket: it is still answered (SecurityError while Pending).
            refused = await _call(first, [2, "hb", "Heartbeat", {}])
            assert refused[:3] == [4, "hb", "SecurityError"]
            async with central.api() as api:
                listed = (await api.get("/api/v1/connections")).json()
                mine = [c for c in listed if c["charge_point_id"] == "NEWCOMER"]
                assert len(mine) == 1
                assert mine[0]["remote"] == FLOODER
                reply = await api.post("/api/v1/charge-points/NEWCOMER/admission", json={"admission": "accept"})
                assert reply.status_code == 200
        row = await db.fetchrow("SELECT credential_hash, security_profile, onboarded_at FROM charge_points "
                                "WHERE id = 'NEWCOMER'")
        assert row is not None
        assert row["credential_hash"].startswith("$argon2id$")
        assert PASSWORD not in row["credential_hash"]
        assert row["security_profile"] == 1
        assert row["onboarded_at"] is not None
        # Accepted now: still only with the pinned password.
        assert (await _attempt(central, "NEWCOMER", {}))[0] == 401
        assert (await _attempt(central, "NEWCOMER", basic_auth("NEWCOMER", OTHER_PASSWORD)))[0] == 401
        async with websockets.connect(url, subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                      additional_headers=basic_auth("NEWCOMER", PASSWORD)) as ws:
            boot = await _call(ws, BOOT)
            assert boot[2]["status"] == "Accepted"  # type: ignore[index]
    # A fresh process (empty verified cache) checks the pinned hash itself.
    async with running_central(db_url, onboard_unknown=True) as central:
        assert (await _attempt(central, "NEWCOMER", basic_auth("NEWCOMER", OTHER_PASSWORD)))[0] == 401
        assert (await _attempt(central, "NEWCOMER", basic_auth("NEWCOMER", PASSWORD)))[0] == 101


@pytest.mark.integration
async def test_unknown_ids_create_at_most_the_pending_cap(db_url: str, db: asyncpg.Connection) -> None:
    cap = 5
    async with running_central(db_url, onboard_unknown=True, onboard_max_pending=cap,
                               auth_failures_per_source_per_min=1000.0) as central:
        ids = [f"RND-{secrets.token_hex(6)}" for _ in range(200)]
        statuses: Counter[int] = Counter()
        lanes = iter(ids)

        async def lane() -> None:
            for cp in lanes:
                statuses[(await _attempt(central, cp, basic_auth(cp, PASSWORD)))[0]] += 1

        await asyncio.gather(*(lane() for _ in range(8)))
        assert statuses == Counter({101: cap, 404: len(ids) - cap})
        assert await db.fetchval("SELECT count(*) FROM charge_points") == cap
        # An operator's decision frees a place.
        first = await db.fetchval("SELECT id FROM charge_points ORDER BY id LIMIT 1")
        async with central.api() as api:
            assert (await api.post(f"/api/v1/charge-points/{first}/admission",
                                   json={"admission": "reject"})).status_code == 200
        assert (await _attempt(central, "ONE-MORE", basic_auth("ONE-MORE", PASSWORD)))[0] == 101
        assert (await _attempt(central, "TOO-MANY", basic_auth("TOO-MANY", PASSWORD)))[0] == 404
        assert await db.fetchval("SELECT count(*) FROM charge_points") == cap + 1


@pytest.mark.integration
async def test_onboarding_spends_the_source_failure_budget(db_url: str, db: asyncpg.Connection) -> None:
    async with running_central(db_url, onboard_unknown=True, auth_failures_per_source_per_min=3.0) as central:
        results = [await _attempt(central, f"NEW-{n}", basic_auth(f"NEW-{n}", PASSWORD)) for n in range(6)]
        assert [s for s, _ in results] == [101, 101, 101, 429, 429, 429]
        assert int(results[3][1]["Retry-After"]) >= 1
        assert (await _attempt(central, "NEW-X", basic_auth("NEW-X", PASSWORD), source=FLEET))[0] == 101
        assert await db.fetchval("SELECT count(*) FROM charge_points") == 4


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    folder = make_shared_tmpdir("csms-pki-")
    try:
        yield make_pki(folder / "main")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.integration
async def test_profile3_onboarding_is_bound_by_the_certificate(db_url: str, db: asyncpg.Connection,
                                                               pki: Pki) -> None:
    async with running_central(db_url, onboard_unknown=True, security_profile=3, tls_cert_file=pki.server_cert,
                               tls_key_file=pki.server_key, tls_client_ca_file=pki.ca_cert) as central:
        async def status(cp_id: str, cn: str) -> int:
            try:
                async with websockets.connect(f"{central.ws_base}/{cp_id}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                              ssl=pki.client_context(cn), open_timeout=30):
                    return 101
            except InvalidStatus as exc:
                return exc.response.status_code

        assert await status("NEW3", "SOMEONE-ELSE") == 403     # a certificate for another id creates nothing
        assert await db.fetchval("SELECT count(*) FROM charge_points") == 0
        assert await status("NEW3", "NEW3") == 101
        assert await db.fetchval("SELECT security_profile FROM charge_points WHERE id = 'NEW3'") == 3
        assert await status("NEW3", "SOMEONE-ELSE") == 403


@pytest.mark.integration
async def test_chargers_onboarded_by_the_old_code_need_a_credential(empty_db_url: str) -> None:
    """Rows the earlier onboarding created (profile 0, no credential) were admitted without any header."""
    conn = await asyncpg.connect(empty_db_url)
    try:
        # Bring the database to the state before 0007, then add what the old onboarding wrote.
        await conn.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY, name text NOT NULL, "
                           "checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        for migration in load_migrations():
            if migration.version < "0007":
                await conn.execute(migration.sql)
                await conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                                   migration.version, migration.name, migration.checksum)
        await conn.execute("INSERT INTO charge_points (id, admission, registration_status, security_profile) "
                           "VALUES ('OLD-ACCEPTED', 'accept', 'Accepted', 0), ('OLD-PENDING', 'pending', "
                           "'Pending', 0)")
        assert "0007_credentials.sql" in await apply_migrations(conn)
    finally:
        await conn.close()
    async with running_central(empty_db_url) as central:
        assert (await _attempt(central, "OLD-ACCEPTED", {}))[0] == 401          # was 101: the takeover
        assert (await _attempt(central, "OLD-ACCEPTED", basic_auth("OLD-ACCEPTED", PASSWORD)))[0] == 401
    async with running_central(empty_db_url, onboard_unknown=True) as central:
        # With onboarding on, the next connection pins its password (trust on first use, again).
        assert (await _attempt(central, "OLD-PENDING", basic_auth("OLD-PENDING", PASSWORD)))[0] == 101
        assert (await _attempt(central, "OLD-PENDING", {}))[0] == 401
        assert (await _attempt(central, "OLD-PENDING", basic_auth("OLD-PENDING", OTHER_PASSWORD)))[0] == 401
