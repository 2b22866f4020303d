"""Issue 12, item 8 (defaults): no server as root, Secure cookies behind https, private data files.

Each test reproduces what main allowed: ``vr3ai serve`` as root started, the session cookie went out
without ``Secure`` although the public URL was https, and the data folder, the database and the
call recordings were readable by every local user (0755/0644 under the usual umask 022).
"""

from __future__ import annotations

import argparse
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.web.platform import start_platform
from vr3ai import cli
from vr3ai.db.migrate import upgrade
from vr3ai.media.codec import WIRE_FORMATS
from vr3ai.media.recording import CallRecorder
from vr3ai.services import Services
from vr3ai.settings import Settings
from vr3ai.web.auth import SESSION_COOKIE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask of a shell, so that only explicit modes can make files private."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- (a) never root ---------------------------------------------------------------------------------


def _serve_args() -> argparse.Namespace:
    return cli.build_parser().parse_args(["serve"])


def test_serve_refuses_root_without_override(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], umask_022: None
) -> None:
    import vr3ai.server

    started: list[Settings] = []
    monkeypatch.setattr(vr3ai.server, "serve", lambda s: started.append(s) or 0)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv("VR3AI_ALLOW_ROOT", raising=False)

    rc = cli.cmd_serve(_serve_args(), Settings.from_env())
    assert rc == 2 and started == []
    err = capsys.readouterr().err
    assert "refusing to run the server as root" in err and "VR3AI_ALLOW_ROOT=1" in err

    monkeypatch.setenv("VR3AI_ALLOW_ROOT", "1")
    assert cli.cmd_serve(_serve_args(), Settings.from_env()) == 0
    assert len(started) == 1


def test_serve_as_non_root_starts(monkeypatch: pytest.MonkeyPatch, umask_022: None) -> None:
    import vr3ai.server

    started: list[Settings] = []
    monkeypatch.setattr(vr3ai.server, "serve", lambda s: started.append(s) or 0)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("VR3AI_ALLOW_ROOT", raising=False)
    assert cli.cmd_serve(_serve_args(), Settings.from_env()) == 0 and len(started) == 1
    # The server's own files are private whatever umask it was started with.
    assert os.umask(0o022) == 0o077


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (scripts/test.sh runs as root)")
def test_real_process_as_root_exits_with_a_clear_message(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VR3AI_")}
    env.update(
        VR3AI_DATA_DIR=str(tmp_path / "data"),
        VR3AI_PORT=str(_free_port()),
        VR3AI_HOST="127.0.0.1",
        VR3AI_VOICE="0",
        VR3AI_START_TELEPHONY="0",
        PYTHONPATH=str(ROOT),
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "vr3ai", "serve"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail("`vr3ai serve` started as root")
    assert done.returncode == 2, done.stderr
    assert "refusing to run the server as root" in done.stderr
    assert not (tmp_path / "data").exists()  # refused before touching anything


# --- (b) Secure cookie behind https -----------------------------------------------------------------


async def _login_page_cookie(tmp_path: Path, **overrides: Any) -> str:
    async with start_platform(tmp_path, settings_overrides=overrides) as p, p.client() as http:
        r = await http.get("/login")
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        return str(cookie)


async def test_session_cookie_is_secure_when_the_public_url_is_https(tmp_path: Path) -> None:
    cookie = await _login_page_cookie(tmp_path, public_url="https://vr3ai.example.com")
    assert "Secure" in cookie


async def test_session_cookie_over_plain_http_still_works(tmp_path: Path) -> None:
    # A local install on http:// must keep working: a Secure cookie would never come back.
    cookie = await _login_page_cookie(tmp_path, public_url="http://10.0.0.5:8000")
    assert "Secure" not in cookie


def test_cookie_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VR3AI_COOKIE_SECURE", raising=False)
    monkeypatch.setenv("VR3AI_PUBLIC_URL", "https://vr3ai.example.com")
    assert Settings.from_env().session_cookie_secure() is True
    monkeypatch.setenv("VR3AI_PUBLIC_URL", "http://vr3ai.example.com:8000")
    assert Settings.from_env().session_cookie_secure() is False
    monkeypatch.setenv("VR3AI_COOKIE_SECURE", "1")  # TLS terminated in front of a plain public URL
    assert Settings.from_env().session_cookie_secure() is True


# --- (d) private data folder, database and recordings -----------------------------------------------


async def test_data_folder_database_and_secret_key_are_private(tmp_path: Path, umask_022: None) -> None:
    data = tmp_path / "fresh" / "data"
    settings = Settings(data_dir=data, voice=False, start_telephony=False)
    svc = Services.build(settings)
    try:
        await upgrade(svc.db)
        async with svc.db.session() as s:
            await s.connection()  # the -wal file exists while a connection is open
            wal = data / "vr3ai.db-wal"
            assert _mode(data) == 0o700
            assert _mode(data / "vr3ai.db") == 0o600
            assert _mode(data / "secret.key") == 0o600
            if wal.exists():
                assert _mode(wal) == 0o600
    finally:
        await svc.db.dispose()


async def test_recordings_are_private(tmp_path: Path, umask_022: None) -> None:
    from vr3ai.media.server import MediaRegistry
    from vr3ai.telephony.ari.config import AriConfig
    from vr3ai.telephony.ari.connection import AriConnection
    from vr3ai.telephony.deps import CallDeps

    settings = Settings(data_dir=tmp_path / "data", voice=False, start_telephony=False)
    svc = Services.build(settings)
    try:
        svc.media = MediaRegistry()
        conn = AriConnection(
            CallDeps.from_services(svc, agent_factory=lambda *a, **k: None),  # type: ignore[arg-type,return-value]
            AriConfig(
                id="00000000-0000-0000-0000-000000000001",
                organization_id="org",
                name="lab",
                ari_endpoint_url="http://127.0.0.1:1",
                stasis_app_name="vr3ai",
                app_password="x",
                websocket_client_name="vr3ai",
                from_extensions=[],
                dial_template="PJSIP/{to}",
            ),
        )
        path = Path(conn.recording_path("run-1"))
        rec = CallRecorder(WIRE_FORMATS["ulaw"])
        rec.caller(0.0, b"\xff" * 160)
        rec.agent(0.02, b"\x7f" * 160)
        rec.write_wav(path)
        assert _mode(path.parent) == 0o700
        assert _mode(path) == 0o600
        await conn.client.aclose()
    finally:
        await svc.db.dispose()
