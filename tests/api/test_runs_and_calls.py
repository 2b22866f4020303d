"""Workflow runs (history, transcript, recording) and placing outbound calls."""

from __future__ import annotations

import uuid
import wave
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import update

from tests.fixtures_platform import FakeTelephony, Platform, ok
from vr3ai.core.runs import RunOutcome
from vr3ai.db.models import WorkflowRun

# The app is served once per backend for the session (see tests/fixtures_platform.py).
pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_runs_list_and_detail(platform: Platform, tmp_path: Path) -> None:
    t = await platform.tenant(max_concurrent_calls=10)
    w1 = await platform.workflow(t, "One")
    w2 = await platform.workflow(t, "Two")
    cid = await platform.configuration(t)
    runs = platform.services.runs
    ids = []
    for i, wid in enumerate((w1, w1, w2)):
        run = await runs.create(
            organization_id=t.org_id,
            workflow_id=wid,
            telephony_configuration_id=cid,
            direction="inbound",
            context={"caller_number": f"600{i}", "called_number": "8000", "provider": "ari"},
            call_id=f"chan-{i}",
        )
        ids.append(run.id)
    await runs.mark_running(ids[0])
    transcript = [
        {"role": "assistant", "text": "Hello, you reached the test line.", "start_ms": 0, "end_ms": 1800},
        {"role": "user", "text": "bye", "start_ms": 2500, "end_ms": 2900},
    ]
    recording = tmp_path / "rec.wav"
    with wave.open(str(recording), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 800)
    assert await runs.finish(
        ids[0],
        RunOutcome(
            status="completed",
            end_reason="caller hung up",
            transcript=transcript,
            metrics=[{"name": "ttfb_ms", "value": 420}],
            variables={"time": "10:00"},
            events=[{"level": "info", "message": "end node reached", "at_ms": 3000}],
            recording_path=str(recording),
        ),
    )
    await runs.finish(ids[1], RunOutcome(status="no_answer", end_reason="no answer"))
    # Distinct creation times, so "newest first" is well defined on both backends.
    async with platform.services.db.session() as s, s.begin():
        for i, rid in enumerate(ids):
            await s.execute(
                update(WorkflowRun)
                .where(WorkflowRun.id == rid)
                .values(created_at=datetime(2026, 1, i + 1, 12, tzinfo=UTC))
            )

    listed = ok(await t.http.get("/api/v1/workflow-runs"))
    assert [r["id"] for r in listed["items"]] == ids[::-1]
    assert listed["items"][0]["status"] == "initialized"
    assert ok(await t.http.get("/api/v1/workflow-runs", params={"workflow_id": w1}))["items"][0]["id"] == ids[1]
    done = ok(await t.http.get("/api/v1/workflow-runs", params={"status": "completed"}))["items"]
    assert [r["id"] for r in done] == [ids[0]]
    page = ok(await t.http.get("/api/v1/workflow-runs", params={"limit": 1, "offset": 1}))
    assert [r["id"] for r in page["items"]] == [ids[1]] and (page["limit"], page["offset"]) == (1, 1)

    detail = ok(await t.http.get(f"/api/v1/workflow-runs/{ids[0]}"))
    assert detail["id"] == ids[0]
    assert detail["workflow_id"] == w1 and detail["telephony_configuration_id"] == cid
    assert (detail["direction"], detail["status"], detail["end_reason"]) == ("inbound", "completed", "caller hung up")
    assert detail["context"]["caller_number"] == "6000"
    assert detail["transcript"] == transcript
    assert detail["metrics"] == [{"name": "ttfb_ms", "value": 420}]
    assert detail["variables"] == {"time": "10:00"}
    assert detail["events"][-1]["message"] == "end node reached"
    assert detail["has_recording"] is True
    assert detail["started_at"] and detail["ended_at"]
    assert isinstance(detail["billed_seconds"], int)

    audio = await t.http.get(f"/api/v1/workflow-runs/{ids[0]}/recording")
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    assert audio.content == recording.read_bytes()

    no_rec = ok(await t.http.get(f"/api/v1/workflow-runs/{ids[1]}"))
    assert no_rec["has_recording"] is False and no_rec["transcript"] == []
    r = await t.http.get(f"/api/v1/workflow-runs/{ids[1]}/recording")
    assert r.status_code == 404 and r.json()["message"] == "this run has no recording"
    recording.unlink()  # a recording file that went missing is a 404, not a 500
    assert (await t.http.get(f"/api/v1/workflow-runs/{ids[0]}/recording")).status_code == 404
    assert ok(await t.http.get(f"/api/v1/workflow-runs/{ids[0]}"))["has_recording"] is False

    for params, field in [({"status": "done"}, "status"), ({"limit": 0}, "limit"), ({"offset": -1}, "offset")]:
        r = await t.http.get("/api/v1/workflow-runs", params=params)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", field], r.text
        assert field in r.json()["message"]


async def test_place_call(platform_tel: Platform, fake_telephony: FakeTelephony) -> None:
    from vr3ai.telephony.manager import CallRefused

    t = await platform_tel.tenant()
    wid = await platform_tel.workflow(t)
    cid = await platform_tel.configuration(t)
    accepted = ok(
        await t.http.post(f"/api/v1/workflows/{wid}/calls", json={"telephony_configuration_id": cid, "to": "6001"}), 202
    )
    assert uuid.UUID(accepted["run_id"])
    assert fake_telephony.calls == [{"organization_id": t.org_id, "workflow_id": wid, "config_id": cid, "to": "6001"}]

    fake_telephony.refuse = CallRefused("concurrent call limit reached (1 of 1 in use)", 429)
    r = await t.http.post(f"/api/v1/workflows/{wid}/calls", json={"telephony_configuration_id": cid, "to": "6001"})
    assert r.status_code == 429 and r.json()["message"] == "concurrent call limit reached (1 of 1 in use)"

    for body, loc in [
        ({"telephony_configuration_id": cid, "to": "6001&PJSIP/7000"}, ["body", "to"]),
        ({"telephony_configuration_id": cid, "to": ""}, ["body", "to"]),
        ({"telephony_configuration_id": cid, "to": "6001 "}, ["body", "to"]),
        ({"to": "6001"}, ["body", "telephony_configuration_id"]),
    ]:
        r = await t.http.post(f"/api/v1/workflows/{wid}/calls", json=body)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc, r.text
    assert len(fake_telephony.calls) == 1


async def test_place_call_with_a_dial_string_and_a_from_extension(
    platform_tel: Platform, fake_telephony: FakeTelephony
) -> None:
    """Issue 14 items 1-2: 'to' may be a full dial string of a known channel technology (what the
    dashboard offers), 'from' one of the configuration's From Extensions; anything else is a 422."""
    t = await platform_tel.tenant()
    wid = await platform_tel.workflow(t)
    cid = await platform_tel.configuration(t, from_extensions=["PJSIP/6001", "6002"])
    url = f"/api/v1/workflows/{wid}/calls"
    for to in ("PJSIP/6001", "pjsip/6001", "PJSIP/trunk/sip:+15551234567@pbx.example.com:5060;transport=tcp",
               "Local/6001@from-internal", "IAX2/pbx2/6001"):
        ok(await t.http.post(url, json={"telephony_configuration_id": cid, "to": to}), 202)
    ok(await t.http.post(url, json={"telephony_configuration_id": cid, "to": "6001", "from": "6002"}), 202)
    ok(await t.http.post(url, json={"telephony_configuration_id": cid, "to": "6001", "from": "PJSIP/6001"}), 202)
    assert [c["to"] for c in fake_telephony.calls[:5]] == [
        "PJSIP/6001", "pjsip/6001", "PJSIP/trunk/sip:+15551234567@pbx.example.com:5060;transport=tcp",
        "Local/6001@from-internal", "IAX2/pbx2/6001",
    ]
    assert [c.get("from_extension") for c in fake_telephony.calls] == [None] * 5 + ["6002", "PJSIP/6001"]

    for body, loc, text in [
        ({"to": "Foo/6001"}, ["body", "to"], "unknown channel technology 'Foo'"),
        ({"to": "PJSIP/6001,30"}, ["body", "to"], "',' and '&' are not allowed"),
        ({"to": "PJSIP/6001&PJSIP/6002"}, ["body", "to"], "',' and '&' are not allowed"),
        ({"to": "PJSIP/"}, ["body", "to"], "dial string like"),
        ({"to": "PJSIP/${EXTEN}"}, ["body", "to"], "dial string like"),
        ({"to": "/6001"}, ["body", "to"], "unknown channel technology"),
        ({"to": "6001", "from": "6003"}, ["body", "from"], "'PJSIP/6001', '6002'"),
        ({"to": "6001", "from": "6001"}, ["body", "from"], "From Extensions"),
    ]:
        r = await t.http.post(url, json={"telephony_configuration_id": cid, **body})
        assert r.status_code == 422, (body, r.text)
        detail = r.json()["detail"][0]
        assert detail["loc"] == loc and text in detail["msg"], (body, r.text)
    assert len(fake_telephony.calls) == 7


async def test_place_call_without_telephony_is_503(platform: Platform) -> None:
    t = await platform.tenant()
    wid = await platform.workflow(t)
    cid = await platform.configuration(t)
    r = await t.http.post(f"/api/v1/workflows/{wid}/calls", json={"telephony_configuration_id": cid, "to": "6001"})
    assert r.status_code == 503 and r.json()["message"] == "telephony is not running in this process"
