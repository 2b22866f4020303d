"""Workflows: CRUD, validation through the workflow engine's checker, and 422 messages."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from tests.fixtures_platform import Platform, ok, workflow_definition

# The app is served once per backend for the session (see tests/fixtures_platform.py).
pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_workflow_crud(platform: Platform) -> None:
    t = await platform.tenant()
    definition = workflow_definition()
    created = ok(await t.http.post("/api/v1/workflows", json={"name": "Receptionist", "definition": definition}), 201)
    assert created["name"] == "Receptionist"
    assert created["definition"] == definition  # stored as sent, defaults not expanded
    assert isinstance(created["warnings"], list)
    assert created["created_at"].endswith("Z") or "+00:00" in created["created_at"]
    wid = created["id"]

    assert ok(await t.http.get(f"/api/v1/workflows/{wid}")) == created
    # The leak check run after every test does see response bodies.
    platform.never_returned.add("Receptionist")
    assert platform.leaked()
    platform.never_returned.discard("Receptionist")
    second = ok(await t.http.post("/api/v1/workflows", json={"name": "Second", "definition": definition}), 201)
    listed = ok(await t.http.get("/api/v1/workflows"))
    assert [w["id"] for w in listed["items"]] == [wid, second["id"]]

    renamed = ok(await t.http.patch(f"/api/v1/workflows/{wid}", json={"name": "  Front desk  "}))
    assert renamed["name"] == "Front desk"
    assert renamed["definition"] == definition

    changed = {**definition, "variables": {"company": "Acme"}}
    patched = ok(await t.http.patch(f"/api/v1/workflows/{wid}", json={"definition": changed}))
    assert patched["definition"]["variables"] == {"company": "Acme"}
    assert patched["name"] == "Front desk"

    # A definition with an unreachable node is accepted, with a warning naming it.
    parked = workflow_definition()
    parked["nodes"].append({"id": "draft", "type": "end", "say": "Not wired up yet."})
    warned = ok(await t.http.patch(f"/api/v1/workflows/{wid}", json={"definition": parked}))
    assert any("draft" in w["msg"] for w in warned["warnings"]), warned["warnings"]

    assert (await t.http.delete(f"/api/v1/workflows/{wid}")).status_code == 204
    gone = await t.http.get(f"/api/v1/workflows/{wid}")
    assert gone.status_code == 404 and gone.json()["message"] == "workflow not found"
    assert (await t.http.delete(f"/api/v1/workflows/{wid}")).status_code == 404
    assert [w["id"] for w in ok(await t.http.get("/api/v1/workflows"))["items"]] == [second["id"]]


def _broken_edge() -> dict[str, Any]:
    d = workflow_definition()
    d["nodes"].append({"id": "menu", "type": "agent", "say": "Which one?"})
    d["edges"] = [{"id": "e1", "from": "hello", "to": "menu"}, {"id": "e2", "from": "menu", "to": "nowhere"}]
    return d


async def test_invalid_workflows_get_422_naming_the_field(platform: Platform) -> None:
    t = await platform.tenant()
    cases: list[tuple[Any, list[Any], str]] = [
        # (body, expected loc, expected text in msg)
        ({"definition": workflow_definition()}, ["body", "name"], "field required"),
        ({"name": "   ", "definition": workflow_definition()}, ["body", "name"], "must not be empty"),
        ({"name": "x" * 201, "definition": workflow_definition()}, ["body", "name"], "at most 200"),
        ({"name": "A"}, ["body", "definition"], "field required"),
        ({"name": "A", "definition": ["not", "an", "object"]}, ["body", "definition"], "JSON object"),
        ({"name": "A", "definition": _broken_edge()}, ["body", "definition", "edges", 1, "to"], "nowhere"),
        ({"name": "A", "definition": {"edges": []}}, ["body", "definition", "nodes"], "start node"),
        ({"name": "A", "definition": workflow_definition(), "owner": "me"}, ["body", "owner"], "unknown field"),
    ]
    for body, loc, text in cases:
        r = await t.http.post("/api/v1/workflows", json=body)
        assert r.status_code == 422, (body, r.text)
        err = r.json()
        assert any(d["loc"] == loc and text in d["msg"] for d in err["detail"]), (loc, err)
        assert ".".join(str(p) for p in loc[1:2]) in err["message"], err["message"]
        assert all("input" not in d for d in err["detail"])

    # The nested location is spelled out in the top-level message as well.
    r = await t.http.post("/api/v1/workflows", json={"name": "A", "definition": _broken_edge()})
    assert "definition.edges[1].to" in r.json()["message"]

    # A key pasted into the definition is refused, and its value never comes back.
    leaky = workflow_definition()
    key = platform.secret("sk-" + "a1" * 20)
    leaky["settings"] = {
        "llm": {"provider": "openai_compatible", "base_url": "http://x/v1", "model": "m", "api_key": key}
    }
    r = await t.http.post("/api/v1/workflows", json={"name": "A", "definition": leaky})
    assert r.status_code == 422
    assert any(d["loc"][:4] == ["body", "definition", "settings", "llm"] for d in r.json()["detail"]), r.text

    wid = await platform.workflow(t)
    for body, loc, text in [
        ({"name": None}, ["body", "name"], "must not be null"),
        ({"definition": None}, ["body", "definition"], "must not be null"),
        ({"definition": _broken_edge()}, ["body", "definition", "edges", 1, "to"], "nowhere"),
        ({"id": "other"}, ["body", "id"], "unknown field"),
    ]:
        r = await t.http.patch(f"/api/v1/workflows/{wid}", json=body)
        assert r.status_code == 422, (body, r.text)
        assert any(d["loc"] == loc and text in d["msg"] for d in r.json()["detail"]), (loc, r.text)
    # Nothing was changed by the refused updates.
    assert ok(await t.http.get(f"/api/v1/workflows/{wid}"))["definition"] == workflow_definition()

    r = await t.http.post("/api/v1/workflows", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert "not valid JSON" in r.json()["message"]
    r = await t.http.post("/api/v1/workflows")
    assert r.status_code == 422 and "body" in r.json()["message"]


async def test_deleting_a_workflow_unassigns_its_extensions(platform: Platform) -> None:
    t = await platform.tenant()
    wid = await platform.workflow(t)
    cid = await platform.configuration(t)
    number = ok(
        await t.http.post(
            f"/api/v1/telephony-configurations/{cid}/phone-numbers",
            json={"address": "8000", "inbound_workflow_id": wid},
        ),
        201,
    )
    assert (await t.http.delete(f"/api/v1/workflows/{wid}")).status_code == 204
    after = ok(await t.http.get(f"/api/v1/telephony-configurations/{cid}/phone-numbers/{number['id']}"))
    assert after["inbound_workflow_id"] is None


def pcm_files(d: Any) -> list[Any]:
    return list(d.glob("*.pcm"))


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite (Debian package) not installed")
async def test_saving_a_workflow_synthesises_its_greeting_before_any_call(platform: Platform, tmp_path: Any) -> None:
    """The first call after a save must play its greeting from the cache (setup target 150 ms):
    create and edit queue the workflow's static texts for background synthesis, real flite here.
    Texts that depend on the call (caller number) cannot be made ahead and are left out."""
    from vr3ai.agent.factory import RuntimeConfig, VoiceRuntime
    from vr3ai.agent.services.cache import cache_key

    runtime = VoiceRuntime(RuntimeConfig(tts_engine="flite", cache_dir=tmp_path / "tts"))
    platform.services.voice = runtime
    try:
        t = await platform.tenant()
        definition = workflow_definition()
        definition["nodes"][0]["greeting"] = "Welcome to Acme, how can I help?"
        wid = ok(await t.http.post("/api/v1/workflows", json={"name": "W", "definition": definition}), 201)["id"]
        assert await runtime.warmed_up(30)
        tts = runtime.local_tts()
        pcm = runtime.cache.get(cache_key(tts, "Welcome to Acme, how can I help?"))
        assert pcm is not None and len(pcm) > tts.sample_rate  # over half a second of real speech
        assert pcm_files(tmp_path / "tts")  # on disk: a restart does not synthesise again

        definition["nodes"][0]["greeting"] = "Hi {{caller_number}}, this is Acme."
        definition["nodes"][-1]["say"] = "Thanks for calling Acme, bye."
        ok(await t.http.patch(f"/api/v1/workflows/{wid}", json={"definition": definition}))
        assert await runtime.warmed_up(30)
        assert runtime.cache.has(cache_key(tts, "Thanks for calling Acme, bye."))
        assert not any("{{" in k[3] or k[3].startswith("Hi ") for k in runtime.cache._mem)
        assert runtime.warm_failed == 0
    finally:
        platform.services.voice = None
        await runtime.close()


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite (Debian package) not installed")
async def test_start_up_synthesises_saved_workflows_greetings_first(platform: Platform, tmp_path: Any) -> None:
    from vr3ai.agent.factory import RuntimeConfig, VoiceRuntime
    from vr3ai.agent.services.cache import cache_key
    from vr3ai.app import prewarm_saved_workflows

    t = await platform.tenant()
    greetings = ["Welcome to the first line.", "Welcome to the second line."]
    for i, greeting in enumerate(greetings):
        definition = workflow_definition()
        definition["nodes"][0]["greeting"] = greeting
        definition["nodes"][-1]["say"] = f"Goodbye from line {i + 1}."
        ok(await t.http.post("/api/v1/workflows", json={"name": f"W{i}", "definition": definition}), 201)
    runtime = VoiceRuntime(RuntimeConfig(tts_engine="flite", cache_dir=tmp_path / "tts"))
    platform.services.voice = runtime
    try:
        # 2 greetings, 2 end texts, and the idle goodbye both workflows share (queued once).
        assert await prewarm_saved_workflows(platform.services) == 5
        queued = [text for _key, _tts, text in runtime._warm_queue]
        assert sorted(queued[:2]) == sorted(greetings)  # every greeting before any other text
        assert await runtime.warmed_up(30)
        tts = runtime.local_tts()
        assert all(runtime.cache.has(cache_key(tts, text)) for text in queued)
        assert await prewarm_saved_workflows(platform.services) == 0  # cached: nothing to do
    finally:
        platform.services.voice = None
        await runtime.close()


async def test_edges_without_ids_are_accepted_and_stored_as_written(platform: Platform) -> None:
    """The original edge format (from/to/condition/keywords/dtmf, no id) is accepted; the stored
    definition is what was sent, and a given id stays."""
    t = await platform.tenant()
    definition = workflow_definition()
    definition["nodes"].append({"id": "op", "type": "end", "say": "Connecting you."})
    definition["nodes"][0] = {**definition["nodes"][0], "id": "hello"}
    definition["nodes"].insert(1, {"id": "menu", "type": "agent", "say": "Press 1 or say operator."})
    definition["edges"] = [
        {"from": "hello", "to": "menu"},
        {"from": "menu", "to": "bye", "condition": "The caller is done", "keywords": ["bye"], "dtmf": "1"},
        {"id": "to-op", "from": "menu", "to": "op", "keywords": ["operator"], "dtmf": "0"},
    ]
    body = {"name": "Original format", "definition": definition}
    created = ok(await t.http.post("/api/v1/workflows", json=body), 201)
    assert created["definition"]["edges"] == definition["edges"]
    fetched = ok(await t.http.get(f"/api/v1/workflows/{created['id']}"))
    assert fetched["definition"]["edges"][2]["id"] == "to-op"
