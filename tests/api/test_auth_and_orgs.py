"""Authentication on every route, the organization endpoint, and the OpenAPI document."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from tests.api.routes import DUMMY_IDS, ROUTES
from tests.fixtures_platform import Platform, ok
from vr3ai.db.models import ApiKey

# The app is served once per backend for the session (see tests/fixtures_platform.py).
pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_every_route_answers_401_without_a_valid_key(platform: Platform) -> None:
    t = await platform.tenant("Acme")
    async with platform.services.db.session() as s, s.begin():
        await s.execute(update(ApiKey).values(revoked_at=datetime.now(UTC)).where(ApiKey.organization_id == t.org_id))
    clients = {
        "no header": platform.client(None),
        "bad key": platform.client("vr3_not-a-real-key"),
        "revoked key": platform.client(t.key),
    }
    for label, header in (("empty key", "Bearer"), ("basic auth", "Basic dXNlcjpwYXNz")):
        odd = platform.client(None)
        odd.headers["Authorization"] = header
        r = await odd.get("/api/v1/workflows")
        assert r.status_code == 401, (label, r.text)
    for method, template in ROUTES:
        path = template.format(**DUMMY_IDS)
        for label, client in clients.items():
            # A valid body: authentication must be decided before (and regardless of) the body.
            r = await client.request(method, path, json={"name": "x"} if method in ("POST", "PATCH") else None)
            assert r.status_code == 401, f"{method} {path} with {label}: {r.status_code} {r.text}"
            body = r.json()
            assert "API key" in body["message"], body
            assert r.headers.get("www-authenticate") == "Bearer"


async def test_organization_me_reports_quota(platform: Platform) -> None:
    t = await platform.tenant("Acme Dental", max_concurrent_calls=3, minutes_per_month=100)
    body = ok(await t.http.get("/api/v1/organizations/me"))
    assert body == {
        "id": t.org_id,
        "name": "Acme Dental",
        "quota": {
            "max_concurrent_calls": 3,
            "active_calls": 0,
            "minutes_per_month": 100,
            "minutes_used": 0,
            "seconds_used": 0,
        },
        "limits": {
            "max_telephony_configurations": 10,
            "max_workflows": 100,
            "max_phone_numbers": 200,
            "max_secrets": 50,
            "max_definition_bytes": 262144,
            "max_recording_mb": 2048,
            "recording_mb_used": 0,
        },
    }
    run = await platform.services.runs.create(
        organization_id=t.org_id, workflow_id=None, telephony_configuration_id=None, direction="inbound", context={}
    )
    assert ok(await t.http.get("/api/v1/organizations/me"))["quota"]["active_calls"] == 1
    async with platform.services.db.session() as s, s.begin():
        assert await platform.services.quota.release(s, run.id, 90)
    quota = ok(await t.http.get("/api/v1/organizations/me"))["quota"]
    assert quota["active_calls"] == 0
    assert quota["seconds_used"] == 90
    assert quota["minutes_used"] == 1.5

    unlimited = await platform.tenant("No limits", minutes_per_month=None)
    assert ok(await unlimited.http.get("/api/v1/organizations/me"))["quota"]["minutes_per_month"] is None


async def test_openapi_lists_every_route(platform: Platform) -> None:
    anonymous = platform.client(None)
    spec = ok(await anonymous.get("/openapi.json"))
    # Every operation that takes an API key must be in ROUTES, so the 401 and 404 sweeps cover it.
    authenticated = {(m.upper(), p) for p, ops in spec["paths"].items() for m, op in ops.items() if op.get("security")}
    assert authenticated == set(ROUTES)
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    docs = await anonymous.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
