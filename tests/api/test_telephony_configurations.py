"""Telephony configurations: CRUD, write-only passwords, validation, and Stasis app uniqueness."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from tests.fixtures_platform import FakeTelephony, Platform, ok
from vr3ai.db.models import TelephonyConfiguration

# The app is served once per backend for the session (see tests/fixtures_platform.py).
pytestmark = pytest.mark.asyncio(loop_scope="session")

BASE = "/api/v1/telephony-configurations"
EXTRA_SPACES = "no extra spaces in the credentials"


async def test_configuration_crud_and_write_only_passwords(platform: Platform) -> None:
    t = await platform.tenant()
    body = platform.config_body(
        ari_endpoint_url="http://PBX.Example.com:8088/ari/",
        media_username="asterisk",
        media_password=platform.secret("media-secret-123"),
    )
    created = ok(await t.http.post(BASE, json=body), 201)
    cid = created["id"]
    assert created == {
        "id": cid,
        "name": "Office PBX",
        "provider": "ari",
        "ari_endpoint_url": "http://pbx.example.com:8088",  # normalised: lower-case host, no /ari
        "stasis_app_name": "vr3ai",
        "app_password_set": True,
        "websocket_client_name": "vr3ai",
        "from_extensions": ["PJSIP/6001"],
        "dial_template": "PJSIP/{to}",
        "media_username": "asterisk",
        "media_password_set": True,
        "enabled": True,
        "created_at": created["created_at"],
        "updated_at": created["updated_at"],
    }
    assert ok(await t.http.get(f"{BASE}/{cid}")) == created
    assert ok(await t.http.get(BASE))["items"] == [created]

    # Encrypted at rest, and the box gives the same values back to the telephony layer.
    async with platform.services.db.session() as s:
        row = await s.scalar(select(TelephonyConfiguration).where(TelephonyConfiguration.id == cid))
    assert row is not None
    assert body["app_password"] not in row.app_password_enc
    assert platform.services.box.decrypt(row.app_password_enc) == body["app_password"]
    assert row.media_password_enc is not None
    assert platform.services.box.decrypt(row.media_password_enc) == "media-secret-123"
    assert row.endpoint_key == "http://pbx.example.com:8088"

    new_password = platform.secret("rotated-password-456")
    patched = ok(
        await t.http.patch(
            f"{BASE}/{cid}",
            json={
                "app_password": new_password,
                "name": "Main office",
                "from_extensions": ["6001", "PJSIP/6002", "PJSIP/trunk-out"],
                "dial_template": "PJSIP/{to}@trunk",
                "enabled": False,
            },
        )
    )
    assert patched["name"] == "Main office"
    assert patched["from_extensions"] == ["6001", "PJSIP/6002", "PJSIP/trunk-out"]
    assert patched["dial_template"] == "PJSIP/{to}@trunk"
    assert patched["enabled"] is False
    assert patched["media_password_set"] is True  # untouched fields stay
    async with platform.services.db.session() as s:
        row = await s.get(TelephonyConfiguration, cid)
    assert row is not None and platform.services.box.decrypt(row.app_password_enc) == new_password

    # Media authentication cannot be switched off: null asks for newly generated values.
    renewed = ok(await t.http.patch(f"{BASE}/{cid}", json={"media_username": None, "media_password": None}))
    assert renewed["media_username"] not in (None, "asterisk") and renewed["media_password_set"] is True
    async with platform.services.db.session() as s:
        row = await s.get(TelephonyConfiguration, cid)
    assert row is not None and row.media_password_enc is not None
    assert platform.services.box.decrypt(row.media_password_enc) != "media-secret-123"

    assert (await t.http.delete(f"{BASE}/{cid}")).status_code == 204
    assert (await t.http.get(f"{BASE}/{cid}")).status_code == 404
    assert ok(await t.http.get(BASE))["items"] == []


async def test_invalid_configurations_get_422_naming_the_field(platform: Platform) -> None:
    t = await platform.tenant()
    cases: list[tuple[dict[str, Any], list[Any], str]] = [
        ({"stasis_app_name": " vr3ai"}, ["body", "stasis_app_name"], EXTRA_SPACES),
        ({"stasis_app_name": "vr3ai "}, ["body", "stasis_app_name"], EXTRA_SPACES),
        ({"app_password": platform.secret("trailing-space-pw ")}, ["body", "app_password"], EXTRA_SPACES),
        ({"app_password": platform.secret("\tleading-tab-pw")}, ["body", "app_password"], EXTRA_SPACES),
        ({"app_password": ""}, ["body", "app_password"], "must not be empty"),
        ({"stasis_app_name": "vr3 ai"}, ["body", "stasis_app_name"], "must not contain spaces"),
        ({"stasis_app_name": "vr3ai!"}, ["body", "stasis_app_name"], "letters, digits"),
        ({"stasis_app_name": ""}, ["body", "stasis_app_name"], "must not be empty"),
        ({"websocket_client_name": "my client"}, ["body", "websocket_client_name"], "must not contain spaces"),
        ({"websocket_client_name": " vr3ai"}, ["body", "websocket_client_name"], EXTRA_SPACES),
        ({"ari_endpoint_url": "asterisk.example.com:8088"}, ["body", "ari_endpoint_url"], "http://"),
        ({"ari_endpoint_url": "ftp://pbx:8088"}, ["body", "ari_endpoint_url"], "http://"),
        ({"ari_endpoint_url": "http://pbx:8088/asterisk"}, ["body", "ari_endpoint_url"], "only path allowed is /ari"),
        ({"ari_endpoint_url": "http://pbx:99999"}, ["body", "ari_endpoint_url"], "not a valid URL"),
        (
            {"ari_endpoint_url": "http://vr3ai:pw@pbx:8088"},
            ["body", "ari_endpoint_url"],
            "must not contain credentials",
        ),
        ({"ari_endpoint_url": "http://pbx:8088?x=1"}, ["body", "ari_endpoint_url"], "query string"),
        ({"provider": "twilio"}, ["body", "provider"], "must be one of: ari"),
        ({"from_extensions": ["PJSIP/6001", "bad ext"]}, ["body", "from_extensions", 1], "like '6001'"),
        ({"from_extensions": ["6001&PJSIP/7000"]}, ["body", "from_extensions", 0], "like '6001'"),
        ({"from_extensions": ["6001", "6001"]}, ["body", "from_extensions"], "listed twice"),
        ({"from_extensions": "6001"}, ["body", "from_extensions"], "must be a list"),
        ({"dial_template": "PJSIP/6001"}, ["body", "dial_template"], "{to}"),
        ({"dial_template": "PJSIP/{to}/{host}"}, ["body", "dial_template"], "only use the placeholder"),
        ({"dial_template": "PJSIP/{to"}, ["body", "dial_template"], "not a valid template"),
        ({"media_username": "a:b", "media_password": "pw123456"}, ["body", "media_username"], "':'"),
        ({"name": ""}, ["body", "name"], "must not be empty"),
        ({"enabled": "maybe"}, ["body", "enabled"], "true or false"),
        ({"password": platform.secret("typo-field-pw")}, ["body", "password"], "unknown field"),
    ]
    for overrides, loc, text in cases:
        r = await t.http.post(BASE, json=platform.config_body(**overrides))
        assert r.status_code == 422, (overrides, r.text)
        err = r.json()
        assert any(d["loc"] == loc and text in d["msg"] for d in err["detail"]), (overrides, err)
        assert loc[1] in err["message"] and text in err["message"], err["message"]

    for missing in ("name", "ari_endpoint_url", "stasis_app_name", "app_password", "websocket_client_name"):
        body = platform.config_body()
        del body[missing]
        r = await t.http.post(BASE, json=body)
        assert r.status_code == 422
        assert r.json()["detail"] == [{"type": "missing", "loc": ["body", missing], "msg": "field required"}]

    # Optional fields have defaults: provider "ari", no from_extensions, dial_template "PJSIP/{to}".
    minimal = platform.config_body()
    del minimal["provider"], minimal["from_extensions"]
    created = ok(await t.http.post(BASE, json=minimal), 201)
    assert (created["provider"], created["from_extensions"], created["dial_template"]) == ("ari", [], "PJSIP/{to}")

    cid = created["id"]
    for body, loc, text in [
        ({"stasis_app_name": None}, ["body", "stasis_app_name"], "must not be null"),
        ({"app_password": None}, ["body", "app_password"], "must not be null"),
        ({"app_password": platform.secret(" patched-pw")}, ["body", "app_password"], EXTRA_SPACES),
        ({"ari_endpoint_url": "pbx"}, ["body", "ari_endpoint_url"], "http://"),
        ({"media_username": ""}, ["body", "media_username"], "must not be empty"),
        ({"media_password": " spaced-pw"}, ["body", "media_password"], EXTRA_SPACES),
    ]:
        r = await t.http.patch(f"{BASE}/{cid}", json=body)
        assert r.status_code == 422, (body, r.text)
        assert any(d["loc"] == loc and text in d["msg"] for d in r.json()["detail"]), (body, r.text)
    assert ok(await t.http.get(f"{BASE}/{cid}")) == created


async def test_stasis_app_is_unique_per_asterisk_across_organizations(platform: Platform) -> None:
    a = await platform.tenant("Org A")
    b = await platform.tenant("Org B")
    first = ok(await a.http.post(BASE, json=platform.config_body(ari_endpoint_url="http://Host:8088/")), 201)

    # The same Asterisk spelled differently is still the same Asterisk.
    for url in ("http://host:8088", "http://HOST:8088/ari", "http://host:8088/ari/"):
        r = await b.http.post(BASE, json=platform.config_body(ari_endpoint_url=url, name="B's secret name"))
        assert r.status_code == 409, (url, r.text)
        msg = r.json()["message"]
        assert "steal each other's calls" in msg and "'vr3ai'" in msg
        # Nothing about the other organization's configuration leaks.
        assert first["id"] not in r.text and "Office PBX" not in r.text and a.org_id not in r.text

    # No port means Asterisk's default (8088, 8089 over https), as the generated http.conf says; it is
    # stored and shown with the port, and counts as the explicit one.
    body = platform.config_body(ari_endpoint_url="http://pbx2", stasis_app_name="x")
    pbx2 = ok(await a.http.post(BASE, json=body), 201)
    assert pbx2["ari_endpoint_url"] == "http://pbx2:8088"
    r = await b.http.post(BASE, json=platform.config_body(ari_endpoint_url="http://PBX2:8088/", stasis_app_name="x"))
    assert r.status_code == 409
    body = platform.config_body(ari_endpoint_url="http://pbx2:80", stasis_app_name="x")
    port80 = ok(await b.http.post(BASE, json=body), 201)
    assert port80["ari_endpoint_url"] == "http://pbx2:80"  # another server: port 80 only when written
    body = platform.config_body(ari_endpoint_url="https://pbx3/ari", stasis_app_name="x")
    tls = ok(await b.http.post(BASE, json=body), 201)
    assert tls["ari_endpoint_url"] == "https://pbx3:8089"

    # Another app on the same Asterisk, or the same app on another Asterisk (or port), is fine.
    ok(
        await b.http.post(
            BASE, json=platform.config_body(ari_endpoint_url="http://host:8088", stasis_app_name="vr3ai-b")
        ),
        201,
    )
    other_port = ok(await b.http.post(BASE, json=platform.config_body(ari_endpoint_url="http://host:8089")), 201)

    # Within one organization the 409 may name the configuration that holds the app.
    r = await a.http.post(BASE, json=platform.config_body(ari_endpoint_url="http://host:8088"))
    assert r.status_code == 409 and first["id"] in r.json()["message"]

    # Moving a configuration onto a taken app is refused and changes nothing.
    # (Another port is another server: the password comes along, see tests/security.)
    move = {"ari_endpoint_url": "http://HOST:8088", "app_password": platform.secret("moved-pass-1")}
    r = await b.http.patch(f"{BASE}/{other_port['id']}", json=move)
    assert r.status_code == 409 and first["id"] not in r.text
    assert ok(await b.http.get(f"{BASE}/{other_port['id']}")) == other_port
    # Saving a configuration unchanged does not collide with itself.
    ok(
        await a.http.patch(
            f"{BASE}/{first['id']}", json={"stasis_app_name": "vr3ai", "ari_endpoint_url": "http://host:8088"}
        )
    )

    # Once the holder is deleted, the app is free again.
    assert (await a.http.delete(f"{BASE}/{first['id']}")).status_code == 204
    ok(await b.http.patch(f"{BASE}/{other_port['id']}", json=move))


async def test_concurrent_creates_of_one_app_yield_one_configuration(platform: Platform) -> None:
    tenants = [await platform.tenant(f"Org {i}") for i in range(6)]
    responses = await asyncio.gather(
        *(t.http.post(BASE, json=platform.config_body(ari_endpoint_url="http://race:8088")) for t in tenants)
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [409] * 5, [r.text for r in responses]


async def test_changes_reach_the_telephony_manager(platform_tel: Platform, fake_telephony: FakeTelephony) -> None:
    t = await platform_tel.tenant()
    cid = ok(await t.http.post(BASE, json=platform_tel.config_body()), 201)["id"]
    ok(await t.http.patch(f"{BASE}/{cid}", json={"name": "Renamed"}))
    status = ok(await t.http.get(f"{BASE}/{cid}/status"))
    assert status["ari"]["state"] == "connected"
    assert (await t.http.delete(f"{BASE}/{cid}")).status_code == 204
    assert fake_telephony.events == [("changed", cid), ("changed", cid), ("deleted", cid)]

    # A manager that fails to apply a change does not undo the committed change.
    fake_telephony.fail_notifications = True
    created = ok(await t.http.post(BASE, json=platform_tel.config_body()), 201)
    assert ok(await t.http.get(f"{BASE}/{created['id']}"))["id"] == created["id"]
    # Refused changes are not announced.
    fake_telephony.events.clear()
    assert (await t.http.post(BASE, json=platform_tel.config_body(stasis_app_name=" x"))).status_code == 422
    assert fake_telephony.events == []


async def test_status_without_telephony(platform: Platform) -> None:
    t = await platform.tenant()
    cid = await platform.configuration(t)
    assert ok(await t.http.get(f"{BASE}/{cid}/status")) == {
        "ari": {"state": "stopped", "since": None, "last_error": "telephony is not running in this process"}
    }
