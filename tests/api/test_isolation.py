"""Organizations never see each other's objects: every route answers 404 (never 403, never data)
for an object of another organization, and the object is left untouched."""

from __future__ import annotations

import pytest

from tests.api.routes import ROUTES
from tests.fixtures_platform import FakeTelephony, Platform, ok, workflow_definition

# The app is served once per backend for the session (see tests/fixtures_platform.py).
pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_every_route_answers_404_for_another_organizations_objects(
    platform_tel: Platform, fake_telephony: FakeTelephony
) -> None:
    p = platform_tel
    a = await p.tenant("Owner")
    b = await p.tenant("Intruder")

    wid = await p.workflow(a)
    cid = await p.configuration(a)
    number = ok(
        await a.http.post(
            f"/api/v1/telephony-configurations/{cid}/phone-numbers",
            json={"address": "8000", "inbound_workflow_id": wid},
        ),
        201,
    )
    run = await p.services.runs.create(
        organization_id=a.org_id, workflow_id=wid, telephony_configuration_id=cid, direction="inbound", context={}
    )
    ok(await a.http.post("/api/v1/secrets", json={"name": "OWNER_KEY", "value": p.secret("owner-secret-value")}), 201)
    # B's own configuration, to try A's number through a configuration B does own.
    b_cid = await p.configuration(b)
    b_wid = await p.workflow(b)

    ids = {"workflow_id": wid, "config_id": cid, "number_id": number["id"], "run_id": run.id, "name": "OWNER_KEY"}
    bodies = {
        ("PATCH", "/api/v1/workflows/{workflow_id}"): {"name": "stolen"},
        ("POST", "/api/v1/workflows/{workflow_id}/calls"): {"telephony_configuration_id": b_cid, "to": "6001"},
        ("PATCH", "/api/v1/telephony-configurations/{config_id}"): {"name": "stolen"},
        ("POST", "/api/v1/telephony-configurations/{config_id}/phone-numbers"): {"address": "9000"},
        ("PATCH", "/api/v1/telephony-configurations/{config_id}/phone-numbers/{number_id}"): {"address": "9000"},
    }
    owned_routes = [(m, t) for m, t in ROUTES if "{" in t]
    assert len(owned_routes) == 17
    attempts = [(m, t.format(**ids), bodies.get((m, t))) for m, t in owned_routes]
    # Another organization's objects referenced from one's own URL or body.
    attempts += [
        ("GET", f"/api/v1/telephony-configurations/{b_cid}/phone-numbers/{number['id']}", None),
        ("PATCH", f"/api/v1/telephony-configurations/{b_cid}/phone-numbers/{number['id']}", {"address": "9000"}),
        ("DELETE", f"/api/v1/telephony-configurations/{b_cid}/phone-numbers/{number['id']}", None),
        ("POST", f"/api/v1/workflows/{b_wid}/calls", {"telephony_configuration_id": cid, "to": "6001"}),
    ]
    for method, path, body in attempts:
        r = await b.http.request(method, path, json=body)
        assert r.status_code == 404, f"{method} {path}: {r.status_code} {r.text}"
        text = r.text
        for private in (wid, cid, number["id"], run.id, a.org_id, "Office PBX", "Receptionist", "8000"):
            assert private not in text, f"{method} {path} leaked {private!r}: {text}"

    # B's lists are empty of A's objects.
    assert [w["id"] for w in ok(await b.http.get("/api/v1/workflows"))["items"]] == [b_wid]
    assert [c["id"] for c in ok(await b.http.get("/api/v1/telephony-configurations"))["items"]] == [b_cid]
    assert ok(await b.http.get("/api/v1/workflow-runs"))["items"] == []
    assert ok(await b.http.get("/api/v1/secrets"))["items"] == []
    assert ok(await b.http.get("/api/v1/organizations/me"))["id"] == b.org_id

    # Nothing of A's changed, and the telephony layer heard nothing about A's configuration from B.
    assert ok(await a.http.get(f"/api/v1/workflows/{wid}"))["definition"] == workflow_definition()
    assert ok(await a.http.get(f"/api/v1/telephony-configurations/{cid}"))["name"] == "Office PBX"
    assert ok(await a.http.get(f"/api/v1/telephony-configurations/{cid}/phone-numbers/{number['id']}")) == number
    assert ok(await a.http.get(f"/api/v1/workflow-runs/{run.id}"))["id"] == run.id
    assert [s["name"] for s in ok(await a.http.get("/api/v1/secrets"))["items"]] == ["OWNER_KEY"]
    assert fake_telephony.calls == []
    assert ("deleted", cid) not in fake_telephony.events
    assert fake_telephony.events.count(("changed", cid)) == 1  # A's own create
