"""Per-tenant limits: a tenant cannot store more than its organization's limits allow (item 5 of
issue 12). Over a limit the API answers a 4xx that names the limit, and nothing is lost: what was
stored stays, and parallel requests cannot slip past the count. On both storage backends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, select, update

from tests.fixtures_platform import Platform, Tenant, ok, workflow_definition
from vr3ai.db.models import Organization, OrganizationSecret, PhoneNumber, TelephonyConfiguration, Workflow

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def set_limits(platform: Platform, tenant: Tenant, **values: int) -> None:
    async with platform.services.db.session() as s, s.begin():
        await s.execute(update(Organization).where(Organization.id == tenant.org_id).values(**values))


async def count(platform: Platform, model: Any, org_id: str) -> int:
    async with platform.services.db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(model).where(model.organization_id == org_id)) or 0)


def refused(response: Any, limit: str, status: int = 403) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert limit in body["message"], body


async def test_count_limits_refuse_the_next_one_and_lose_nothing(platform: Platform) -> None:
    t = await platform.tenant()
    other = await platform.tenant("Other")
    await set_limits(
        platform, t, max_workflows=2, max_telephony_configurations=1, max_phone_numbers=2, max_secrets=2
    )
    # Workflows
    ids = [await platform.workflow(t, f"wf{i}") for i in range(2)]
    r = await t.http.post("/api/v1/workflows", json={"name": "third", "definition": workflow_definition()})
    refused(r, "max_workflows")
    assert sorted(w["id"] for w in ok(await t.http.get("/api/v1/workflows"))["items"]) == sorted(ids)
    # Telephony configurations
    cfg = await platform.configuration(t)
    r = await t.http.post("/api/v1/telephony-configurations", json=platform.config_body())
    refused(r, "max_telephony_configurations")
    assert [c["id"] for c in ok(await t.http.get("/api/v1/telephony-configurations"))["items"]] == [cfg]
    # Phone numbers
    numbers = f"/api/v1/telephony-configurations/{cfg}/phone-numbers"
    for addr in ("8000", "8001"):
        ok(await t.http.post(numbers, json={"address": addr}), 201)
    refused(await t.http.post(numbers, json={"address": "8002"}), "max_phone_numbers")
    assert [n["address"] for n in ok(await t.http.get(numbers))["items"]] == ["8000", "8001"]
    # Secrets: a new name is refused, replacing an existing one is not a new secret.
    for name in ("A", "B"):
        ok(await t.http.post("/api/v1/secrets", json={"name": name, "value": platform.secret(f"value-{name}-1")}), 201)
    refused(await t.http.post("/api/v1/secrets", json={"name": "C", "value": platform.secret("value-C-1")}),
            "max_secrets")
    ok(await t.http.post("/api/v1/secrets", json={"name": "A", "value": platform.secret("value-A-2")}), 200)
    assert [s["name"] for s in ok(await t.http.get("/api/v1/secrets"))["items"]] == ["A", "B"]

    # Deleting one makes room again.
    assert (await t.http.delete(f"/api/v1/workflows/{ids[0]}")).status_code == 204
    await platform.workflow(t, "replacement")
    # Limits are per organization: the other tenant is not affected by this one's.
    for i in range(3):
        await platform.workflow(other, f"other{i}")

    me = ok(await t.http.get("/api/v1/organizations/me"))
    assert me["limits"]["max_workflows"] == 2 and me["limits"]["max_secrets"] == 2


async def test_parallel_creates_cannot_pass_a_limit(platform: Platform) -> None:
    t = await platform.tenant()
    await set_limits(platform, t, max_workflows=3, max_secrets=3, max_telephony_configurations=2)
    wf = [t.http.post("/api/v1/workflows", json={"name": f"w{i}", "definition": workflow_definition()})
          for i in range(12)]
    sec = [t.http.post("/api/v1/secrets", json={"name": f"S{i}", "value": platform.secret(f"parallel-{i}-v")})
           for i in range(12)]
    cfg = [t.http.post("/api/v1/telephony-configurations", json=platform.config_body(name=f"pbx{i}"))
           for i in range(8)]
    responses = await asyncio.gather(*wf, *sec, *cfg)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 3 + 3 + 2, statuses
    assert set(statuses) == {201, 403}, statuses
    assert await count(platform, Workflow, t.org_id) == 3
    assert await count(platform, OrganizationSecret, t.org_id) == 3
    assert await count(platform, TelephonyConfiguration, t.org_id) == 2
    assert await count(platform, PhoneNumber, t.org_id) == 0


async def test_definition_size_limit(platform: Platform) -> None:
    t = await platform.tenant()
    await set_limits(platform, t, max_definition_bytes=4000)
    big = workflow_definition()
    big["nodes"][0]["greeting"] = "Hello there. " * 400  # ~5 kB
    r = await t.http.post("/api/v1/workflows", json={"name": "big", "definition": big})
    refused(r, "max_definition_bytes", 413)
    assert await count(platform, Workflow, t.org_id) == 0

    wf = await platform.workflow(t)
    r = await t.http.patch(f"/api/v1/workflows/{wf}", json={"definition": big})
    refused(r, "max_definition_bytes", 413)
    stored = ok(await t.http.get(f"/api/v1/workflows/{wf}"))["definition"]
    assert stored == workflow_definition()  # the PATCH changed nothing
