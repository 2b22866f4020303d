"""``run_diagnostics`` against a fake ARI: each item of the guide's troubleshooting list, pass and fail.

The real-Asterisk variant of the WebSocket-client-name trick (empty ``format``) is in
``test_diagnostics_asterisk.py`` and runs with the Asterisk harness.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.web.fakes import FakeAri, FakeConnection, FakeMedia, FakeTelephony, closed_port_url, run_fake_ari
from tests.web.platform import DashboardUser, Platform
from vr3ai.telephony.ari import diagnostics
from vr3ai.telephony.ari.client import NO_ANSWER
from vr3ai.telephony.ari.diagnostics import Check, run_diagnostics
from vr3ai.telephony.ari.snippets import media_ws_uri

PASSWORD = "vr3ai-secret"


@dataclass
class Setup:
    platform: Platform
    user: DashboardUser
    ari: FakeAri
    config_id: str
    workflow_id: str

    @property
    def telephony(self) -> FakeTelephony:
        return self.platform.services.telephony  # type: ignore[return-value]

    async def run(self, **kw: Any) -> dict[str, Check]:
        checks = await run_diagnostics(self.platform.services, self.config_id, **kw)
        return {c.key: c for c in checks}


async def _setup(
    platform: Platform,
    ari: FakeAri,
    *,
    endpoint: str | None = None,
    password: str = PASSWORD,
    ws_name: str = "vr3ai",
    app: str = "vr3ai",
    numbers: list[tuple[str, bool]] | None = None,
    **org: Any,
) -> Setup:
    user = await platform.create_user(**org)
    async with platform.api(user) as api:
        wf = await api.post("/workflows", json={"name": "Receptionist", "definition": _example()})
        assert wf.status_code == 201, wf.text
        r = await api.post(
            "/telephony-configurations",
            json={
                "name": "office",
                "ari_endpoint_url": endpoint or ari.url,
                "stasis_app_name": app,
                "app_password": password,
                "websocket_client_name": ws_name,
            },
        )
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        for address, with_workflow in numbers if numbers is not None else [("8000", True)]:
            body = {"address": address, "inbound_workflow_id": wf.json()["id"] if with_workflow else None}
            n = await api.post(f"/telephony-configurations/{cid}/phone-numbers", json=body)
            assert n.status_code == 201, n.text
    return Setup(platform, user, ari, cid, wf.json()["id"])


def _example() -> dict[str, Any]:
    from vr3ai.workflows.definition import example_definition

    return example_definition()


@pytest.fixture
async def ari() -> AsyncIterator[FakeAri]:
    async with run_fake_ari() as fake:
        yield fake


def _expected_uri(platform: Platform) -> str:
    return media_ws_uri(platform.settings.effective_public_url())


async def test_healthy_configuration(telephony_platform: Platform, ari: FakeAri) -> None:
    ari.ws_clients["vr3ai"]["uri"] = _expected_uri(telephony_platform)
    s = await _setup(telephony_platform, ari)
    checks = await s.run()
    assert [c.key for c in checks.values() if c.ok is False] == []
    for key in (
        "ari_reachable",
        "credentials",
        "res_ari",
        "ari_write",
        "chan_websocket",
        "res_websocket_client",
        "stasis_app",
        "ws_client_name",
        "ws_client_uri",
        "phone_numbers",
        "recent_warnings",
        "quota",
    ):
        assert checks[key].ok is True, (key, checks[key])
    assert "Asterisk 22.10.1" in checks["ari_reachable"].detail
    assert checks["phone_numbers"].detail == "8000 → Receptionist"
    # No listener connection in this process: the media probe is not attempted.
    assert checks["media"].ok is None
    # The name check sent an empty format and created no channel.
    probes = [q for m, p, q in ari.requests if p == "/ari/channels/externalMedia"]
    assert probes == [probes[0]] and probes[0]["format"] == "" and probes[0]["external_host"] == "vr3ai"
    assert ari.channels_created == []


async def test_unreachable_endpoint(telephony_platform: Platform, ari: FakeAri) -> None:
    s = await _setup(telephony_platform, ari, endpoint=closed_port_url())
    checks = await s.run()
    c = checks["ari_reachable"]
    # One fixed text whatever the network did (tests/security: not a port scanner); the fix says what to check.
    assert c.ok is False and NO_ANSWER in c.detail
    assert "reachable from your VR3 AI instance" in c.fix and "http.conf has enabled = yes" in c.fix
    assert "firewall rules allow traffic on the ARI port (default: 8088)" in c.fix
    for key in ("credentials", "chan_websocket", "ws_client_name", "media"):
        assert checks[key].ok is None, key
    # The checks that need no Asterisk still run.
    assert checks["phone_numbers"].ok is True and checks["quota"].ok is True


async def test_wrong_password(telephony_platform: Platform, ari: FakeAri) -> None:
    s = await _setup(telephony_platform, ari, password="wrong-password-123")
    checks = await s.run()
    assert checks["ari_reachable"].ok is True
    c = checks["credentials"]
    assert c.ok is False
    assert "Stasis App Name matches the ARI user section name in ari.conf" in c.fix
    assert "App Password matches the password in ari.conf" in c.fix
    assert "no extra spaces" in c.fix
    text = json.dumps([vars(x) for x in checks.values()])
    assert "wrong-password-123" not in text and PASSWORD not in text


async def test_read_only_ari_user(telephony_platform: Platform, ari: FakeAri) -> None:
    ari.ws_clients["vr3ai"]["uri"] = _expected_uri(telephony_platform)
    s = await _setup(telephony_platform, ari)
    assert (await s.run())["ari_write"].ok is True
    ari.read_only = True
    checks = await s.run()
    assert checks["credentials"].ok is True
    c = checks["ari_write"]
    assert c.ok is False and "read_only = yes" in c.detail and "read_only = no" in c.fix
    # The probe was a DELETE of a bridge nobody has; nothing else was written.
    writes = [(m, p) for m, p, _q in ari.requests if m != "GET" and "externalMedia" not in p]
    assert writes and all(m == "DELETE" and p.startswith("/ari/bridges/vr3-write-probe-") for m, p in writes)


async def test_no_ari_at_url(telephony_platform: Platform, ari: FakeAri) -> None:
    s = await _setup(telephony_platform, ari)
    ari.ari_loaded = False
    checks = await s.run()
    assert checks["ari_reachable"].ok is True
    assert checks["res_ari"].ok is False and "module show like res_ari" in checks["res_ari"].fix
    assert checks["credentials"].ok is None


async def test_modules_not_loaded(telephony_platform: Platform, ari: FakeAri) -> None:
    del ari.modules["chan_websocket.so"]
    ari.modules["res_websocket_client.so"] = "Not Running"
    s = await _setup(telephony_platform, ari)
    checks = await s.run()
    assert checks["chan_websocket"].ok is False
    assert "module show like chan_websocket" in checks["chan_websocket"].fix
    assert checks["res_websocket_client"].ok is False
    assert "Not Running" in checks["res_websocket_client"].detail
    assert checks["media"].ok is None


async def test_unknown_websocket_client_name(telephony_platform: Platform, ari: FakeAri) -> None:
    s = await _setup(telephony_platform, ari, ws_name="vr3ai_typo")
    checks = await s.run()
    c = checks["ws_client_name"]
    assert c.ok is False and "vr3ai_typo" in c.detail
    assert "WebSocket Client Name in VR3 AI matches the section name in websocket_client.conf" in c.fix
    assert ari.channels_created == []


async def test_app_replaced_or_not_connected(telephony_platform: Platform, ari: FakeAri) -> None:
    s = await _setup(telephony_platform, ari)
    s.telephony.states[s.config_id] = {"state": "replaced", "since": None, "last_error": "replaced"}
    c = (await s.run())["stasis_app"]
    assert c.ok is False and "ApplicationReplaced" in c.detail and "Reconnect" in c.fix
    s.telephony.states[s.config_id] = {"state": "failed", "since": None, "last_error": "cannot reach ARI"}
    c = (await s.run())["stasis_app"]
    assert c.ok is False and "cannot reach ARI" in c.detail
    assert "Confirm the ARI WebSocket connection is active" in c.fix
    s.telephony.states.pop(s.config_id)
    ari.applications.clear()
    c = (await s.run())["stasis_app"]
    assert c.ok is False and "does not list the application 'vr3ai'" in c.detail


async def test_without_telephony_in_process(platform: Platform, ari: FakeAri) -> None:
    s = await _setup(platform, ari)
    checks = await s.run()
    assert checks["stasis_app"].ok is None
    assert checks["recent_warnings"].ok is None
    assert checks["ws_client_name"].ok is True


async def test_phone_numbers_without_workflow(telephony_platform: Platform, ari: FakeAri) -> None:
    s = await _setup(telephony_platform, ari, numbers=[("8000", True), ("8001", False)])
    c = (await s.run(media_probe=False))["phone_numbers"]
    assert c.ok is False
    assert "8001 → no Inbound workflow" in c.detail and "8000 → Receptionist" in c.detail
    assert "has an Inbound workflow assigned" in c.fix


async def test_no_phone_numbers(telephony_platform: Platform, ari: FakeAri) -> None:
    s = await _setup(telephony_platform, ari, numbers=[])
    c = (await s.run())["phone_numbers"]
    assert c.ok is False and "no phone numbers" in c.detail


async def test_recent_call_warnings(telephony_platform: Platform, ari: FakeAri) -> None:
    s = await _setup(telephony_platform, ari)
    msg = f"no matching phone number registered for config {s.config_id} (called extension '8001')"
    s.telephony.events[s.config_id] = [{"at": "2026-01-01T00:00:00+00:00", "level": "warning", "message": msg}]
    c = (await s.run())["recent_warnings"]
    assert c.ok is False and msg in c.detail
    assert "Stasis(your_app_name)" in c.fix


async def test_quota_exhausted(telephony_platform: Platform, ari: FakeAri) -> None:
    s = await _setup(telephony_platform, ari, max_concurrent_calls=0)
    c = (await s.run())["quota"]
    assert c.ok is False and "available quota" in c.fix
    s2 = await _setup(telephony_platform, ari, app="vr3ai2", minutes_per_month=0)
    c2 = (await s2.run())["quota"]
    assert c2.ok is False and "Monthly minutes exhausted" in c2.detail


async def test_ws_client_uri_checks(telephony_platform: Platform, ari: FakeAri) -> None:
    s = await _setup(telephony_platform, ari)
    ari.ws_clients["vr3ai"] = {"uri": "wss://vr3ai.example.com/api/v1/telephony/ws/ari", "tls_enabled": "no"}
    c = (await s.run())["ws_client_uri"]
    assert c.ok is False and "tls_enabled = yes is required" in c.detail
    ari.ws_clients["vr3ai"] = {"uri": "ws://10.1.2.3:8000/media", "tls_enabled": "no"}
    c = (await s.run())["ws_client_uri"]
    assert c.ok is False and "/api/v1/telephony/ws/ari" in c.detail
    ari.ws_clients["vr3ai"] = {"uri": "ws://10.1.2.3:8000/api/v1/telephony/ws/ari", "tls_enabled": "no"}
    c = (await s.run())["ws_client_uri"]
    assert c.ok is None and _expected_uri(telephony_platform) in c.detail
    ari.expose_config = False
    c = (await s.run())["ws_client_uri"]
    assert c.ok is None and "compare it by hand" in c.detail
    # The media password Asterisk holds in that section never leaves diagnostics.
    assert "media-secret-in-asterisk" not in json.dumps([vars(x) for x in (await s.run()).values()])


@pytest.mark.parametrize("mode", ["connect", "unreachable", "refused", "silent"])
async def test_media_probe(telephony_platform: Platform, ari: FakeAri, mode: str, monkeypatch: Any) -> None:
    monkeypatch.setattr(diagnostics, "MEDIA_PROBE_TIMEOUT_S", 0.5)
    s = await _setup(telephony_platform, ari)
    conn = FakeConnection()
    s.telephony.conns[s.config_id] = conn
    media = FakeMedia(conn, mode)
    telephony_platform.services.media = media
    c = (await s.run())["media"]
    channel_id = media.expected[0][0]
    assert channel_id.startswith(f"vr3m-{s.config_id.replace('-', '')[:8]}-diag")
    assert ari.channels_created == [channel_id]
    # The probe always hangs its channel up and leaves the listener's channel map as it found it.
    assert ("DELETE", f"/ari/channels/{channel_id}") in [(m, p) for m, p, _ in ari.requests]
    assert conn.calls == {}
    if mode == "connect":
        assert c.ok is True and "connected to VR3 AI's media WebSocket" in c.detail
    elif mode == "unreachable":
        assert c.ok is False and "cause 3" in c.detail
        assert "points to the correct VR3 AI host and port" in c.fix
        assert media.cancelled == [channel_id]
    elif mode == "refused":
        assert c.ok is False and "username and password of the websocket_client.conf section" in c.detail
    else:
        assert c.ok is False and "did not connect" in c.detail
        assert media.cancelled == [channel_id]


async def test_other_organization_is_refused(telephony_platform: Platform, ari: FakeAri) -> None:
    s = await _setup(telephony_platform, ari)
    other = await telephony_platform.create_user()
    with pytest.raises(LookupError):
        await run_diagnostics(telephony_platform.services, s.config_id, organization_id=other.organization_id)


async def test_diagnostics_page(telephony_platform: Platform, ari: FakeAri) -> None:
    s = await _setup(telephony_platform, ari, ws_name="nope")
    async with telephony_platform.dashboard(s.user) as web:
        r = await web.post_form(f"/telephony-configurations/{s.config_id}/diagnostics")
    assert r.status_code == 200
    assert 'data-check="ws_client_name"' in r.text
    assert "1 check failed." in r.text or "checks failed." in r.text
    assert "Ensure the WebSocket Client Name in VR3 AI matches the section name in websocket_client.conf" in r.text
    assert PASSWORD not in r.text
