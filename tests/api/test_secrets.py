"""Organization secrets: write-only values, names listed, encrypted at rest."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.fixtures_platform import Platform, ok
from vr3ai.db.models import OrganizationSecret

# The app is served once per backend for the session (see tests/fixtures_platform.py).
pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_secret_lifecycle(platform: Platform) -> None:
    t = await platform.tenant()
    value = platform.secret("sk-test-" + "x1" * 20)
    created = ok(await t.http.post("/api/v1/secrets", json={"name": "OPENAI_API_KEY", "value": value}), 201)
    assert set(created) == {"name", "allowed_hosts", "created_at"} and created["name"] == "OPENAI_API_KEY"

    replacement = platform.secret("sk-test-" + "y2" * 20)
    replaced = ok(await t.http.post("/api/v1/secrets", json={"name": "OPENAI_API_KEY", "value": replacement}), 200)
    assert replaced["name"] == "OPENAI_API_KEY"
    ok(await t.http.post("/api/v1/secrets", json={"name": "deepgram.key", "value": platform.secret("dg-value-1")}), 201)

    listed = ok(await t.http.get("/api/v1/secrets"))
    assert [s["name"] for s in listed["items"]] == ["OPENAI_API_KEY", "deepgram.key"]
    assert all(set(s) == {"name", "allowed_hosts", "created_at"} for s in listed["items"])

    async with platform.services.db.session() as s:
        row = await s.scalar(select(OrganizationSecret).where(OrganizationSecret.name == "OPENAI_API_KEY"))
    assert row is not None and replacement not in row.value_enc
    assert platform.services.box.decrypt(row.value_enc) == replacement

    assert (await t.http.delete("/api/v1/secrets/OPENAI_API_KEY")).status_code == 204
    r = await t.http.delete("/api/v1/secrets/OPENAI_API_KEY")
    assert r.status_code == 404 and r.json()["message"] == "secret not found"
    assert [s["name"] for s in ok(await t.http.get("/api/v1/secrets"))["items"]] == ["deepgram.key"]


async def test_invalid_secrets_get_422_naming_the_field(platform: Platform) -> None:
    t = await platform.tenant()
    for body, loc, text in [
        ({"name": "my key", "value": "v" * 10}, ["body", "name"], "letters, digits"),
        ({"name": "", "value": "v" * 10}, ["body", "name"], "must not be empty"),
        ({"name": "K", "value": ""}, ["body", "value"], "must not be empty"),
        ({"name": "K", "value": platform.secret("pasted-with-newline\n")}, ["body", "value"], "extra spaces"),
        ({"name": "K"}, ["body", "value"], "field required"),
        ({"name": "K", "value": 12345}, ["body", "value"], "must be a string"),
    ]:
        r = await t.http.post("/api/v1/secrets", json=body)
        assert r.status_code == 422, (body, r.text)
        assert any(d["loc"] == loc and text in d["msg"] for d in r.json()["detail"]), (body, r.text)
    assert ok(await t.http.get("/api/v1/secrets"))["items"] == []
