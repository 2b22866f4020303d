"""Secrets at rest, API keys and dashboard passwords.

ARI and media passwords and organization secrets are encrypted with Fernet (AES-128-CBC + HMAC)
under a key from ``VR3AI_SECRET_KEY`` or, by default, a key generated once into
``<data dir>/secret.key`` (mode 0600). Nothing here feeds a process-wide log redactor: the object
that uses a decrypted value builds its own :class:`vr3ai.logs.Redactor` from it (see ``vr3ai.logs``
for why one shared set of every tenant's values was an oracle and a cost that grew with them).

Why the key handling looks like this:

* ``VR3AI_SECRET_KEY`` may be a Fernet key (used as is; what ``secret.key`` holds) or a passphrase.
  A passphrase is stretched with scrypt (N=2^17, r=8, p=1: 128 MiB, about half a second, once per
  process), so a stolen database costs an attacker that much per guess instead of one SHA-256. The
  salt is a fixed label, not random: the key must be reproducible from the passphrase alone (the
  database may live on another machine than the data folder). Values encrypted under the old
  derivation (plain SHA-256 of the passphrase) still decrypt: the old key stays a decrypt-only key
  of a :class:`~cryptography.fernet.MultiFernet`, and ``vr3ai secrets rotate`` re-encrypts them.
* Rotation: the first key encrypts, every later one only decrypts (``MultiFernet``). Previous keys
  come from ``VR3AI_SECRET_KEY_PREVIOUS`` or from the lines after the first in ``secret.key``.

API keys are random 256-bit tokens; only their SHA-256 is stored (a slow hash buys nothing for
tokens of that entropy and would cost every request).

Passwords are hashed with scrypt at the cost the OWASP Password Storage Cheat Sheet recommends
(N=2^17, r=8, p=1). A stored hash carries its parameters (``scrypt$ln=17,r=8,p=1$salt$digest``), so
hashes made at an older cost (``scrypt$salt$digest``, N=2^14) still verify and are upgraded by the
next successful sign-in (:func:`password_needs_rehash`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets as pysecrets
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from vr3ai.files import private_dir

API_KEY_PREFIX = "vr3_"
SECRET_KEY_FILE = "secret.key"
# Domain separation for the passphrase KDF; changing it would make every stored secret unreadable.
_PASSPHRASE_SALT = b"vr3ai VR3AI_SECRET_KEY scrypt v2"


@dataclass(frozen=True)
class ScryptCost:
    log_n: int
    r: int
    p: int

    @property
    def maxmem(self) -> int:
        # scrypt needs 128 * r * N bytes; hashlib refuses anything over 32 MiB unless told.
        return 128 * self.r * (2**self.log_n) + 2**20

    def encode(self) -> str:
        return f"ln={self.log_n},r={self.r},p={self.p}"


PASSWORD_COST = ScryptCost(log_n=17, r=8, p=1)
"""OWASP Password Storage Cheat Sheet: scrypt with N=2^17 (128 MiB), r=8, p=1."""
LEGACY_PASSWORD_COST = ScryptCost(log_n=14, r=8, p=1)
"""What hashes without parameters (``scrypt$salt$digest``) were made with."""
PASSPHRASE_COST = ScryptCost(log_n=17, r=8, p=1)
# A stored hash names its own cost; refuse absurd ones so a corrupt row cannot eat the machine.
_MAX_LOG_N, _MAX_R, _MAX_P, _MAX_MEM = 20, 16, 16, 2**30
_PARAMS_RE = re.compile(r"ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})")


def _scrypt(secret: bytes, salt: bytes, cost: ScryptCost) -> bytes:
    return hashlib.scrypt(secret, salt=salt, n=2**cost.log_n, r=cost.r, p=cost.p, maxmem=cost.maxmem, dklen=32)


def _as_fernet_key(material: str) -> bytes | None:
    try:
        raw = base64.urlsafe_b64decode(material.encode())
    except (ValueError, TypeError, binascii.Error):
        return None
    return material.encode() if len(raw) == 32 else None


@lru_cache(maxsize=8)
def _passphrase_keys(passphrase: str) -> tuple[bytes, bytes]:
    """(KDF key, legacy SHA-256 key). Cached: the CLI and tests build several boxes per process."""
    stretched = _scrypt(passphrase.encode(), _PASSPHRASE_SALT, PASSPHRASE_COST)
    legacy = hashlib.sha256(passphrase.encode()).digest()
    return base64.urlsafe_b64encode(stretched), base64.urlsafe_b64encode(legacy)


def fernet_keys(material: str) -> list[bytes]:
    """The Fernet keys one configured key stands for: itself when it is a Fernet key; for a
    passphrase its scrypt-derived key first, then the key the old SHA-256 derivation made."""
    key = _as_fernet_key(material)
    if key is not None:
        return [key]
    return list(_passphrase_keys(material))


def read_key_file(path: Path) -> list[str]:
    """Non-empty lines of ``secret.key``: the current key first, then decrypt-only previous keys."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def write_key_file(path: Path, keys: Sequence[str]) -> None:
    """Replace ``secret.key`` atomically (a crash leaves the old or the new file, never half). The new
    file keeps the old one's owner: run as root (``sudo vr3ai secrets rotate``), it must stay readable by
    the user the server runs as."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(k + "\n" for k in keys))
        f.flush()
        os.fsync(f.fileno())
        if path.exists() and os.geteuid() == 0:
            st = path.stat()
            os.fchown(f.fileno(), st.st_uid, st.st_gid)
    os.replace(tmp, path)


class SecretBox:
    def __init__(self, key_material: str, previous: Sequence[str] = ()) -> None:
        if not key_material:
            raise ValueError("the secret key is empty")
        keys: list[bytes] = []
        for material in (key_material, *previous):
            keys += [k for k in fernet_keys(material) if k not in keys]
        self._primary = Fernet(keys[0])
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    @classmethod
    def from_settings(cls, secret_key: str, data_dir: Path, previous_key: str = "") -> SecretBox:
        previous = [previous_key] if previous_key else []
        if secret_key:
            return cls(secret_key, previous)
        path = data_dir / SECRET_KEY_FILE
        if not path.exists():
            private_dir(data_dir)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(Fernet.generate_key().decode())
        keys = read_key_file(path)
        if not keys:
            raise ValueError(f"{path} is empty")
        return cls(keys[0], [*keys[1:], *previous])

    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            value = self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as e:
            raise ValueError("stored secret cannot be decrypted with the current secret key") from e
        return value

    def is_current(self, token: str) -> bool:
        """Whether ``token`` is encrypted under the current (first) key."""
        try:
            self._primary.decrypt(token.encode())
        except InvalidToken:
            return False
        return True

    def rotate(self, token: str) -> str:
        """``token`` re-encrypted under the current key (ValueError when no key opens it)."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken as e:
            raise ValueError("stored secret cannot be decrypted with the current or previous secret keys") from e


def new_api_key() -> str:
    key = API_KEY_PREFIX + pysecrets.token_urlsafe(32)
    return key


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def hash_password(password: str, cost: ScryptCost = PASSWORD_COST) -> str:
    salt = pysecrets.token_bytes(16)
    digest = _scrypt(password.encode(), salt, cost)
    return f"scrypt${cost.encode()}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def dummy_password_hash() -> str:
    """A well-formed hash at today's cost that no password matches (random digest, no hashing
    spent): verifying against it for an unknown e-mail takes as long as for a real user."""
    salt, digest = pysecrets.token_bytes(16), pysecrets.token_bytes(32)
    return f"scrypt${PASSWORD_COST.encode()}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _parse_hash(stored: str) -> tuple[ScryptCost, bytes, bytes] | None:
    parts = stored.split("$")
    if len(parts) == 3 and parts[0] == "scrypt":
        cost, salt_b64, digest_b64 = LEGACY_PASSWORD_COST, parts[1], parts[2]
    elif len(parts) == 4 and parts[0] == "scrypt":
        m = _PARAMS_RE.fullmatch(parts[1])
        if m is None:
            return None
        cost = ScryptCost(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        if not (1 <= cost.log_n <= _MAX_LOG_N and 1 <= cost.r <= _MAX_R and 1 <= cost.p <= _MAX_P):
            return None
        if 128 * cost.r * 2**cost.log_n > _MAX_MEM:
            return None
        salt_b64, digest_b64 = parts[2], parts[3]
    else:
        return None
    try:
        return cost, base64.b64decode(salt_b64, validate=True), base64.b64decode(digest_b64, validate=True)
    except (ValueError, binascii.Error):
        return None


def verify_password(password: str, stored: str) -> bool:
    parsed = _parse_hash(stored)
    if parsed is None:
        return False
    cost, salt, expected = parsed
    return hmac.compare_digest(_scrypt(password.encode(), salt, cost), expected)


def password_needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made at another cost than today's (re-hash after a good sign-in)."""
    parsed = _parse_hash(stored)
    return parsed is None or parsed[0] != PASSWORD_COST
