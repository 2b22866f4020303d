"""Issue 14 item 5: one listen default (``vr3ai serve`` = ``scripts/run.sh`` = all interfaces), and
start-up says which URL Asterisk must use, warning when it is loopback."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vr3ai.server import asterisk_url_notice
from vr3ai.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_one_listen_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VR3AI_HOST", raising=False)
    assert Settings().server.host == Settings.from_env().server.host == "0.0.0.0"
    # run.sh does not carry a second default of its own that could drift from it.
    run_sh = (ROOT / "scripts" / "run.sh").read_text()
    assert "VR3AI_HOST=" not in run_sh


def test_notice_names_the_media_uri_and_warns_on_loopback() -> None:
    notice, warning = asterisk_url_notice(Settings(port=8000))
    assert "http://127.0.0.1:8000" in notice and "uri = ws://127.0.0.1:8000/api/v1/telephony/ws/ari" in notice
    assert warning is not None and "loopback" in warning and "VR3AI_PUBLIC_URL" in warning

    notice, warning = asterisk_url_notice(Settings(public_url="https://vr3ai.example.com/"))
    assert "uri = wss://vr3ai.example.com/api/v1/telephony/ws/ari" in notice
    assert warning is None

    # Reachable public URL, but we only listen on loopback: Asterisk elsewhere cannot connect either.
    _, warning = asterisk_url_notice(Settings(host="127.0.0.1", public_url="http://10.1.2.3:8000"))
    assert warning is not None and "VR3AI_HOST=0.0.0.0" in warning


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc, no connection made)."""
    out: set[str] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if state == "0A" and int(p, 16) == port:
            out.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return out


def test_real_serve_listens_on_all_interfaces_and_prints_the_url(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VR3AI_")}
    env.update(
        VR3AI_DATA_DIR=str(tmp_path / "data"),
        VR3AI_PORT=str(port),
        VR3AI_VOICE="0",
        VR3AI_START_TELEPHONY="0",
        VR3AI_ALLOW_ROOT="1",
        VR3AI_LOG_JSON="0",
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "vr3ai", "serve"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err, deadline = "", "", time.monotonic() + 60
        ready_text = ("uri = ", "organization id: ")
        while time.monotonic() < deadline and not (
            _listening(port) and all(t in out for t in ready_text) and "WARNING" in err
        ):
            ready, _, _ = select.select([proc.stdout, proc.stderr], [], [], 0.5)
            for stream in ready:
                # os.read, not readline: a buffered reader may hold lines select() no longer sees.
                chunk = os.read(stream.fileno(), 65536).decode(errors="replace")
                if stream is proc.stdout:
                    out += chunk
                else:
                    err += chunk
            assert proc.poll() is None, (out, err)
        assert _listening(port) == {"0.0.0.0"}, (out, err)
        assert f"Asterisk must reach it at http://127.0.0.1:{port}" in out, out
        assert f"uri = ws://127.0.0.1:{port}/api/v1/telephony/ws/ari" in out, out
        assert "WARNING: the URL Asterisk must use" in err and "loopback" in err, err
        # A new data folder: the app's start-up migrated it, then created the first organization, once.
        assert out.count("created the default organization") == 1, out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
