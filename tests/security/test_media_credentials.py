"""Issue 12, item 8 (c): media WebSocket credentials per configuration, required by default.

On main a configuration saved without ``media_username``/``media_password`` (the default, and what
the guide's five fields give) let any connection that named a pending channel id carry the call's
audio; the snippet had no credentials to give Asterisk. Here: each configuration gets a generated
pair, configurations saved before get one at start-up, the platform's media registry refuses to
register a call without credentials, the password is shown only inside the owner's
websocket_client.conf snippet, and a real Asterisk that presents the snippet's credentials is let
in while one presenting none or wrong ones is refused.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select

from tests.harness import AsteriskLab
from tests.integration.agents import AgentRecorder
from tests.integration.conftest import SIMPLE_WORKFLOW
from tests.integration.platform import RunningPlatform, running_platform
from tests.web.platform import Platform, start_platform
from vr3ai.db.models import TelephonyConfiguration

BASE = "/telephony-configurations"


def _body(**extra: Any) -> dict[str, Any]:
    return {
        "name": "Office PBX",
        "ari_endpoint_url": f"http://pbx-{secrets.token_hex(4)}.example.com:8088",
        "stasis_app_name": "vr3ai",
        "app_password": "ari-pass-" + secrets.token_hex(8),
        "websocket_client_name": "vr3ai",
        **extra,
    }


async def _media_password(p: Platform | RunningPlatform, config_id: str) -> tuple[str, str]:
    async with p.services.db.session() as s:
        row = await s.get(TelephonyConfiguration, config_id)
    assert row is not None and row.media_username and row.media_password_enc
    return row.media_username, p.services.box.decrypt(row.media_password_enc)


def _ws_section(snippet_list: dict[str, Any]) -> dict[str, str]:
    """websocket_client.conf of the snippets, as key -> value (comments dropped, ``\\;`` unescaped)."""
    text = next(i["text"] for i in snippet_list["items"] if i["filename"] == "websocket_client.conf")
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith((";", "[")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip().replace("\\;", ";")
    return out


async def test_new_configuration_gets_credentials_shown_only_in_its_own_snippet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with start_platform(tmp_path) as p:
        owner, stranger = await p.create_user(org_name="A"), await p.create_user(org_name="B")
        async with p.api(owner) as a, p.api(stranger) as b:
            r = await a.post(BASE, json=_body())
            assert r.status_code == 201, r.text
            created = r.json()
            cid = created["id"]
            assert re.fullmatch(r"vr3ai-[0-9a-f]{8}", created["media_username"] or "")
            assert created["media_password_set"] is True
            user, password = await _media_password(p, cid)
            assert user == created["media_username"] and len(password) >= 32

            snip = await a.get(f"{BASE}/{cid}/asterisk-snippets")
            assert snip.status_code == 200, snip.text
            assert snip.headers["cache-control"] == "no-store"
            section = _ws_section(snip.json())
            assert (section["username"], section["password"]) == (user, password)
            assert snip.json()["media_uri"].endswith("/api/v1/telephony/ws/ari")

            # Nowhere else: not in the configuration, the list, a PATCH answer, the status.
            others = [
                r,
                await a.get(f"{BASE}/{cid}"),
                await a.get(BASE),
                await a.patch(f"{BASE}/{cid}", json={"name": "Renamed"}),
                await a.get(f"{BASE}/{cid}/status"),
                await a.get("/workflow-runs"),
            ]
            for resp in others:
                assert password not in resp.text, resp.request.url

            # Another organization learns nothing, not even that the configuration exists.
            for path in (f"{BASE}/{cid}/asterisk-snippets", f"{BASE}/{cid}"):
                other = await b.get(path)
                assert other.status_code == 404 and password not in other.text

        # The dashboard shows it to the owner inside the websocket_client.conf snippet only.
        async with p.dashboard(owner) as web:
            page = (await web.get(f"{BASE}/{cid}")).text
            assert page.count(password) == 1
            assert f"username = {user}\npassword = {password}\n" in page
        async with p.dashboard(stranger) as web:
            page = await web.get(f"{BASE}/{cid}")
            assert page.status_code == 404 and password not in page.text

    assert not [r for r in caplog.records if password in r.getMessage() or password in str(r.__dict__)]


async def test_null_generates_new_credentials_instead_of_switching_them_off(tmp_path: Path) -> None:
    async with start_platform(tmp_path) as p:
        owner = await p.create_user()
        async with p.api(owner) as a:
            cid = (await a.post(BASE, json=_body(media_username="pbx", media_password="chosen-pw-1"))).json()["id"]
            r = await a.patch(f"{BASE}/{cid}", json={"media_username": None, "media_password": None})
            assert r.status_code == 200, r.text
            assert r.json()["media_username"] not in (None, "pbx") and r.json()["media_password_set"] is True
            user, password = await _media_password(p, cid)
            assert password != "chosen-pw-1" and user == r.json()["media_username"]


async def test_configuration_saved_without_credentials_gets_them_at_start(tmp_path: Path) -> None:
    key = {"secret_key": "fixed-test-key-" + secrets.token_hex(8)}
    async with start_platform(tmp_path, settings_overrides=key) as p:
        owner = await p.create_user()
        async with p.api(owner) as a:
            cid = (await a.post(BASE, json=_body())).json()["id"]
        # What an older version stored: no media credentials at all.
        async with p.services.db.session() as s, s.begin():
            row = await s.get(TelephonyConfiguration, cid)
            assert row is not None
            row.media_username = None
            row.media_password_enc = None
    async with start_platform(tmp_path, settings_overrides=key) as p:
        async with p.services.db.session() as s:
            missing = await s.scalar(
                select(TelephonyConfiguration.id).where(TelephonyConfiguration.media_password_enc.is_(None))
            )
        assert missing is None
        user, password = await _media_password(p, cid)
        assert user.startswith("vr3ai-") and len(password) >= 32


async def test_the_platform_registers_no_call_without_credentials(tmp_path: Path) -> None:
    async with start_platform(tmp_path) as p:
        registry = p.services.media
        with pytest.raises(ValueError, match="media credentials are required"):
            registry.expect("vr3m-no-credentials")
        assert not registry.is_expected("vr3m-no-credentials")
        fut = registry.expect("vr3m-with-credentials", ("vr3ai-1", "pw"))
        assert registry.is_expected("vr3m-with-credentials")
        fut.cancel()


# --- against the real Asterisk ----------------------------------------------------------------------


@pytest_asyncio.fixture
async def lab(clean_asterisk_lab: AsteriskLab) -> AsyncIterator[AsteriskLab]:
    await clean_asterisk_lab.warm_up()
    yield clean_asterisk_lab


async def _wait_connected(p: RunningPlatform, cid: str) -> None:
    for _ in range(300):
        st = await p.get(f"/api/v1/telephony-configurations/{cid}/status")
        if st["ari"]["state"] == "connected":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"configuration never connected: {st}")


@pytest.mark.asterisk
async def test_real_asterisk_with_the_snippet_credentials_connects_without_them_is_refused(
    lab: AsteriskLab, tmp_path: Path
) -> None:
    recorder = AgentRecorder()
    async with running_platform(tmp_path, port=lab.media_port, agent_factory=recorder, ring_timeout_s=4) as p:
        wf = await p.post("/api/v1/workflows", {"name": "w", "definition": SIMPLE_WORKFLOW})
        # The guide's fields only: the media credentials are generated.
        cfg = await p.post(
            "/api/v1/telephony-configurations",
            {
                "name": "lab",
                "ari_endpoint_url": lab.ari_url.removesuffix("/ari"),
                "stasis_app_name": "vr3ai",
                "app_password": "vr3ai-secret",
                "websocket_client_name": "sec_snippet",
            },
        )
        cid = cfg["id"]
        number = {"address": "8000", "inbound_workflow_id": wf["id"]}
        await p.post(f"/api/v1/telephony-configurations/{cid}/phone-numbers", number)
        await _wait_connected(p, cid)

        # Asterisk gets exactly the section the snippet gives (plus short retry timings for the test).
        snippet = _ws_section(await p.get(f"/api/v1/telephony-configurations/{cid}/asterisk-snippets"))
        assert snippet["uri"] == lab.media_url and "password" in snippet
        timings = {"connection_timeout": "500", "reconnect_interval": "300", "reconnect_attempts": "2"}
        pasted = {"type": "websocket_client", **snippet, **timings}
        without = {k: v for k, v in pasted.items() if k not in ("username", "password")}
        wrong = {**pasted, "password": snippet["password"] + "x"}
        await asyncio.to_thread(
            lab.set_websocket_clients,
            extra_sections={"sec_snippet": pasted, "sec_without": without, "sec_wrong": wrong},
        )

        call = await lab.call("8000", hold_s=2)
        await call.wait_hangup(10)
        run = await p.wait_run(workflow_id=wf["id"])
        assert run["status"] == "completed", run["end_reason"]
        assert recorder.agents, "the agent never got the call's audio"

        for section in ("sec_without", "sec_wrong"):
            r = await p.http.patch(f"/api/v1/telephony-configurations/{cid}", json={"websocket_client_name": section})
            assert r.status_code == 200, r.text
            await _wait_connected(p, cid)
            before = {x["id"] for x in (await p.get(f"/api/v1/workflow-runs?workflow_id={wf['id']}"))["items"]}
            agents = len(recorder.agents)
            call = await lab.call("8000", hold_s=6)
            await call.wait_hangup(15)
            run = await p.wait_run(
                lambda r, before=before: r["id"] not in before and r["status"] == "failed", workflow_id=wf["id"]
            )
            assert "media" in run["end_reason"], (section, run["end_reason"])
            assert len(recorder.agents) == agents, f"{section}: an agent got media"
