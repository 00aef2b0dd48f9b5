"""The server secret under which generated charger passwords are stored: HMAC-SHA-256, kept outside the database.

A password the system generates has 240 bits of entropy (``credentials.generate_password``): nobody can guess
it, so key stretching (Argon2id) adds nothing and costs ~20 ms of CPU per first login after a restart. It is
stored as ``hmac-sha256$<key id>$<MAC>`` instead, where the MAC is HMAC-SHA-256 under a key derived from a
server secret that never enters the database. A copy of the database alone then reveals nothing testable
about any password, whatever its entropy: without the secret no guess can be checked. Checking one costs
microseconds, so it runs on the event loop (scale-out issue, item 6).

The secret is a text of at least ``SECRET_MIN_CHARS`` characters, given as a setting (``credential_secret``,
e.g. from a Kubernetes Secret) or read from a file (``credential_secret_file``, by default
``<data dir>/credential-secret``), which is created with mode 0600 on first use. Every node on one database
needs the same secret. The key id, a one-way fingerprint of the secret, is stored with every MAC (and once in
``credential_keys``), never the secret: a node whose secret does not match what the database holds refuses to
start instead of refusing every charger.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from hmac import compare_digest
from pathlib import Path

from csms.common.errors import ConfigurationError

logger = logging.getLogger(__name__)

SCHEME = "hmac-sha256"
PREFIX = SCHEME + "$"
SECRET_MIN_CHARS = 32
_KEY_ID_INFO = b"csms/credential-key-id/v1"
_MAC_KEY_INFO = b"csms/credential-mac-key/v1"


class CredentialKeyError(ConfigurationError):
    """The credential secret is missing, malformed, or not the one the database's credentials were made with."""


def is_hmac(stored_hash: str) -> bool:
    return stored_hash.startswith(PREFIX)


def key_id_of(stored_hash: str) -> str | None:
    """The key id of an HMAC credential (None for any other hash)."""
    if not is_hmac(stored_hash):
        return None
    parts = stored_hash.split("$")
    return parts[1] if len(parts) == 3 else None


def _message(charge_point_id: str, password: str) -> bytes:
    # The MAC covers the Basic-auth username (= the id, length-prefixed) and the password: equal passwords of
    # two chargers have different MACs, and a MAC copied to another row does not admit it.
    cp = charge_point_id.encode("utf-8")
    return len(cp).to_bytes(2, "big") + cp + password.encode("utf-8")


@dataclass(frozen=True, slots=True)
class CredentialKey:
    """The keys derived from one server secret: a MAC key and its public key id (16 hex digits)."""

    key_id: str
    _mac_key: bytes = field(repr=False)

    @classmethod
    def from_secret(cls, secret: str) -> CredentialKey:
        text = secret.strip()
        if len(text) < SECRET_MIN_CHARS:
            raise CredentialKeyError(
                f"the credential secret must have at least {SECRET_MIN_CHARS} characters (generate one with: "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))')")
        raw = text.encode("utf-8")
        # Two keys derived with distinct labels (HMAC as a PRF): the key id reveals nothing about the MAC key.
        key_id = hmac.new(raw, _KEY_ID_INFO, hashlib.sha256).hexdigest()[:16]
        return cls(key_id, hmac.new(raw, _MAC_KEY_INFO, hashlib.sha256).digest())

    def digest(self, charge_point_id: str, password: str) -> str:
        """The stored form of a password: ``hmac-sha256$<key id>$<MAC, base64url without padding>``."""
        mac = hmac.new(self._mac_key, _message(charge_point_id, password), hashlib.sha256).digest()
        return f"{PREFIX}{self.key_id}${base64.urlsafe_b64encode(mac).rstrip(b'=').decode('ascii')}"

    def verify(self, stored_hash: str, charge_point_id: str, candidates: Iterable[str]) -> bool:
        """True if one of the text forms of the presented password has this MAC (constant-time compare)."""
        expected = stored_hash.encode("utf-8")
        ok = False
        for candidate in candidates:   # every form is compared, so the time does not tell which one matched
            ok |= compare_digest(self.digest(charge_point_id, candidate).encode("utf-8"), expected)
        return ok


@dataclass(slots=True)
class CredentialSecret:
    """Where this process finds the secret: the value itself (a setting) or a file created 0600 on first use.

    ``owner`` names this process in ``credential_keys`` (the node id, or the command line). ``claimed`` is set
    by the store once the database is known to use this secret's key id.
    """

    secret: str | None = None
    file: Path | None = None
    owner: str = ""
    claimed: bool = False
    _key: CredentialKey | None = None

    def describe(self) -> str:
        if self.secret is not None:
            return "the credential_secret setting (CSMS_CREDENTIAL_SECRET)"
        return f"the file {self.file}" if self.file is not None else "no credential secret configured"

    def load(self) -> CredentialKey | None:
        """The key, or None if neither the setting nor the file exists yet."""
        if self._key is None:
            text = self.secret if self.secret is not None else self._read_file()
            if text is not None:
                self._key = CredentialKey.from_secret(text)
        return self._key

    def load_or_create(self) -> CredentialKey:
        """The key, creating the secret file (mode 0600) if there is none yet."""
        key = self.load()
        if key is not None:
            return key
        if self.file is None:
            raise CredentialKeyError("no credential secret: set credential_secret (CSMS_CREDENTIAL_SECRET) "
                                     "or credential_secret_file")
        _create_secret_file(self.file)
        key = self.load()
        assert key is not None
        return key

    def _read_file(self) -> str | None:
        if self.file is None:
            return None
        try:
            st = self.file.stat()
            text = self.file.read_text("utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CredentialKeyError(f"cannot read the credential secret file {self.file}: {exc}") from exc
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("the credential secret file %s is readable by other users (mode %o); chmod 600 it",
                           self.file, stat.S_IMODE(st.st_mode))
        return text


def _create_secret_file(path: Path) -> None:
    """Write a new 256-bit secret to ``path`` (0600), unless another process has just done so.

    Written to a private temporary file and hard-linked into place: a process that starts at the same moment
    (another worker on this data dir) either wins the link or reads the complete file of the one that won.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
            logger.warning("created the credential secret %s: generated charger passwords are stored as "
                           "HMAC-SHA-256 under it; every node on this database needs the same secret "
                           "(copy this file, or set CSMS_CREDENTIAL_SECRET), and a backup of the database is "
                           "useless for chargers without it", path)
    finally:
        os.unlink(tmp)
