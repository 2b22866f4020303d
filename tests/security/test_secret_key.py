"""Item 9 (Low): the secret key. A passphrase goes through a real KDF (not one SHA-256), data
encrypted under the old derivation still opens, and ``vr3ai secrets rotate`` moves every stored
secret to a new key (file key and environment key), keeping old keys only while needed."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken

from vr3ai.cli import main
from vr3ai.core.keyrotation import encrypted_columns
from vr3ai.core.orgs import create_organization
from vr3ai.core.secrets import SecretBox
from vr3ai.db.migrate import upgrade
from vr3ai.db.models import OrganizationSecret, TelephonyConfiguration
from vr3ai.db.session import Database

PASSPHRASE = "correct horse battery staple"


def _sha256_key(passphrase: str) -> Fernet:
    """What main derived from a passphrase: one unsalted SHA-256."""
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(passphrase.encode()).digest()))


def test_passphrase_is_not_a_single_sha256() -> None:
    token = SecretBox(PASSPHRASE).encrypt("ari-password-1")
    with pytest.raises(InvalidToken):
        _sha256_key(PASSPHRASE).decrypt(token.encode())
    # The derivation is deterministic: another process with the same passphrase reads it.
    assert SecretBox(PASSPHRASE).decrypt(token) == "ari-password-1"
    with pytest.raises(ValueError):
        SecretBox(PASSPHRASE + "x").decrypt(token)


def test_passphrase_kdf_is_slow_and_memory_hard() -> None:
    from vr3ai.core.secrets import PASSPHRASE_COST

    # OWASP's scrypt floor for passwords is N=2^17, r=8, p=1 (or an equivalent N*r*p).
    assert 2**PASSPHRASE_COST.log_n * PASSPHRASE_COST.r * PASSPHRASE_COST.p >= 2**17 * 8


def test_data_under_the_old_derivation_still_decrypts() -> None:
    old_token = _sha256_key(PASSPHRASE).encrypt(b"stored before the upgrade").decode()
    assert SecretBox(PASSPHRASE).decrypt(old_token) == "stored before the upgrade"


async def _seed(db: Database, box: SecretBox) -> None:
    await upgrade(db)
    org, _ = await create_organization(db, "Acme")
    async with db.session() as s, s.begin():
        s.add(OrganizationSecret(organization_id=org.id, name="llm", value_enc=box.encrypt("sk-llm-value")))
        s.add(
            TelephonyConfiguration(
                organization_id=org.id,
                name="office",
                ari_endpoint_url="http://127.0.0.1:8088",
                endpoint_key="http://127.0.0.1:8088",
                stasis_app_name="vr3ai",
                app_password_enc=box.encrypt("ari-pass"),
                websocket_client_name="vr3ai",
                media_username="media",
                media_password_enc=box.encrypt("media-pass"),
            )
        )


async def _stored_tokens(db: Database) -> list[str]:
    from sqlalchemy import select

    tokens: list[str] = []
    async with db.session() as s:
        for _table, column in encrypted_columns():
            tokens += [t for t in (await s.scalars(select(column))).all() if t is not None]
    return tokens


def _run(coro_fn, url: str):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        db = Database(url)
        try:
            return await coro_fn(db)
        finally:
            await db.dispose()

    return asyncio.run(go())


def test_every_encrypted_column_is_known() -> None:
    names = {f"{t.name}.{c.name}" for t, c in encrypted_columns()}
    assert {
        "organization_secrets.value_enc",
        "telephony_configurations.app_password_enc",
        "telephony_configurations.media_password_enc",
    } <= names


def test_rotate_file_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("VR3AI_SECRET_KEY", raising=False)
    monkeypatch.delenv("VR3AI_SECRET_KEY_PREVIOUS", raising=False)
    monkeypatch.delenv("VR3AI_DATABASE_URL", raising=False)
    monkeypatch.setenv("VR3AI_DATA_DIR", str(tmp_path))
    url = f"sqlite+aiosqlite:///{tmp_path / 'vr3ai.db'}"
    old_box = SecretBox.from_settings("", tmp_path)
    old_key = (tmp_path / "secret.key").read_text().strip()
    _run(lambda db: _seed(db, old_box), url)

    assert main(["secrets", "rotate", "--new-key"]) == 0
    lines = (tmp_path / "secret.key").read_text().split()
    assert len(lines) == 2 and lines[1] == old_key and lines[0] != old_key
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600
    new = Fernet(lines[0].encode())
    tokens = _run(_stored_tokens, url)
    assert len(tokens) == 3
    assert sorted(new.decrypt(t.encode()).decode() for t in tokens) == ["ari-pass", "media-pass", "sk-llm-value"]
    # A process started before the rotation (old key only) no longer opens them...
    with pytest.raises(ValueError):
        old_box.decrypt(tokens[0])
    # ...while one started after it opens both old and new values (MultiFernet).
    both = SecretBox.from_settings("", tmp_path)
    assert both.decrypt(old_box.encrypt("written by the old process")) == "written by the old process"
    assert '"rotated": 3' in capsys.readouterr().out

    assert main(["secrets", "rotate", "--forget-previous"]) == 0
    assert (tmp_path / "secret.key").read_text().split() == lines[:1]
    assert '"already_current": 3' in capsys.readouterr().out
    assert SecretBox.from_settings("", tmp_path).decrypt(tokens[1]) in {"ari-pass", "media-pass", "sk-llm-value"}


def test_forget_previous_refuses_while_old_values_remain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VR3AI_SECRET_KEY", raising=False)
    monkeypatch.delenv("VR3AI_DATABASE_URL", raising=False)
    monkeypatch.setenv("VR3AI_DATA_DIR", str(tmp_path))
    url = f"sqlite+aiosqlite:///{tmp_path / 'vr3ai.db'}"
    old_box = SecretBox.from_settings("", tmp_path)
    _run(lambda db: _seed(db, old_box), url)
    # A value no configured key opens: rotation stops, names the row, and changes nothing.
    stranger = Fernet(Fernet.generate_key()).encrypt(b"unknown").decode()

    async def poison(db: Database) -> None:
        from sqlalchemy import update

        async with db.session() as s, s.begin():
            await s.execute(update(OrganizationSecret).values(value_enc=stranger))

    _run(poison, url)
    before = sorted(_run(_stored_tokens, url))
    assert main(["secrets", "rotate", "--new-key", "--forget-previous"]) == 2
    assert sorted(_run(_stored_tokens, url)) == before
    assert len((tmp_path / "secret.key").read_text().split()) == 2  # the old key is kept


def test_rotate_environment_key_and_legacy_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("VR3AI_DATABASE_URL", raising=False)
    monkeypatch.setenv("VR3AI_DATA_DIR", str(tmp_path))
    url = f"sqlite+aiosqlite:///{tmp_path / 'vr3ai.db'}"

    class LegacyBox(SecretBox):
        """Encrypts like main did with a passphrase."""

        def __init__(self) -> None:
            self._fernet = _sha256_key(PASSPHRASE)  # type: ignore[assignment]

    _run(lambda db: _seed(db, LegacyBox()), url)

    # Same passphrase: rotate moves the values from the SHA-256 key to the scrypt key.
    monkeypatch.setenv("VR3AI_SECRET_KEY", PASSPHRASE)
    assert main(["secrets", "rotate"]) == 0
    assert '"rotated": 3' in capsys.readouterr().out
    for token in _run(_stored_tokens, url):
        with pytest.raises(InvalidToken):
            _sha256_key(PASSPHRASE).decrypt(token.encode())

    # New key in the environment, the old one as VR3AI_SECRET_KEY_PREVIOUS.
    new_key = Fernet.generate_key().decode()
    monkeypatch.setenv("VR3AI_SECRET_KEY", new_key)
    monkeypatch.setenv("VR3AI_SECRET_KEY_PREVIOUS", PASSPHRASE)
    assert main(["secrets", "rotate"]) == 0
    assert '"rotated": 3' in capsys.readouterr().out
    values = sorted(Fernet(new_key.encode()).decrypt(t.encode()).decode() for t in _run(_stored_tokens, url))
    assert values == ["ari-pass", "media-pass", "sk-llm-value"]
    # The key file is not for environment keys.
    assert main(["secrets", "rotate", "--new-key"]) == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_new_key_file_keeps_its_owner(tmp_path: Path) -> None:
    """``sudo vr3ai secrets rotate --new-key`` must leave secret.key readable by the server's user."""
    from vr3ai.core.secrets import write_key_file

    path = tmp_path / "secret.key"
    path.write_text(Fernet.generate_key().decode())
    os.chown(path, 4242, 4343)
    write_key_file(path, [Fernet.generate_key().decode(), path.read_text()])
    st = path.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4242, 4343, 0o600)
