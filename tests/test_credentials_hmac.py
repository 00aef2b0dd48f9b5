"""Generated charger passwords stored as HMAC-SHA-256 under a server secret outside the database (scale-out issue,
item 6): the format and the constant-time check; the CLI and the API register generated passwords as HMAC (no
Argon2id work at login), an operator's password as Argon2id with a warning and a gauge; a legacy Argon2id hash
of a generated-form password is re-stored as HMAC after one login and still works after a restart; a node
without the database's secret refuses to start.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from csms.security import secret as secret_module
from csms.security.credentials import (
    GENERATED_PASSWORD_BITS,
    generate_password,
    hash_password,
    is_generated_form,
    password_candidates,
)
from csms.security.secret import CredentialKey, CredentialKeyError, CredentialSecret, is_hmac, key_id_of
from csms.store.chargers import check_credential_key, writing_key
from tests.central import RunningCentral, running_central
from tests.chargers import basic_auth
from tests.processes import start_csms

SECRET = "test-credential-secret-0123456789abcdef"
OTHER_SECRET = "another-credential-secret-9876543210fedcba"
OPERATOR_PASSWORD = "an-operator-password-0123"
HMAC_RE = re.compile(r"hmac-sha256\$[0-9a-f]{16}\$[A-Za-z0-9_-]{43}")


# --------------------------------------------------------------------------------------------- pure parts

def test_generated_passwords_have_240_bits_and_one_exact_form() -> None:
    samples = {generate_password() for _ in range(500)}
    assert len(samples) == 500
    assert all(len(p) == 40 and re.fullmatch(r"[A-Za-z0-9_-]+", p) and is_generated_form(p) for p in samples)
    # 30 random bytes in a 64-symbol alphabet: 40 × 6 = 240 bits ≥ 128.
    assert GENERATED_PASSWORD_BITS == 240 == 40 * 6
    for other in ("x" * 39, "x" * 41, "a" * 39 + "+", "a" * 39 + "/", "a" * 39 + "=", "a" * 39 + " ",
                  "ä" + "a" * 39, OPERATOR_PASSWORD):
        assert not is_generated_form(other), other


def test_hmac_format_binds_the_id_and_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    key = CredentialKey.from_secret(SECRET)
    password = generate_password()
    stored = key.digest("CP-1", password)
    assert HMAC_RE.fullmatch(stored), stored
    assert is_hmac(stored)
    assert not is_hmac(hash_password(password))
    assert key_id_of(stored) == key.key_id
    assert SECRET not in stored
    assert password not in stored
    assert key.digest("CP-1", password) == stored                 # deterministic
    assert key.digest("CP-2", password) != stored                 # bound to the username (the id)
    assert CredentialKey.from_secret("  " + SECRET + "\n").key_id == key.key_id   # surrounding blanks ignored
    calls: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return hmac.compare_digest(a, b)

    monkeypatch.setattr(secret_module, "compare_digest", spy)
    assert key.verify(stored, "CP-1", password_candidates(password.encode()))
    assert not key.verify(stored, "CP-1", password_candidates(b"wrong-password-0123456789"))
    assert not key.verify(stored, "CP-2", password_candidates(password.encode()))
    assert len(calls) == 3
    assert all(b == stored.encode() for _, b in calls)


def test_wrong_or_short_secret_is_refused() -> None:
    key, other = CredentialKey.from_secret(SECRET), CredentialKey.from_secret(OTHER_SECRET)
    stored = key.digest("CP-1", "p" * 40)
    assert other.key_id != key.key_id
    assert not other.verify(stored, "CP-1", ["p" * 40])
    with pytest.raises(CredentialKeyError, match="at least 32"):
        CredentialKey.from_secret("too-short")


def test_secret_file_is_created_0600_on_first_use_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "data" / "credential-secret"
    assert CredentialSecret(file=path).load() is None             # nothing is created by looking
    assert not path.exists()
    key = CredentialSecret(file=path).load_or_create()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().strip()) >= 32
    assert CredentialSecret(file=path).load_or_create().key_id == key.key_id   # a second process reads it
    assert list(path.parent.iterdir()) == [path]                   # no temporary file left behind
    # The setting wins over the file; the same text gives the same key wherever it comes from.
    assert CredentialSecret(secret=SECRET, file=path).load() == CredentialKey.from_secret(SECRET)
    assert CredentialSecret(secret=path.read_text(), file=None).load() == key


# --------------------------------------------------------------------------------------------- integration

async def _status(central: RunningCentral, cp_id: str, password: str) -> int:
    """101 if the websocket opened, else the HTTP status of the refusal."""
    try:
        async with websockets.connect(f"{central.ws_base}/{cp_id}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                      additional_headers=basic_auth(cp_id, password), open_timeout=30):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def _metrics(central: RunningCentral) -> dict[str, float]:
    async with central.api() as api:
        text = (await api.get("/metrics")).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def _wait_metric(central: RunningCentral, name: str, value: float, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = (await _metrics(central)).get(name)
        if seen == value:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} = {seen}, expected {value}")


async def _credential(db_url: str, cp_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow("SELECT credential_hash, credential_origin FROM charge_points WHERE id = $1", cp_id)
    finally:
        await conn.close()
    assert row is not None
    return row


def _cli(db_url: str, secret_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "csms", *args, "--database-url", db_url,
                           "--credential-secret-file", str(secret_file)],
                          capture_output=True, text=True, timeout=120, check=False, env={**os.environ})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _password(stdout: str) -> str:
    match = re.search(r"^password: (\S+)$", stdout, re.MULTILINE)
    assert match, stdout
    return match.group(1)


@pytest.mark.integration
async def test_generated_passwords_are_hmac_and_log_in_without_kdf_work(db_url: str, tmp_path: Path) -> None:
    secret_file = tmp_path / "credential-secret"
    out = await asyncio.to_thread(_cli, db_url, secret_file, "charge-points", "add", "CP-HMAC")
    password = _password(out.stdout)
    assert is_generated_form(password)
    assert "warning" not in out.stderr
    key = CredentialSecret(file=secret_file).load()
    assert key is not None
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    row = await _credential(db_url, "CP-HMAC")
    assert HMAC_RE.fullmatch(row["credential_hash"])
    assert key_id_of(row["credential_hash"]) == key.key_id
    assert row["credential_origin"] == "generated"
    async with running_central(db_url, credential_secret_file=secret_file, auth_failures_per_id_per_min=2) as central:
        assert await _status(central, "CP-HMAC", password) == 101
        # The API without a password: generated, returned once, HMAC under the same secret.
        async with central.api() as api:
            reply = await api.post("/api/v1/charge-points", json={"id": "CP-API"})
        assert reply.status_code == 201, reply.text
        assert "warning" not in reply.json()
        api_password = reply.json()["password"]
        assert key_id_of((await _credential(db_url, "CP-API"))["credential_hash"]) == key.key_id
        assert await _status(central, "CP-API", api_password) == 101
        # Wrong passwords spend the id's failure budget (2 per minute): then 429, but the right one still gets in.
        assert [await _status(central, "CP-API", "wrong-password-0123456789") for _ in range(3)] == [401, 401, 429]
        assert await _status(central, "CP-API", api_password) == 101
        metrics = await _metrics(central)
        assert metrics.get('csms_credential_checks_total{scheme="hmac"}') == 6
        # No Argon2id work at all: nothing went through the KDF pool.
        assert metrics.get("csms_kdf_wait_seconds_count") == 0
        assert metrics.get('csms_credential_checks_total{scheme="argon2id"}', 0) == 0
        assert central.system.gateway is not None
        assert not central.system.gateway._policy.verifier._ok


@pytest.mark.integration
async def test_operator_passwords_keep_argon2id_warn_and_are_counted(db_url: str, tmp_path: Path) -> None:
    secret_file = tmp_path / "credential-secret"
    out = await asyncio.to_thread(_cli, db_url, secret_file, "charge-points", "add", "CP-OP",
                                  "--password", OPERATOR_PASSWORD)
    assert "password:" not in out.stdout
    assert "warning: a password given by an operator is stored as Argon2id" in out.stderr
    assert not secret_file.exists()            # no secret is needed (nor created) for an operator's password
    # An operator's password of exactly the generated form is still the operator's: Argon2id, never migrated.
    generated_form = generate_password()
    async with running_central(db_url, credential_secret_file=secret_file, slow_hash_count_interval_s=0.2) as central:
        async with central.api() as api:
            reply = await api.post("/api/v1/charge-points", json={"id": "CP-OP2", "password": generated_form})
        assert reply.status_code == 201, reply.text
        assert "stored as Argon2id" in reply.json()["warning"]
        assert "password" not in reply.json()
        for cp_id in ("CP-OP", "CP-OP2"):
            row = await _credential(db_url, cp_id)
            assert row["credential_hash"].startswith("$argon2id$")
            assert row["credential_origin"] == "operator"
        await _wait_metric(central, 'csms_chargers_slow_hash{origin="operator"}', 2)
        assert await _status(central, "CP-OP", OPERATOR_PASSWORD) == 101
        assert await _status(central, "CP-OP2", generated_form) == 101
        assert await _status(central, "CP-OP2", generated_form) == 101     # remembered: no second KDF run
        metrics = await _metrics(central)
        assert metrics.get("csms_kdf_wait_seconds_count") == 2
        assert metrics.get('csms_credential_checks_total{scheme="argon2id"}') == 2
        assert metrics.get('csms_credential_checks_total{scheme="argon2id_cached"}') == 1
        assert metrics.get("csms_credentials_migrated_total") == 0
    assert (await _credential(db_url, "CP-OP2"))["credential_hash"].startswith("$argon2id$")
    # Rotation to a generated password: HMAC from then on (the secret file is created now, on first use).
    out = await asyncio.to_thread(_cli, db_url, secret_file, "charge-points", "set-password", "CP-OP", "--generate")
    rotated = _password(out.stdout)
    assert "warning" not in out.stderr
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    row = await _credential(db_url, "CP-OP")
    assert HMAC_RE.fullmatch(row["credential_hash"])
    assert row["credential_origin"] == "generated"
    async with running_central(db_url, credential_secret_file=secret_file) as central:
        assert await _status(central, "CP-OP", OPERATOR_PASSWORD) == 401
        assert await _status(central, "CP-OP", rotated) == 101
        assert (await _metrics(central)).get("csms_kdf_wait_seconds_count") == 0


@pytest.mark.integration
async def test_legacy_hash_of_a_generated_password_is_migrated_after_one_login(db_url: str, tmp_path: Path) -> None:
    secret_file = tmp_path / "credential-secret"
    legacy_generated, legacy_chosen = generate_password(), OPERATOR_PASSWORD
    conn = await asyncpg.connect(db_url)
    try:
        # Rows as the code before HMAC credentials wrote them: an Argon2id hash, no credential_origin.
        await conn.executemany(
            "INSERT INTO charge_points (id, credential_hash, security_profile, admission) VALUES ($1, $2, 1, 'accept')",
            [("CP-OLD", hash_password(legacy_generated)), ("CP-OLD-OWN", hash_password(legacy_chosen))])
    finally:
        await conn.close()
    async with running_central(db_url, credential_secret_file=secret_file, slow_hash_count_interval_s=0.2) as central:
        await _wait_metric(central, 'csms_chargers_slow_hash{origin="legacy"}', 2)
        assert await _status(central, "CP-OLD", legacy_generated) == 101
        assert await _status(central, "CP-OLD-OWN", legacy_chosen) == 101
        await _wait_metric(central, "csms_credentials_migrated_total", 1)
        await _wait_metric(central, 'csms_chargers_slow_hash{origin="legacy"}', 1)
        row = await _credential(db_url, "CP-OLD")
        key = CredentialSecret(file=secret_file).load()        # created on first use, by the migration
        assert key is not None
        assert HMAC_RE.fullmatch(row["credential_hash"])
        assert key_id_of(row["credential_hash"]) == key.key_id
        assert row["credential_origin"] == "generated"
        assert (await _credential(db_url, "CP-OLD-OWN"))["credential_hash"].startswith("$argon2id$")
        assert await _status(central, "CP-OLD", legacy_generated) == 101
        assert await _status(central, "CP-OLD", "wrong-password-0123456789") == 401
        assert (await _metrics(central)).get("csms_credentials_migrated_total") == 1   # once
    # A restarted central system (empty caches) admits it with the HMAC alone: no KDF work.
    async with running_central(db_url, credential_secret_file=secret_file) as central:
        assert await _status(central, "CP-OLD", legacy_generated) == 101
        metrics = await _metrics(central)
        assert metrics.get("csms_kdf_wait_seconds_count") == 0
        assert metrics.get('csms_credential_checks_total{scheme="hmac"}') == 1


@pytest.mark.integration
async def test_a_node_without_the_databases_secret_refuses_to_start(db_url: str, tmp_path: Path) -> None:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    try:
        first = CredentialSecret(secret=SECRET, owner="node-a")
        async with pool.acquire() as conn:
            key = await writing_key(conn, first)
        assert await check_credential_key(pool, CredentialSecret(secret=SECRET)) == key
        # Another secret cannot store credentials either (nothing is written under it).
        async with pool.acquire() as conn:
            with pytest.raises(CredentialKeyError, match=f"key id {key.key_id}"):
                await writing_key(conn, CredentialSecret(secret=OTHER_SECRET))
        async with pool.acquire() as conn:
            await conn.execute("INSERT INTO charge_points (id, credential_hash, security_profile, admission) "
                               "VALUES ('CP-K', $1, 1, 'accept')", key.digest("CP-K", generate_password()))
    finally:
        await pool.close()
    with pytest.raises(CredentialKeyError, match="has no credential secret"):
        async with running_central(db_url):          # a fresh data dir: no secret file
            pass
    with pytest.raises(CredentialKeyError, match=f"has key id {CredentialKey.from_secret(OTHER_SECRET).key_id}"):
        async with running_central(db_url, credential_secret=OTHER_SECRET):
            pass
    # The real process: `csms serve` exits with status 1 and says why.
    workdir = tmp_path / "node-b"
    workdir.mkdir()
    node = start_csms(["serve", "--database-url", db_url, "--data-dir", str(workdir / "data"),
                       "--node-id", "node-b"], workdir=workdir)
    try:
        node.proc.wait(90)
    finally:
        node.stop()
    assert node.proc.returncode == 1, node.log()
    assert "node-a" in node.log()
    assert "give every node on this database the same secret" in node.log()
    async with running_central(db_url, credential_secret=SECRET) as central:     # the right secret: fine
        assert await _status(central, "CP-K", "not-the-password-0123456") == 401
