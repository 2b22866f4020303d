"""VR3AI_TLS_CERT / VR3AI_TLS_KEY: settings, the public URL, and the refusal of half a pair."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.asterisk import ensure_tls
from vr3ai.server import asterisk_url_notice
from vr3ai.settings import Settings


def test_tls_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VR3AI_TLS_CERT", "/etc/vr3ai/cert.pem")
    monkeypatch.setenv("VR3AI_TLS_KEY", "/etc/vr3ai/key.pem")
    s = Settings.from_env()
    assert (s.server.tls_cert, s.server.tls_key) == ("/etc/vr3ai/cert.pem", "/etc/vr3ai/key.pem")


def test_main_port_tls_makes_the_public_url_https() -> None:
    tls = ensure_tls()
    s = Settings(port=8443, tls_cert=str(tls.server_cert), tls_key=str(tls.server_key))
    assert s.main_listener_tls() == {"ssl_certfile": str(tls.server_cert), "ssl_keyfile": str(tls.server_key)}
    assert s.effective_public_url() == "https://127.0.0.1:8443" and s.session_cookie_secure()
    notice, _ = asterisk_url_notice(s)
    assert "uri = wss://127.0.0.1:8443/api/v1/telephony/ws/ari" in notice
    assert Settings(port=8000).main_listener_tls() == {}
    assert Settings(port=8000).effective_public_url() == "http://127.0.0.1:8000"


def test_half_a_pair_or_a_wrong_file_is_refused(tmp_path: Path) -> None:
    tls = ensure_tls()
    with pytest.raises(ValueError, match="must be set together"):
        Settings(tls_cert=str(tls.server_cert)).main_listener_tls()
    with pytest.raises(ValueError, match="VR3AI_TLS_KEY="):
        Settings(tls_cert=str(tls.server_cert), tls_key=str(tmp_path / "missing.pem")).main_listener_tls()
    with pytest.raises(ValueError, match="cannot serve TLS"):
        # The CA's certificate with the server's key: they do not belong together.
        Settings(tls_cert=str(tls.ca_cert), tls_key=str(tls.server_key)).main_listener_tls()
