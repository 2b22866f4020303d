"""Item 9 (Low): ``vr3ai apikey revoke`` and ``vr3ai user set-password`` (never on argv)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from vr3ai.cli import build_parser, main
from vr3ai.core.orgs import create_organization, create_user, organization_for_key
from vr3ai.core.secrets import verify_password
from vr3ai.db.migrate import upgrade
from vr3ai.db.models import User
from vr3ai.db.session import Database


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("VR3AI_DATABASE_URL", raising=False)
    monkeypatch.delenv("VR3AI_SECRET_KEY", raising=False)
    monkeypatch.setenv("VR3AI_DATA_DIR", str(tmp_path))
    return tmp_path


def _db_run(data_dir: Path, fn):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        db = Database(f"sqlite+aiosqlite:///{data_dir / 'vr3ai.db'}")
        try:
            await upgrade(db)
            return await fn(db)
        finally:
            await db.dispose()

    return asyncio.run(go())


def test_apikey_revoke(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    org_id = _db_run(data_dir, lambda db: create_organization(db, "Acme"))[0].id
    assert main(["apikey", "create", org_id]) == 0
    created = json.loads(capsys.readouterr().out)
    key, key_id = created["api_key"], created["api_key_id"]
    assert _db_run(data_dir, lambda db: organization_for_key(db, key)) is not None

    assert main(["apikey", "list", org_id]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {k["api_key_id"] for k in listed} >= {key_id}
    assert key not in json.dumps(listed)  # the list never shows a key

    assert main(["apikey", "revoke", key_id]) == 0
    revoked = json.loads(capsys.readouterr().out)
    assert revoked["api_key_id"] == key_id and revoked["revoked_at"]
    assert _db_run(data_dir, lambda db: organization_for_key(db, key)) is None
    # Unknown id: a clear error, exit 2.
    assert main(["apikey", "revoke", "no-such-key"]) == 2
    assert "not found" in capsys.readouterr().err


async def test_revoked_key_is_refused_by_the_running_api(tmp_path: Path) -> None:
    from tests.web.platform import start_platform
    from vr3ai.core.orgs import create_api_key_row, revoke_api_key

    async with start_platform(tmp_path) as p:
        user = await p.create_user()
        row, other_key = await create_api_key_row(p.services.db, user.organization_id)
        async with p.client(headers={"Authorization": f"Bearer {other_key}"}) as http:
            assert (await http.get("/api/v1/workflows")).status_code == 200
            await revoke_api_key(p.services.db, row.id)
            assert (await http.get("/api/v1/workflows")).status_code == 401
        async with p.api(user) as api:  # the organization's other key still works
            assert (await api.get("/workflows")).status_code == 200


def _password_hash(data_dir: Path, email: str) -> str:
    async def fn(db: Database) -> str:
        async with db.session() as s:
            return str(await s.scalar(select(User.password_hash).where(User.email == email)))

    return _db_run(data_dir, fn)  # type: ignore[no-any-return]


def test_set_password_from_stdin(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def seed(db: Database) -> None:
        org, _ = await create_organization(db, "Acme")
        await create_user(db, org.id, "ops@example.com", "old password 1")

    _db_run(data_dir, seed)
    monkeypatch.setattr("sys.stdin", io.StringIO("new password 22\nignored second line\n"))
    assert main(["user", "set-password", "OPS@example.com"]) == 0
    out = capsys.readouterr().out
    assert "new password 22" not in out and json.loads(out)["password_changed"] is True
    stored = _password_hash(data_dir, "ops@example.com")
    assert verify_password("new password 22", stored) and not verify_password("old password 1", stored)

    # Too short: refused, nothing changed.
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["user", "set-password", "ops@example.com"]) == 2
    assert _password_hash(data_dir, "ops@example.com") == stored
    # Unknown user.
    monkeypatch.setattr("sys.stdin", io.StringIO("whatever 12345\n"))
    assert main(["user", "set-password", "nobody@example.com"]) == 2


def test_set_password_prompts_on_a_terminal(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def seed(db: Database) -> None:
        org, _ = await create_organization(db, "Acme")
        await create_user(db, org.id, "ops@example.com", "old password 1")

    _db_run(data_dir, seed)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    prompts: list[str] = []
    answers = iter(["typed password 3", "typed password 3"])

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("sys.stdin", Tty(""))
    monkeypatch.setattr("getpass.getpass", fake_getpass)
    assert main(["user", "set-password", "ops@example.com"]) == 0
    assert len(prompts) == 2  # asked twice, confirmed
    assert verify_password("typed password 3", _password_hash(data_dir, "ops@example.com"))

    answers = iter(["one password 44", "another pass 55"])
    assert main(["user", "set-password", "ops@example.com"]) == 2  # the two differ: nothing changes
    assert verify_password("typed password 3", _password_hash(data_dir, "ops@example.com"))


def test_set_password_never_takes_the_password_on_argv() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["user", "set-password", "ops@example.com", "--password", "x" * 12])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["user", "set-password", "ops@example.com", "x" * 12])
