"""Regressions from fuzzing the API (tests/fuzz/test_api_schema_fuzz.py): input the databases cannot
take used to be 500s. On both backends: PostgreSQL cannot even compare text containing NUL, and
neither can store an unpaired surrogate (which JSON's ``\\ud800`` escape produces)."""

from __future__ import annotations

import json

import pytest

from tests.api.routes import DUMMY_IDS, ROUTES
from tests.fixtures_platform import Platform, ok, workflow_definition

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_nul_in_ids_and_names_is_not_found(platform: Platform) -> None:
    t = await platform.tenant()
    wid = await platform.workflow(t)
    cid = await platform.configuration(t)
    nid = ok(await t.http.post(f"/api/v1/telephony-configurations/{cid}/phone-numbers", json={"address": "8000"}), 201)[
        "id"
    ]
    real = {"workflow_id": wid, "config_id": cid, "number_id": nid}
    for method, path in ROUTES:
        if "{" not in path:
            continue
        for name in DUMMY_IDS:
            if "{" + name + "}" not in path:
                continue
            # The other ids real, so the lookup of the one with a NUL is reached.
            ids = {**real, **{k: v for k, v in DUMMY_IDS.items() if k not in real}, name: "x%00y"}
            # A valid body, so only the id can be what is wrong.
            body: dict[str, str] = {}
            if path.endswith("/calls"):
                body = {"telephony_configuration_id": cid, "to": "6001"}
            elif path.endswith("/phone-numbers") and method == "POST":
                body = {"address": "8001"}
            r = await t.http.request(method, path.format(**ids), json=body if method in ("POST", "PATCH") else None)
            assert r.status_code == 404, f"{method} {path} ({name}): {r.status_code} {r.text}"
    r = await t.http.get("/api/v1/workflow-runs", params={"workflow_id": "x\x00y"})
    assert ok(r)["items"] == []


@pytest.mark.parametrize("bad", ["x\x00y", "x\ud800y"], ids=["nul", "surrogate"])
async def test_unstorable_text_in_bodies_is_422(platform: Platform, bad: str) -> None:
    t = await platform.tenant()
    wid = await platform.workflow(t)
    cid = await platform.configuration(t)
    definition = workflow_definition()
    definition["nodes"][0]["greeting"] = f"Hello {bad}"
    cases = [
        ("POST", "/api/v1/workflows", {"name": bad, "definition": workflow_definition()}, ["body", "name"]),
        ("PATCH", f"/api/v1/workflows/{wid}", {"definition": definition}, ["body", "definition"]),
        ("POST", "/api/v1/telephony-configurations", platform.config_body(name=bad), ["body", "name"]),
        ("PATCH", f"/api/v1/telephony-configurations/{cid}", {"dial_template": "PJSIP/{to}" + bad}, None),
        (
            "POST",
            f"/api/v1/telephony-configurations/{cid}/phone-numbers",
            {"address": "8000", "inbound_workflow_id": bad},
            None,
        ),
        ("POST", f"/api/v1/workflows/{wid}/calls", {"telephony_configuration_id": bad, "to": "6001"}, None),
        ("POST", "/api/v1/secrets", {"name": "LLM_KEY", "value": f"sk-{bad}"}, ["body", "value"]),
    ]
    for method, path, body, loc in cases:
        # json.dumps writes an unpaired surrogate as the escape a client would send; httpx's own
        # encoder would refuse it.
        r = await t.http.request(
            method, path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 422, f"{method} {path}: {r.status_code} {r.text}"
        err = r.json()["detail"][0]
        assert loc is None or err["loc"] == loc, err
        assert "NUL" in err["msg"] or "surrogate" in err["msg"], err
    # Nothing was stored on the way.
    assert len(ok(await t.http.get("/api/v1/workflows"))["items"]) == 1
    assert ok(await t.http.get("/api/v1/secrets"))["items"] == []


async def test_offset_past_64_bits_is_422(platform: Platform) -> None:
    t = await platform.tenant()
    assert ok(await t.http.get("/api/v1/workflow-runs", params={"offset": 2**63 - 1}))["items"] == []
    for offset in (2**63, 10**30):
        r = await t.http.get("/api/v1/workflow-runs", params={"offset": offset})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "offset"], r.text
