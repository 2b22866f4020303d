"""The guide's telephony pages over HTTP: add, list, open, edit, delete; phone numbers; test call."""

from __future__ import annotations

import html
import re
from typing import Any

from sqlalchemy import select

from tests.web.fakes import FakeTelephony
from tests.web.platform import DashboardClient, DashboardUser, Platform
from vr3ai.db.models import PhoneNumber, TelephonyConfiguration
from vr3ai.telephony.manager import CallRefused

FORM = {
    "provider": "ari",
    "ari_endpoint_url": "http://asterisk.example.com:8088",
    "stasis_app_name": "vr3ai",
    "app_password": "S3cret-Pa55-word",
    "websocket_client_name": "vr3ai",
    "from_extensions": "PJSIP/6001, 6002",
    "enabled": "on",
}


def field_error(page: str, name: str) -> str:
    m = re.search(rf'<p class="error" id="e-{name}">(.*?)</p>', page, re.S)
    return html.unescape(m.group(1)) if m else ""


async def _config_ids(platform: Platform, org_id: str) -> list[str]:
    async with platform.services.db.session() as s:
        return list(
            (
                await s.scalars(
                    select(TelephonyConfiguration.id).where(TelephonyConfiguration.organization_id == org_id)
                )
            ).all()
        )


async def _add(web: DashboardClient, **overrides: Any) -> Any:
    return await web.post_form("/telephony-configurations", {**FORM, **overrides})


async def _workflow(platform: Platform, user: DashboardUser, name: str = "Receptionist") -> str:
    from vr3ai.workflows.definition import example_definition

    async with platform.api(user) as api:
        r = await api.post("/workflows", json={"name": name, "definition": example_definition()})
        assert r.status_code == 201
        return str(r.json()["id"])


async def test_add_configuration_through_the_form(telephony_platform: Platform) -> None:
    user = await telephony_platform.create_user()
    fake: FakeTelephony = telephony_platform.services.telephony  # type: ignore[assignment]
    async with telephony_platform.dashboard(user) as web:
        page = (await web.get("/telephony-configurations")).text
        assert "Add configuration" in page and "No telephony configuration yet" in page
        choose = (await web.get("/telephony-configurations/new")).text
        assert 'href="/telephony-configurations/new?provider=ari"' in choose and "Asterisk ARI" in choose
        form = (await web.get("/telephony-configurations/new?provider=ari")).text
        for label, description, example in (
            ("ARI Endpoint URL", "HTTP base URL of your Asterisk ARI server", "http://asterisk.example.com:8088"),
            ("Stasis App Name", "The ARI username configured in ari.conf", "vr3ai"),
            ("App Password", "The ARI password configured in ari.conf", "your_secure_password"),
            ("WebSocket Client Name", "The connection name from websocket_client.conf", "vr3ai"),
            ("From Extensions", "Optional SIP extensions or trunk numbers for outbound calls", "PJSIP/6001 or 6001"),
        ):
            assert label in form and description in form and f"<code>{example}</code>" in form
        assert ">Save Configuration<" in form

        r = await _add(web)
        assert r.status_code == 303 and r.headers["location"] == "/telephony-configurations"
        listing = await web.get("/telephony-configurations")
        assert "Configuration saved" in listing.text
        assert "Asterisk asterisk.example.com" in listing.text and "Connected" in listing.text
        [cid] = await _config_ids(telephony_platform, user.organization_id)
        assert fake.changed == [cid]

        detail = (await web.get(f"/telephony-configurations/{cid}")).text
        assert "S3cret-Pa55-word" not in detail and "password = your_secure_password" in detail
        assert "PJSIP/6001" in detail and "6002" in detail
        assert "Phone numbers" in detail and "Inbound workflow" in detail
        assert "Stasis(vr3ai)" in detail and "protocols = media" in detail
    async with telephony_platform.services.db.session() as s:
        row = await s.get(TelephonyConfiguration, cid)
        assert row is not None and row.from_extensions == ["PJSIP/6001", "6002"]
        assert telephony_platform.services.box.decrypt(row.app_password_enc) == "S3cret-Pa55-word"


async def test_validation_errors_next_to_the_field(platform: Platform) -> None:
    user = await platform.create_user()
    async with platform.dashboard(user) as web:
        r = await _add(
            web,
            ari_endpoint_url="asterisk.example.com:8088",
            stasis_app_name="vr3ai ",
            websocket_client_name="",
            app_password="",
            from_extensions="PJSIP/6001, bad/ext/x",
        )
        assert r.status_code == 422
        page = r.text
        assert "must start with http:// or https://" in field_error(page, "ari_endpoint_url")
        assert "no extra spaces" in field_error(page, "stasis_app_name")
        assert "must not be empty" in field_error(page, "websocket_client_name")
        assert "must not be empty" in field_error(page, "app_password")
        assert "item 2" in field_error(page, "from_extensions")
        # What was typed is kept (so it can be corrected), the password never is.
        assert 'value="asterisk.example.com:8088"' in page
        assert await _config_ids(platform, user.organization_id) == []


async def test_same_app_on_same_asterisk_is_refused_next_to_the_app_name(platform: Platform) -> None:
    user = await platform.create_user()
    async with platform.dashboard(user) as web:
        assert (await _add(web)).status_code == 303
        r = await _add(web, ari_endpoint_url="http://ASTERISK.example.com:8088/ari")
        assert r.status_code == 409
        assert "already used by another telephony configuration" in field_error(r.text, "stasis_app_name")
        assert "Enter the password again" in field_error(r.text, "app_password")
        assert "S3cret-Pa55-word" not in r.text


async def test_edit_keeps_the_password_when_left_empty(telephony_platform: Platform) -> None:
    user = await telephony_platform.create_user()
    fake: FakeTelephony = telephony_platform.services.telephony  # type: ignore[assignment]
    async with telephony_platform.dashboard(user) as web:
        await _add(web)
        [cid] = await _config_ids(telephony_platform, user.organization_id)
        edit = (await web.get(f"/telephony-configurations/{cid}/edit")).text
        assert 'value="vr3ai"' in edit and "Leave empty to keep the current password" in edit
        assert "S3cret-Pa55-word" not in edit
        data = {**FORM, "name": "Office PBX", "app_password": "", "websocket_client_name": "media_out"}
        r = await web.post_form(f"/telephony-configurations/{cid}/edit", data)
        assert r.status_code == 303 and r.headers["location"] == f"/telephony-configurations/{cid}"
        r = await web.post_form(f"/telephony-configurations/{cid}/edit", {**data, "name": ""})
        assert r.status_code == 422 and field_error(r.text, "name")
    async with telephony_platform.services.db.session() as s:
        row = await s.get(TelephonyConfiguration, cid)
        assert row is not None and row.name == "Office PBX" and row.websocket_client_name == "media_out"
        assert telephony_platform.services.box.decrypt(row.app_password_enc) == "S3cret-Pa55-word"
    assert fake.changed == [cid, cid]


async def test_delete_configuration(telephony_platform: Platform) -> None:
    user = await telephony_platform.create_user()
    fake: FakeTelephony = telephony_platform.services.telephony  # type: ignore[assignment]
    async with telephony_platform.dashboard(user) as web:
        await _add(web)
        [cid] = await _config_ids(telephony_platform, user.organization_id)
        r = await web.post_form(f"/telephony-configurations/{cid}/delete")
        assert r.status_code == 303
        assert "deleted" in (await web.get("/telephony-configurations")).text
        assert (await web.get(f"/telephony-configurations/{cid}")).status_code == 404
    assert fake.deleted == [cid]


async def test_phone_numbers_add_edit_remove(platform: Platform) -> None:
    user = await platform.create_user()
    wf1 = await _workflow(platform, user, "Receptionist")
    wf2 = await _workflow(platform, user, "Sales")
    async with platform.dashboard(user) as web:
        await _add(web)
        [cid] = await _config_ids(platform, user.organization_id)
        base = f"/telephony-configurations/{cid}/phone-numbers"
        r = await web.post_form(base, {"address": "8000", "inbound_workflow_id": wf1})
        assert r.status_code == 303 and r.headers["location"].endswith("#phone-numbers")
        page = html.unescape((await web.get(f"/telephony-configurations/{cid}")).text)
        assert "Phone number 8000 added" in page
        assert re.search(rf'<option value="{wf1}" selected>Receptionist</option>', page)
        assert "exten => 8000,1,NoOp(Incoming call to 8000)" in page

        # Duplicate and invalid extensions: the error is shown with the add form.
        r = await web.post_form(base, {"address": "8000", "inbound_workflow_id": wf1})
        assert r.status_code == 409 and "already registered" in r.text
        r = await web.post_form(base, {"address": "80 00"})
        assert r.status_code == 422 and "SIP extension like" in r.text

        async with platform.services.db.session() as s:
            number = await s.scalar(select(PhoneNumber).where(PhoneNumber.telephony_configuration_id == cid))
        assert number is not None
        r = await web.post_form(f"{base}/{number.id}", {"address": "8001", "inbound_workflow_id": wf2})
        assert r.status_code == 303
        r = await web.post_form(f"{base}/{number.id}", {"address": "8001", "inbound_workflow_id": ""})
        assert r.status_code == 303
        page = (await web.get(f"/telephony-configurations/{cid}")).text
        assert "No Inbound workflow: calls to 8001 are refused." in page
        async with platform.services.db.session() as s:
            n = await s.get(PhoneNumber, number.id)
            assert n is not None and n.address == "8001" and n.inbound_workflow_id is None

        r = await web.post_form(f"{base}/{number.id}/delete")
        assert r.status_code == 303
        async with platform.services.db.session() as s:
            assert await s.get(PhoneNumber, number.id) is None
        assert (await web.post_form(f"{base}/{number.id}/delete")).status_code == 404


async def test_other_organization_gets_404(platform: Platform) -> None:
    owner = await platform.create_user()
    intruder = await platform.create_user()
    wf = await _workflow(platform, owner)
    async with platform.dashboard(owner) as web:
        await _add(web)
        [cid] = await _config_ids(platform, owner.organization_id)
        await web.post_form(
            f"/telephony-configurations/{cid}/phone-numbers", {"address": "8000", "inbound_workflow_id": wf}
        )
    async with platform.services.db.session() as s:
        nid = await s.scalar(select(PhoneNumber.id))
    async with platform.dashboard(intruder) as web:
        for path in (
            f"/telephony-configurations/{cid}",
            f"/telephony-configurations/{cid}/edit",
            f"/telephony-configurations/{cid}/status.json",
            f"/workflows/{wf}",
        ):
            r = await web.get(path)
            assert r.status_code == 404, path
            assert "does not exist" in r.text
        for path, data in (
            (f"/telephony-configurations/{cid}/edit", FORM),
            (f"/telephony-configurations/{cid}/delete", {}),
            (f"/telephony-configurations/{cid}/phone-numbers", {"address": "9000"}),
            (f"/telephony-configurations/{cid}/phone-numbers/{nid}/delete", {}),
            (f"/telephony-configurations/{cid}/diagnostics", {}),
            (f"/telephony-configurations/{cid}/test-call", {"workflow_id": wf, "to": "6001"}),
            (f"/workflows/{wf}/delete", {}),
        ):
            assert (await web.post_form(path, data)).status_code == 404, path
        # Their own configuration cannot point a number at the owner's workflow either.
        await _add(web, stasis_app_name="intruder")
        [own] = await _config_ids(platform, intruder.organization_id)
        r = await web.post_form(
            f"/telephony-configurations/{own}/phone-numbers", {"address": "8000", "inbound_workflow_id": wf}
        )
        assert r.status_code == 422 and "no workflow with this id in your organization" in r.text
    assert await _config_ids(platform, owner.organization_id) == [cid]


async def test_status_json_and_states(telephony_platform: Platform) -> None:
    user = await telephony_platform.create_user()
    fake: FakeTelephony = telephony_platform.services.telephony  # type: ignore[assignment]
    async with telephony_platform.dashboard(user) as web:
        await _add(web)
        [cid] = await _config_ids(telephony_platform, user.organization_id)
        data = (await web.get(f"/telephony-configurations/{cid}/status.json")).json()
        assert data["ari"]["state"] == "connected" and data["ari"]["label"] == "Connected"
        fake.states[cid] = {"state": "connecting", "since": None, "last_error": "cannot reach ARI at http://x/ari"}
        data = (await web.get(f"/telephony-configurations/{cid}/status.json")).json()
        assert data["ari"]["label"] == "Retrying" and "cannot reach" in data["ari"]["last_error"]
        fake.states[cid] = {"state": "replaced", "since": None, "last_error": "taken"}
        page = (await web.get(f"/telephony-configurations/{cid}")).text
        assert ">Replaced<" in page and ">Reconnect</button>" in page
        r = await web.post_form(f"/telephony-configurations/{cid}/reconnect")
        assert r.status_code == 303 and fake.changed[-1] == cid
        fake.events[cid] = [
            {
                "at": "2026-01-01T00:00:00+00:00",
                "level": "warning",
                "message": "no matching phone number registered for config x",
            }
        ]
        data = (await web.get(f"/telephony-configurations/{cid}/status.json")).json()
        assert data["recent_events"][0]["message"].startswith("no matching phone number")
        assert set(data) == {"ari", "active_calls", "recent_events"}


async def test_not_running_without_telephony(platform: Platform) -> None:
    user = await platform.create_user()
    async with platform.dashboard(user) as web:
        await _add(web)
        [cid] = await _config_ids(platform, user.organization_id)
        page = (await web.get("/telephony-configurations")).text
        assert "Not running" in page and "Telephony is not running in this VR3 AI process" in page
        data = (await web.get(f"/telephony-configurations/{cid}/status.json")).json()
        assert data["ari"]["state"] == "stopped"
        # A test call explains instead of failing.
        wf = await _workflow(platform, user)
        r = await web.post_form(f"/telephony-configurations/{cid}/test-call", {"workflow_id": wf, "to": "6001"})
        assert r.status_code == 503 and "telephony is not running" in r.text


async def test_test_call_redirects_to_the_run(telephony_platform: Platform) -> None:
    user = await telephony_platform.create_user()
    fake: FakeTelephony = telephony_platform.services.telephony  # type: ignore[assignment]
    wf = await _workflow(telephony_platform, user)
    async with telephony_platform.dashboard(user) as web:
        await _add(web)
        [cid] = await _config_ids(telephony_platform, user.organization_id)
        r = await web.post_form(f"/telephony-configurations/{cid}/test-call", {"workflow_id": wf, "to": "6001"})
        assert r.status_code == 303
        run_id = fake.calls[0]["run_id"]
        assert r.headers["location"] == f"/runs/{run_id}"
        run_page = (await web.get(r.headers["location"])).text
        assert "Calling 6001" in run_page and "data-run-status-url" in run_page

        r = await web.post_form(f"/telephony-configurations/{cid}/test-call", {"workflow_id": wf, "to": "60 01"})
        assert r.status_code == 422 and "must be an extension or number" in r.text
        r = await web.post_form(f"/telephony-configurations/{cid}/test-call", {"workflow_id": "", "to": "6001"})
        assert r.status_code == 422 and "choose the workflow" in r.text
        fake.refuse = CallRefused("the ARI connection of this configuration is failed: cannot reach ARI", 409)
        r = await web.post_form(f"/telephony-configurations/{cid}/test-call", {"workflow_id": wf, "to": "6001"})
        assert r.status_code == 409 and "cannot reach ARI" in r.text
        fake.refuse = None

        # The dial string the help text offers is accepted, and From offers every From Extension.
        page = (await web.get(f"/telephony-configurations/{cid}")).text
        assert 'a full dial string like <code>PJSIP/6001</code>' in page
        assert '<select id="tc-from" name="from">' in page
        assert '<option value="PJSIP/6001"' in page and '<option value="6002"' in page
        form = {"workflow_id": wf, "to": "PJSIP/6001", "from": "6002"}
        r = await web.post_form(f"/telephony-configurations/{cid}/test-call", form)
        assert r.status_code == 303, r.text
        assert fake.calls[-1]["to"] == "PJSIP/6001" and fake.calls[-1]["from"] == "6002"
        form = {"workflow_id": wf, "to": "6001", "from": "6009"}
        r = await web.post_form(f"/telephony-configurations/{cid}/test-call", form)
        assert r.status_code == 422 and "must be one of the configuration&#39;s From Extensions" in r.text
        r = await web.post_form(f"/telephony-configurations/{cid}/test-call", {"workflow_id": wf, "to": "Foo/6001"})
        assert r.status_code == 422 and "unknown channel technology" in r.text
