"""Secrets at rest and API keys.

ARI and media passwords and organization secrets are encrypted with Fernet (AES-128-CBC + HMAC)
under a key from ``VR3AI_SECRET_KEY`` or, by default, a key generated once into
``<data dir>/secret.key`` (mode 0600). Every value we decrypt is registered with the log redactor.
API keys are random 256-bit tokens; only their SHA-256 is stored (a slow hash buys nothing for
tokens of that entropy and would cost every request).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets as pysecrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from vr3ai.logs import register_secret

API_KEY_PREFIX = "vr3_"


class SecretBox:
    def __init__(self, key_material: str) -> None:
        # Accept a ready Fernet key or any passphrase (stretched to 32 bytes).
        try:
            raw = base64.urlsafe_b64decode(key_material.encode())
            key = key_material.encode() if len(raw) == 32 else None
        except (ValueError, TypeError):
            key = None
        if key is None:
            key = base64.urlsafe_b64encode(hashlib.sha256(key_material.encode()).digest())
        self._fernet = Fernet(key)

    @classmethod
    def from_settings(cls, secret_key: str, data_dir: Path) -> SecretBox:
        if secret_key:
            return cls(secret_key)
        path = data_dir / "secret.key"
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(Fernet.generate_key().decode())
        return cls(path.read_text().strip())

    def encrypt(self, value: str) -> str:
        register_secret(value)
        return self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            value = self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as e:
            raise ValueError("stored secret cannot be decrypted with the current secret key") from e
        register_secret(value)
        return value


def new_api_key() -> str:
    key = API_KEY_PREFIX + pysecrets.token_urlsafe(32)
    register_secret(key)
    return key


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def hash_password(password: str) -> str:
    salt = pysecrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, salt_b64, digest_b64 = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    salt = base64.b64decode(salt_b64)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return hmac.compare_digest(digest, base64.b64decode(digest_b64))
