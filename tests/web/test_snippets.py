"""The generated Asterisk configuration: the guide's examples with this configuration's names."""

from __future__ import annotations

from vr3ai.telephony.ari.snippets import (
    ARI_PASSWORD_PLACEHOLDER,
    TLS_NOTE,
    ULAW_NOTE,
    asterisk_snippets,
    is_loopback_url,
    media_ws_uri,
)


def _by_file(**kw: object) -> dict[str, str]:
    params: dict[str, object] = {
        "ari_endpoint_url": "http://asterisk.example.com:8088",
        "stasis_app_name": "vr3ai",
        "websocket_client_name": "vr3ai",
        "public_url": "https://vr3ai.tapcloud.org",
    }
    params.update(kw)
    return {s.filename: s.text for s in asterisk_snippets(**params)}  # type: ignore[arg-type]


def test_guide_example_is_reproduced_for_https() -> None:
    files = _by_file()
    assert files["ari.conf"] == (
        "[general]\nenabled = yes\n\n[vr3ai]\ntype = user\nread_only = no\n"
        "; replace your_secure_password with the App Password you saved in VR3 AI\n"
        "password = your_secure_password\n"
    )
    assert files["http.conf"] == "[general]\nenabled = yes\nbindaddr = 0.0.0.0\nbindport = 8088\n"
    assert files["extensions.conf"] == (
        "[from-external]\n"
        "exten => _X.,1,NoOp(Incoming call to ${EXTEN})\n"
        " same => n,Stasis(vr3ai)\n"
        " same => n,Hangup()\n"
    )
    ws = files["websocket_client.conf"]
    assert "[vr3ai]\ntype = websocket_client\n" in ws
    assert "uri = wss://vr3ai.tapcloud.org/api/v1/telephony/ws/ari\n" in ws
    assert "protocols = media\n" in ws
    assert "tls_enabled = yes\nca_list_file = /etc/ssl/certs/ca-certificates.crt\n" in ws
    assert "connection_type = per_call_config" in ws
    assert "module reload res_websocket_client.so" in files["Asterisk CLI"]
    # Asterisk 22 has no "ari reload" (the CLI says "No such command"): the lab runs these lines verbatim
    # (tests/integration/test_snippets_verbatim.py).
    assert "module reload res_ari.so" in files["Asterisk CLI"]
    assert not any(line.startswith("ari reload") for line in files["Asterisk CLI"].splitlines())


def test_names_of_this_configuration_are_used() -> None:
    files = _by_file(
        stasis_app_name="office-app",
        websocket_client_name="media_out",
        ari_endpoint_url="http://pbx.local:8090",
        extensions=["8000", "8001"],
    )
    assert "[office-app]\ntype = user" in files["ari.conf"]
    assert "bindport = 8090" in files["http.conf"]
    assert "exten => 8000,1,NoOp(Incoming call to 8000)\n same => n,Stasis(office-app)\n" in files["extensions.conf"]
    assert "exten => 8001,1," in files["extensions.conf"]
    assert "_X." not in files["extensions.conf"]
    assert files["websocket_client.conf"].startswith("[media_out]\n")


def test_plain_http_gives_ws_without_tls() -> None:
    files = _by_file(public_url="http://10.0.0.5:8000")
    ws = files["websocket_client.conf"]
    assert "uri = ws://10.0.0.5:8000/api/v1/telephony/ws/ari\n" in ws
    assert "tls_enabled = no" in ws
    assert "ca_list_file" not in ws


def test_notes_carry_the_tls_and_ulaw_warnings() -> None:
    snippets = {
        s.filename: s
        for s in asterisk_snippets(
            ari_endpoint_url="http://a:8088",
            stasis_app_name="vr3ai",
            websocket_client_name="vr3ai",
            public_url="https://vr3ai.example.com",
        )
    }
    notes = " ".join(snippets["websocket_client.conf"].notes)
    assert TLS_NOTE in notes and "required even though the URI scheme is wss://" in notes
    assert ULAW_NOTE in notes and "allow=ulaw" in notes
    plain = {
        s.filename: s
        for s in asterisk_snippets(
            ari_endpoint_url="http://a:8088",
            stasis_app_name="vr3ai",
            websocket_client_name="vr3ai",
            public_url="http://vr3ai.example.com:8000",
        )
    }
    assert TLS_NOTE not in plain["websocket_client.conf"].notes


def test_media_uri_variants() -> None:
    assert media_ws_uri("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/api/v1/telephony/ws/ari"
    assert media_ws_uri("https://vr3ai.example.com/") == "wss://vr3ai.example.com/api/v1/telephony/ws/ari"
    assert media_ws_uri("https://vr3ai.example.com:8443") == "wss://vr3ai.example.com:8443/api/v1/telephony/ws/ari"
    assert media_ws_uri("http://vr3ai.example.com") == "ws://vr3ai.example.com/api/v1/telephony/ws/ari"
    # Behind a path prefix (reverse proxy).
    assert media_ws_uri("https://example.com/vr3") == "wss://example.com/vr3/api/v1/telephony/ws/ari"
    # A separate TLS media listener wins over plain http.
    assert media_ws_uri("http://10.0.0.5:8000", tls_port=8443) == "wss://10.0.0.5:8443/api/v1/telephony/ws/ari"
    assert media_ws_uri("http://[::1]:8000") == "ws://[::1]:8000/api/v1/telephony/ws/ari"


def test_https_ari_endpoint_gets_tls_http_conf() -> None:
    files = _by_file(ari_endpoint_url="https://pbx.example.com:8089")
    assert "tlsenable = yes\ntlsbindaddr = 0.0.0.0:8089\n" in files["http.conf"]


def test_media_credentials_without_the_password_use_a_placeholder() -> None:
    files = _by_file(media_username="vr3ai-media")
    ws = files["websocket_client.conf"]
    assert "username = vr3ai-media\n" in ws
    assert "password = your_media_password\n" in ws


def test_media_password_is_rendered_for_asterisk_and_escaped() -> None:
    ws = _by_file(media_username="vr3ai-media", media_password="a;b")["websocket_client.conf"]
    assert "username = vr3ai-media\npassword = a\\;b\n" in ws  # ';' would start a comment
    assert "your_media_password" not in ws


def test_no_ari_password_can_appear() -> None:
    # The ARI password is never an input; without a media password both are placeholders.
    for s in asterisk_snippets(
        ari_endpoint_url="http://a:8088",
        stasis_app_name="vr3ai",
        websocket_client_name="vr3ai",
        public_url="http://h:8000",
        media_username="m",
    ):
        for line in s.text.splitlines():
            if line.startswith("password ="):
                assert line in (f"password = {ARI_PASSWORD_PLACEHOLDER}", "password = your_media_password")


def test_loopback_detection() -> None:
    assert is_loopback_url("http://127.0.0.1:8000")
    assert is_loopback_url("http://localhost:8000")
    assert not is_loopback_url("http://10.0.0.5:8000")
    assert not is_loopback_url("https://vr3ai.example.com")
