"""Charger credentials: how passwords are stored and checked, and the verified cache.

Basic auth (security profiles 1 and 2; 1.6 Security Whitepaper §2.3, 2.0.1 A00):
the username must equal the charge point id and is split from the password at the
first ':' (ids cannot contain ':'). 2.x passwords are UTF-8 text of 16–40 (2.1: 64)
characters; a 1.6 AuthorizationKey is 16–20 bytes shown as up to 40 hex digits, and
chargers send either the raw bytes or the hex text (R21 [1.6J §6.2.2, 2.0.1 A00.FR.205]). We store the hash of the
registered text form and accept the raw-bytes form by hex-encoding it.

Two ways to store a password (scale-out issue, item 6):

* a password the system generated (240 bits of entropy, ``generate_password``) is stored as HMAC-SHA-256
  under a server secret kept outside the database (``csms.security.secret``): checked in microseconds;
* a password someone chose (an operator's ``--password``, a charger's pinned at onboarding) keeps Argon2id,
  which costs ~20 ms on purpose: its entropy is unknown. A reconnect storm would pay that per charger, so a
  successful check is remembered (SHA-256 of the presented password against the stored hash, in memory
  only) and the next identical check costs a hash. HMAC credentials need no such cache.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# OWASP minimum for Argon2id (19 MiB, t=2, p=1).
_HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
MIN_PASSWORD_CHARS = 16
MAX_PASSWORD_CHARS = 64


def hash_password(password: str) -> str:
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise ValueError(f"a charger password has {MIN_PASSWORD_CHARS}–{MAX_PASSWORD_CHARS} characters "
                         "(2.0.1 A00.FR.205; 1.6: 16–20 bytes as 32–40 hex digits)")
    return _HASHER.hash(password)


def pinnable_password(password: bytes) -> str | None:
    """The text form under which a presented password is pinned at onboarding, or None if it breaks the rules.

    2.x: UTF-8 text of 16–40 characters (2.0.1 A00.FR.205), 2.1 up to 64; 1.6: an AuthorizationKey of 16–20
    bytes that chargers send raw (1.6J §6.2.2 example) and that is pinned as its hex text, the form an operator
    would register. The same rules as ``hash_password``, so a pinned password verifies like a registered one.
    """
    try:
        text = password.decode("utf-8")
    except UnicodeDecodeError:
        return password.hex() if 16 <= len(password) <= 20 else None
    return text if MIN_PASSWORD_CHARS <= len(text) <= MAX_PASSWORD_CHARS else None


# A generated password: 30 random bytes as URL-safe base64, exactly 40 characters of a 64-symbol alphabet
# (6 bits each): 240 bits of entropy, the longest a 2.0.1 charger must accept (A00.FR.205: 16–40 characters).
GENERATED_PASSWORD_BYTES = 30
GENERATED_PASSWORD_CHARS = 40
GENERATED_PASSWORD_BITS = GENERATED_PASSWORD_BYTES * 8
_GENERATED_FORM = re.compile(rf"[A-Za-z0-9_-]{{{GENERATED_PASSWORD_CHARS}}}")

SLOW_HASH_WARNING = (
    "a password given by an operator is stored as Argon2id (its entropy is unknown): every first login after a "
    "restart costs ~20 ms of CPU in the KDF pool; leave the password out to get a generated one (HMAC-SHA-256, "
    "checked in microseconds)")


def generate_password() -> str:
    """A 2.x-compatible password: 40 URL-safe characters, 240 bits of entropy."""
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)


# A generated 1.6 AuthorizationKey (key rotation): 20 random bytes, the longest the Security Whitepaper allows
# ("hexadecimal represented, 20 bytes maximum, up to 40 hex digits"), sent and stored as 40 lowercase hex digits.
# A charger presents either those digits or the 20 raw bytes; ``password_candidates`` maps the raw bytes to the
# lowercase digits, so both verify against the one HMAC. 160 bits: beyond guessing, no stretching needed.
AUTHORIZATION_KEY_BYTES = 20


def generate_authorization_key() -> str:
    """A 1.6 AuthorizationKey: 40 lowercase hex digits (20 random bytes)."""
    return secrets.token_hex(AUTHORIZATION_KEY_BYTES)


def generate_password_for(ocpp_version: str) -> str:
    """A new generated password in the form the charger's version sets it: 1.6 AuthorizationKey (hex),
    2.x SecurityCtrlr.BasicAuthPassword (40 URL-safe characters, A00.FR.205)."""
    return generate_authorization_key() if ocpp_version == "1.6" else generate_password()


def is_generated_form(password: str) -> bool:
    """The password has exactly the form ``generate_password`` produces: 40 characters of [A-Za-z0-9_-].

    Decides whether a legacy Argon2id credential is re-stored as HMAC after a successful login. The rule can
    also match a password an operator chose in that form; that is harmless against a leak of the database
    alone (nothing testable without the secret), and such a 40-character string is almost always
    machine-made anyway.
    """
    return _GENERATED_FORM.fullmatch(password) is not None


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    username: str
    password: bytes


def parse_basic_auth(header: str | None) -> BasicCredentials | None:
    """Decode ``Authorization: Basic …``; None if absent or malformed."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    if not sep:
        return None
    try:
        username = user.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return BasicCredentials(username, password)


def password_candidates(password: bytes) -> list[str]:
    """The text forms a presented password may have been registered as."""
    out: list[str] = []
    with contextlib.suppress(UnicodeDecodeError):
        out.append(password.decode("utf-8"))
    if 16 <= len(password) <= 20:  # 1.6 raw-byte AuthorizationKey
        out.append(password.hex())
        out.append(password.hex().upper())
    return out


def matches(stored_hash: str, password: bytes) -> bool:
    """The KDF check of every text form of ``password`` (pure; safe in any thread; 1–3 Argon2id runs)."""
    for candidate in password_candidates(password):
        try:
            if _HASHER.verify(stored_hash, candidate):
                return True
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            continue
    return False


class CredentialVerifier:
    """The verified cache. Used on the event loop only; the KDF (``matches``) runs in the handshake's pool."""

    def __init__(self, *, cache_size: int = 200_000) -> None:
        self._ok: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._cache_size = cache_size

    def verify_cached(self, charge_point_id: str, stored_hash: str, password: bytes) -> bool:
        """True if this exact password was verified against this exact hash before (cheap)."""
        key = (charge_point_id, hashlib.sha256(password).hexdigest())
        cached = self._ok.get(key)
        if cached is not None and hmac.compare_digest(cached, stored_hash):
            self._ok.move_to_end(key)
            return True
        return False

    def remember(self, charge_point_id: str, stored_hash: str, password: bytes) -> None:
        """Record a successful check (or a password just pinned) so that the next one is cheap."""
        self._remember((charge_point_id, hashlib.sha256(password).hexdigest()), stored_hash)

    def forget(self, charge_point_id: str) -> None:
        for key in [k for k in self._ok if k[0] == charge_point_id]:
            del self._ok[key]

    def _remember(self, key: tuple[str, str], stored_hash: str) -> None:
        self._ok[key] = stored_hash
        if len(self._ok) > self._cache_size:
            self._ok.popitem(last=False)
