"""Diagnostics against the real Asterisk 22 of the test harness (marker ``asterisk``).

Checks what the fake ARI of ``test_diagnostics.py`` only imitates: that ``externalMedia`` with an
empty ``format`` tells a known websocket_client name from an unknown one *without creating a
channel*, and that the media probe passes with a reachable media server, fails with cause 3 when
the section points nowhere, and is refused when the media credentials differ.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import MEDIA_PASSWORD, MEDIA_USER
from tests.web.platform import Platform, start_platform
from vr3ai.telephony.ari.client import AriClient, AriError
from vr3ai.telephony.ari.diagnostics import run_diagnostics

pytestmark = pytest.mark.asterisk


@pytest.fixture
async def lab(clean_asterisk_lab: Any) -> AsyncIterator[Any]:
    await clean_asterisk_lab.warm_up()
    yield clean_asterisk_lab


def _endpoint(lab: Any) -> str:
    return str(lab.ari_url).removesuffix("/ari")


async def test_ws_client_name_probe_creates_no_channel(lab: Any) -> None:
    user, password = lab.ari_auth
    client = AriClient(_endpoint(lab), user, password)
    try:
        for name, expected in (
            ("vr3ai", "format cannot be empty"),
            ("no_such_client", "external_host must be a valid websocket_client connection id"),
        ):
            channel_id = f"vr3m-diagtest-{name.replace('_', '')}"
            with pytest.raises(AriError) as err:
                await client.request(
                    "POST",
                    "/channels/externalMedia",
                    params={
                        "app": user,
                        "channelId": channel_id,
                        "external_host": name,
                        "transport": "websocket",
                        "encapsulation": "none",
                        "connection_type": "client",
                        "format": "",
                    },
                )
            assert err.value.status == 400, err.value
            # The server's own words: matched, never shown (message is our status text).
            assert expected in err.value.remote and expected not in err.value.message
            assert await client.channel(channel_id) is None
        assert not [c for c in await client.channels() if str(c.get("id", "")).startswith("vr3m-diagtest")]
    finally:
        await client.aclose()


async def _wait_state(p: Platform, config_id: str, states: tuple[str, ...], timeout_s: float = 15) -> str:
    assert p.services.telephony is not None
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        state = p.services.telephony.status(config_id)["ari"]["state"]
        if state in states:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"configuration {config_id} stayed {state}")


async def test_diagnostics_healthy_and_broken(lab: Any, tmp_path: Path) -> None:
    from vr3ai.workflows.definition import example_definition

    async with start_platform(tmp_path, port=lab.media_port, telephony=True) as p:
        user = await p.create_user()
        async with p.api(user) as api:
            wf = (
                await api.post("/workflows", json={"name": "Receptionist", "definition": example_definition()})
            ).json()

            async def config(**body: Any) -> str:
                r = await api.post("/telephony-configurations", json={"ari_endpoint_url": _endpoint(lab), **body})
                assert r.status_code == 201, r.text
                cid = str(r.json()["id"])
                n = await api.post(
                    f"/telephony-configurations/{cid}/phone-numbers",
                    json={"address": "8000", "inbound_workflow_id": wf["id"]},
                )
                assert n.status_code == 201, n.text
                return cid

            lab_media = {"media_username": MEDIA_USER, "media_password": MEDIA_PASSWORD}
            healthy = await config(
                name="ok",
                stasis_app_name="vr3ai",
                app_password="vr3ai-secret",
                websocket_client_name="vr3ai",
                **lab_media,
            )
            down = await config(
                name="down",
                stasis_app_name="vr3ai2",
                app_password="other-secret",
                websocket_client_name="vr3ai_down",
                **lab_media,
            )
            refused = await config(
                name="auth",
                stasis_app_name="intruder",
                app_password="intruder-secret",
                websocket_client_name="vr3ai_auth",
                media_username="vr3ai-media",
                media_password="not-the-media-secret",
            )
            # Another host name for the same Asterisk is another endpoint, so the app may repeat;
            # with a wrong password it never connects (and so never replaces the healthy one).
            bad_password = await config(
                name="badpw",
                ari_endpoint_url=_endpoint(lab).replace("127.0.0.1", "localhost"),
                stasis_app_name="vr3ai",
                app_password="wrong-password",
                websocket_client_name="vr3ai",
            )
        for cid in (healthy, down, refused):
            await _wait_state(p, cid, ("connected",))

        checks = {c.key: c for c in await run_diagnostics(p.services, healthy)}
        assert [k for k, c in checks.items() if c.ok is False] == [], checks
        for key in (
            "ari_reachable",
            "credentials",
            "res_ari",
            "ari_write",
            "chan_websocket",
            "res_websocket_client",
            "stasis_app",
            "ws_client_name",
            "media",
            "phone_numbers",
            "quota",
        ):
            assert checks[key].ok is True, (key, checks[key])

        media = {c.key: c for c in await run_diagnostics(p.services, down)}["media"]
        assert media.ok is False and "cause 3" in media.detail, media

        media = {c.key: c for c in await run_diagnostics(p.services, refused)}["media"]
        assert media.ok is False and "username and password" in media.detail, media

        await _wait_state(p, bad_password, ("failed", "connecting"))
        bad = {c.key: c for c in await run_diagnostics(p.services, bad_password)}
        assert bad["credentials"].ok is False and bad["stasis_app"].ok is False
        assert "wrong-password" not in repr(bad)

        # Every probe channel is gone.
        user_name, password = lab.ari_auth
        client = AriClient(_endpoint(lab), user_name, password)
        try:
            await asyncio.sleep(0.5)
            assert not [c for c in await client.channels() if "-diag" in str(c.get("id", ""))]
        finally:
            await client.aclose()


async def test_read_only_ari_user_is_not_connected(lab: Any, tmp_path: Path) -> None:
    """ari.conf's [vr3ai_ro] has read_only = yes: Asterisk lets it subscribe to events, then refuses
    every answer with 403. The configuration must say so at connect time, not at the first call."""
    async with start_platform(tmp_path, port=lab.media_port, telephony=True) as p:
        user = await p.create_user()
        async with p.api(user) as api:
            r = await api.post(
                "/telephony-configurations",
                json={
                    "ari_endpoint_url": _endpoint(lab),
                    "name": "ro",
                    "stasis_app_name": "vr3ai_ro",
                    "app_password": "readonly-secret",
                    "websocket_client_name": "vr3ai",
                    "media_username": MEDIA_USER,
                    "media_password": MEDIA_PASSWORD,
                },
            )
            assert r.status_code == 201, r.text
            cid = str(r.json()["id"])
            assert await _wait_state(p, cid, ("failed", "connected")) == "failed"
            assert p.services.telephony is not None
            error = p.services.telephony.status(cid)["ari"]["last_error"] or ""
            assert "read_only = yes" in error and "read_only = no" in error, error
            shown = (await api.get(f"/telephony-configurations/{cid}/status")).text
            assert "read_only = no" in shown and "readonly-secret" not in shown
        checks = {c.key: c for c in await run_diagnostics(p.services, cid)}
        assert checks["credentials"].ok is True
        assert checks["ari_write"].ok is False and "read_only = no" in checks["ari_write"].fix, checks["ari_write"]
        # The probe changed nothing: Asterisk has no bridge of ours.
        user_name, password = lab.ari_auth
        client = AriClient(_endpoint(lab), user_name, password)
        try:
            assert not [b for b in await client.bridges() if "probe" in str(b.get("id", ""))]
            assert await client.may_write() is True
        finally:
            await client.aclose()
