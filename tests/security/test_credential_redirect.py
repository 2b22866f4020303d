"""Write-only credentials must not be redirectable by someone who does not know them.

* Moving a telephony configuration's ``ari_endpoint_url`` to another server (scheme, host or port)
  used to keep the stored ``app_password`` and send it there; now the same request must carry the
  password (422 otherwise), on the API and in the dashboard's form.
* An organization secret used as an LLM API key went to whatever ``base_url`` a workflow named; now
  it is bound to hosts (``allowed_hosts`` or the first workflow that uses it) and any other host is
  refused when the workflow is saved (422) and, for a workflow stored earlier, at call time (the
  secret is withheld and the run says why).

Real platform on uvicorn, real SQLite, real local HTTP servers standing in for the ARI servers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tests.security.hostile import HostileServer, run_hostile
from tests.web.platform import start_platform
from vr3ai.db.models import OrganizationSecret, TelephonyConfiguration, Workflow


def _refuse(method: str, path: str) -> tuple[int, Any]:
    return 401, {"message": "Authentication required"}


def _basic(server: HostileServer) -> set[str]:
    out = set()
    for _, _, auth in server.requests:
        if auth.startswith("Basic "):
            out.add(base64.b64decode(auth[6:]).decode().split(":", 1)[1])
    return out


async def _until(predicate: Any, what: str) -> None:
    # Waits for an event, not for a speed: the bound only keeps a broken run from hanging.
    for _ in range(400):
        if predicate():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"never happened: {what}")


async def test_moving_the_ari_endpoint_requires_the_password(tmp_path: Path) -> None:
    old_password = "stored-ari-" + secrets.token_hex(6)
    async with (
        run_hostile(_refuse) as home,
        run_hostile(_refuse) as elsewhere,
        start_platform(tmp_path, telephony=True) as p,
    ):
        user = await p.create_user()
        async with p.api(user) as api:
            r = await api.post(
                "/telephony-configurations",
                json={
                    "name": "PBX",
                    "ari_endpoint_url": home.url,
                    "stasis_app_name": "vr3ai",
                    "app_password": old_password,
                    "websocket_client_name": "vr3ai",
                },
            )
            assert r.status_code == 201, r.text
            cid = r.json()["id"]
            await _until(lambda: old_password in _basic(home), "the listener used the stored password")

            # Another server, same request without the password: refused, nothing changed.
            for target in (elsewhere.url, home.url.replace("http://", "https://")):
                r = await api.patch(f"/telephony-configurations/{cid}", json={"ari_endpoint_url": target})
                assert r.status_code == 422, (target, r.text)
                assert r.json()["detail"][0]["loc"] == ["body", "app_password"]
                assert "entered again" in r.json()["detail"][0]["msg"]
            async with p.services.db.session() as s:
                row = await s.get(TelephonyConfiguration, cid)
                assert row is not None and row.ari_endpoint_url == home.url
                assert p.services.box.decrypt(row.app_password_enc) == old_password

            # The same server written differently needs no password.
            r = await api.patch(f"/telephony-configurations/{cid}", json={"ari_endpoint_url": home.url + "/ari/"})
            assert r.status_code == 200, r.text

            # The dashboard's edit form (password left empty = "keep") gets the same answer.
            async with p.dashboard(user) as web:
                form = {
                    "name": "PBX",
                    "ari_endpoint_url": elsewhere.url,
                    "stasis_app_name": "vr3ai",
                    "websocket_client_name": "vr3ai",
                    "enabled": "on",
                }
                page = await web.post_form(f"/telephony-configurations/{cid}/edit", form)
                assert page.status_code == 422 and "entered again" in page.text

            # With the password, the move is fine, and only that password travels to the new server.
            new_password = "new-ari-" + secrets.token_hex(6)
            r = await api.patch(
                f"/telephony-configurations/{cid}",
                json={"ari_endpoint_url": elsewhere.url, "app_password": new_password},
            )
            assert r.status_code == 200, r.text
            await _until(lambda: new_password in _basic(elsewhere), "the listener moved")
            assert old_password not in _basic(elsewhere)


def _llm_workflow(base_url: str, secret: str) -> dict[str, Any]:
    from vr3ai.workflows.definition import example_definition

    definition = example_definition()
    definition["settings"]["llm"] = {
        "provider": "openai_compatible",
        "base_url": base_url,
        "model": "m",
        "api_key_secret": secret,
    }
    return definition


async def test_an_organization_secret_is_bound_to_its_hosts(tmp_path: Path) -> None:
    key = "sk-live-" + secrets.token_hex(12)
    async with start_platform(tmp_path) as p:
        user = await p.create_user()
        async with p.api(user) as api:
            r = await api.post("/secrets", json={"name": "llm", "value": key, "allowed_hosts": ["API.OpenAI.com"]})
            assert r.status_code == 201, r.text
            assert r.json()["allowed_hosts"] == ["api.openai.com"] and key not in r.text

            # Another host: refused on save, pointing at the field that chose it.
            r = await api.post(
                "/workflows", json={"name": "steal", "definition": _llm_workflow("http://127.0.0.1:9/v1", "llm")}
            )
            assert r.status_code == 422, r.text
            err = r.json()["detail"][0]
            assert err["loc"] == ["body", "definition", "settings", "llm", "base_url"]
            assert "'llm' may only be sent to api.openai.com" in err["msg"] and "127.0.0.1:9" in err["msg"]

            # The dashboard's workflow editor gets the same answer.
            async with p.dashboard(user) as web:
                steal = json.dumps(_llm_workflow("http://127.0.0.1:9/v1", "llm"))
                form = {"mode": "json", "name": "steal", "definition_json": steal}
                page = await web.post_form("/workflows", form, csrf_from="/workflows/new")
                assert page.status_code == 422 and "may only be sent to api.openai.com" in page.text
            assert [w["name"] for w in (await api.get("/workflows")).json()["items"]] == []

            # Its own host is fine; editing that workflow's base_url elsewhere is refused.
            r = await api.post(
                "/workflows", json={"name": "ok", "definition": _llm_workflow("https://api.openai.com/v1", "llm")}
            )
            assert r.status_code == 201, r.text
            wid = r.json()["id"]
            r = await api.patch(f"/workflows/{wid}", json={"definition": _llm_workflow("http://evil.test/v1", "llm")})
            assert r.status_code == 422, r.text
            r = await api.get(f"/workflows/{wid}")
            assert r.json()["definition"]["settings"]["llm"]["base_url"] == "https://api.openai.com/v1"

            # Not bound yet: the first workflow binds it, the next one with another host is refused.
            r = await api.post("/secrets", json={"name": "tofu", "value": "tofu-" + secrets.token_hex(8)})
            assert r.status_code == 201 and r.json()["allowed_hosts"] == []
            r = await api.post(
                "/workflows", json={"name": "w1", "definition": _llm_workflow("http://llm.internal:8000/v1", "tofu")}
            )
            assert r.status_code == 201, r.text
            listed = {s["name"]: s for s in (await api.get("/secrets")).json()["items"]}
            assert listed["tofu"]["allowed_hosts"] == ["llm.internal:8000"]
            other = _llm_workflow("http://evil.test/v1", "tofu")
            assert (await api.post("/workflows", json={"name": "w2", "definition": other})).status_code == 422

            # Only someone who gives the value again widens the binding; re-storing it without
            # allowed_hosts keeps the binding.
            value = "tofu-" + secrets.token_hex(8)
            r = await api.post(
                "/secrets", json={"name": "tofu", "value": value, "allowed_hosts": ["llm.internal:8000", "evil.test"]}
            )
            assert r.status_code == 200 and r.json()["allowed_hosts"] == ["llm.internal:8000", "evil.test"]
            assert (await api.post("/workflows", json={"name": "w2", "definition": other})).status_code == 201
            r = await api.post("/secrets", json={"name": "tofu", "value": value})
            assert r.json()["allowed_hosts"] == ["llm.internal:8000", "evil.test"]

            for bad in ("https://api.openai.com/v1", "*.openai.com", "host:notaport", "a b"):
                r = await api.post("/secrets", json={"name": "x", "value": "value-1234", "allowed_hosts": [bad]})
                assert r.status_code == 422, bad
                assert r.json()["detail"][0]["loc"][:2] == ["body", "allowed_hosts"]


async def test_a_call_withholds_a_secret_from_a_host_it_is_not_bound_to(tmp_path: Path) -> None:
    """A workflow stored before its secret existed (or before bindings) is checked when a call
    starts: the secret is withheld from a host it is not bound to, and bound on first use."""
    from tests.web.fakes import closed_port_url
    from vr3ai.telephony.ari.calls import Call
    from vr3ai.telephony.ari.config import AriConfig
    from vr3ai.telephony.ari.connection import AriConnection
    from vr3ai.telephony.deps import CallDeps

    key = "sk-late-" + secrets.token_hex(12)
    async with start_platform(tmp_path) as p:
        user = await p.create_user()
        async with p.api(user) as api:
            r = await api.post(
                "/workflows", json={"name": "late", "definition": _llm_workflow("http://127.0.0.1:9/v1", "late")}
            )
            assert r.status_code == 201, r.text
            wid = r.json()["id"]
            r = await api.post(
                "/workflows", json={"name": "first", "definition": _llm_workflow("http://127.0.0.1:7/v1", "first")}
            )
            first_id = r.json()["id"]
            assert (
                await api.post("/secrets", json={"name": "late", "value": key, "allowed_hosts": ["api.openai.com"]})
            ).status_code == 201
            assert (
                await api.post("/secrets", json={"name": "first", "value": "first-" + secrets.token_hex(8)})
            ).status_code == 201
        config = AriConfig(
            id="00000000-0000-0000-0000-000000000001",
            organization_id=user.organization_id,
            name="pbx",
            ari_endpoint_url=closed_port_url(),
            stasis_app_name="vr3ai",
            app_password="ari-" + secrets.token_hex(6),
            websocket_client_name="vr3ai",
            from_extensions=[],
            dial_template="PJSIP/{to}",
        )
        deps = CallDeps.from_services(p.services, agent_factory=lambda ctx: None)  # type: ignore[arg-type,return-value]
        conn = AriConnection(deps, config)
        try:
            async with p.services.db.session() as s:
                wf = await s.get(Workflow, wid)
                first = await s.get(Workflow, first_id)
            assert wf is not None and first is not None
            call = Call(conn, deps, direction="outbound")
            assert await call._secrets(wf) == {}
            [event] = call.report.events
            assert event["level"] == "error" and "'late' may only be sent to api.openai.com" in event["message"]
            assert key not in event["message"]

            call2 = Call(conn, deps, direction="outbound")
            got = await call2._secrets(first)
            assert list(got) == ["first"] and call2.report.events == []
            async with p.services.db.session() as s:
                row = await s.scalar(select(OrganizationSecret).where(OrganizationSecret.name == "first"))
                assert row is not None and row.allowed_hosts == ["127.0.0.1:7"]
        finally:
            await conn.client.aclose()
