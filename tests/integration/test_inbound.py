"""Inbound calls through the real Asterisk 22.10.1, exactly as the guide describes them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from tests.harness import AsteriskLab, audio
from tests.integration.agents import AgentRecorder
from tests.integration.conftest import SIMPLE_WORKFLOW
from tests.integration.platform import RunningPlatform, running_platform
from vr3ai.media.uring import SendRing

pytestmark = pytest.mark.asterisk


async def assert_no_leftovers(lab: AsteriskLab) -> None:
    leftovers = await lab.wait_no_channels(timeout_s=5)
    assert leftovers == [], leftovers
    bridges = await lab.wait_no_bridges(timeout_s=5)
    assert bridges == [], bridges


async def test_inbound_call_audio_both_ways(
    lab: AsteriskLab, platform: RunningPlatform, recorder: AgentRecorder
) -> None:
    await _audio_both_ways(lab, platform, recorder)


async def test_inbound_call_with_media_read_by_the_clock(lab: AsteriskLab, tmp_path: Path) -> None:
    """The same call with the media socket read once per clock tick (what the platform does from
    VR3AI_MEDIA_TICK_READS_FROM calls on; 1 here), not by the event loop per frame; and the
    clock's frames sent with one io_uring submission per tick (the default where Linux allows)."""
    recorder = AgentRecorder()
    async with running_platform(
        tmp_path, port=lab.media_port, agent_factory=recorder, ring_timeout_s=4, media_tick_reads_from=1
    ) as p:
        await _audio_both_ways(lab, p, recorder)
        engine = p.services.media.engine
        reader = engine.tick_reader
        assert reader is not None and reader.reads > 100, "the clock never read the media socket"
        assert len(reader) == 0 and not reader.active  # released with the call
        if SendRing.create(2) is not None:
            batch = engine.send_batch
            assert batch is not None and batch.ring_sends > 100, "the frames did not go through io_uring"


async def test_inbound_call_with_frames_written_one_by_one(lab: AsteriskLab, tmp_path: Path) -> None:
    """The same call with VR3AI_MEDIA_RING_SENDS off: every frame its own write, as where the
    kernel has no io_uring."""
    recorder = AgentRecorder()
    async with running_platform(
        tmp_path, port=lab.media_port, agent_factory=recorder, ring_timeout_s=4, media_ring_sends=False
    ) as p:
        await _audio_both_ways(lab, p, recorder)
        assert p.services.media.engine.send_batch is None, "a ring was set up although switched off"


async def _audio_both_ways(lab: AsteriskLab, platform: RunningPlatform, recorder: AgentRecorder) -> None:
    wf_id, _ = await platform.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab)
    speech = audio.synth_speech("I would like to book an appointment for tomorrow")
    call = await lab.call("8000", wav=speech, hold_s=6, dtmf="12#", caller_id='"Alice" <15551230001>')
    heard = await call.recording()
    run = await platform.wait_run(workflow_id=wf_id)

    assert run["status"] == "completed", run
    assert run["direction"] == "inbound"
    ctx = run["context"]
    assert ctx["caller_number"] == "15551230001"
    assert ctx["called_number"] == "8000"
    assert ctx["direction"] == "inbound" and ctx["provider"] == "ari"
    assert ctx["call_id"] and ctx["call_id"] != ""
    assert run["end_reason"] == "caller hung up"

    # The caller heard what the agent sent: a 440 Hz tone.
    segs = audio.segments(heard)
    assert segs, "caller heard nothing"
    tone_part = heard[int(segs[0].start_s * 8000) : int(segs[0].end_s * 8000)]
    assert abs(audio.dominant_freq(tone_part) - 440) < 15, audio.dominant_freq(tone_part)

    # The agent heard what the caller played: the synthesized sentence.
    agent = recorder.agents[0]
    got = np.frombuffer(bytes(agent.heard), dtype="<i2")
    ref = audio.load_8k(speech)
    # The call starts playing before the bridge is up, so compare chunks rather than the whole file.
    for start in (0.5, 1.2, 2.0):
        chunk = ref[int(start * 8000) : int((start + 0.3) * 8000)]
        lag, corr = audio.find_lag(chunk, got)
        assert corr > 0.95, (start, lag, corr)
        assert abs((start - lag) - (0.5 - audio.find_lag(ref[4000:6400], got)[0])) < 0.03  # same alignment
    assert agent.digits == "12#"
    assert "tone" in agent.marks
    assert ctx["call_id"] == agent.ctx.variables["call_id"]  # type: ignore[union-attr]
    assert run["transcript"][0]["role"] == "agent"
    await assert_no_leftovers(lab)


async def test_agent_hangs_up(lab: AsteriskLab, platform: RunningPlatform, recorder: AgentRecorder) -> None:
    recorder.kw["hangup_after_s"] = 1.0
    wf_id, _ = await platform.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab)
    call = await lab.call("8000", hold_s=10)
    elapsed = await call.wait_hangup(8)
    assert elapsed < 5
    run = await platform.wait_run(workflow_id=wf_id)
    assert run["status"] == "completed"
    assert run["end_reason"] == "agent hung up (test)"
    await assert_no_leftovers(lab)


async def test_e164_call_reaches_national_number(
    lab: AsteriskLab, platform: RunningPlatform, recorder: AgentRecorder
) -> None:
    """The trunk delivers +15551234567, the operator stored 5551234567: the call reaches its agent
    (vr3ai.telephony.numbers), and the run records the number as dialled."""
    recorder.kw["hangup_after_s"] = 1.0
    wf_id, _ = await platform.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab, extension="5551234567")
    call = await lab.call("+15551234567", hold_s=10)
    await call.wait_hangup(8)
    run = await platform.wait_run(workflow_id=wf_id)
    assert run["status"] == "completed" and run["end_reason"] == "agent hung up (test)", run
    assert run["context"]["called_number"] == "+15551234567"
    await assert_no_leftovers(lab)


async def test_unknown_extension_refused(lab: AsteriskLab, platform: RunningPlatform) -> None:
    _, cfg_id = await platform.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab)
    call = await lab.call("8123", hold_s=5)
    await call.wait_hangup(5)
    status = await platform.get(f"/api/v1/telephony-configurations/{cfg_id}/status")
    msgs = [e["message"] for e in status["recent_events"]]
    assert any(f"no matching phone number registered for config {cfg_id}" in m and "8123" in m for m in msgs), msgs
    # The warning names the forms it compared (exact, then digits only).
    assert any("tried exact '8123', digits only '8123'" in m for m in msgs), msgs
    runs = (await platform.get("/api/v1/workflow-runs"))["items"]
    assert runs == []
    await assert_no_leftovers(lab)


async def test_media_server_unreachable(lab: AsteriskLab, platform: RunningPlatform) -> None:
    wf_id, _ = await platform.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab, ws_client="vr3ai_down")
    call = await lab.call("8000", hold_s=8)
    await call.wait_hangup(10)
    run = await platform.wait_run(workflow_id=wf_id)
    assert run["status"] == "failed"
    assert "could not reach the media WebSocket" in run["end_reason"], run["end_reason"]
    await assert_no_leftovers(lab)
    await asyncio.sleep(0)


async def test_channel_already_answered_by_dialplan(
    lab: AsteriskLab, platform: RunningPlatform, recorder: AgentRecorder
) -> None:
    wf_id, _ = await platform.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab)
    call = await lab.call("8000", hold_s=3, context="from-external-answered")
    heard = await call.recording()
    run = await platform.wait_run(workflow_id=wf_id)
    assert run["status"] == "completed", run["end_reason"]
    assert run["direction"] == "inbound"
    timings = run["metrics"][-1]["call_timings_ms"]
    assert "answered" not in timings  # we did not answer it again
    assert audio.segments(heard), "caller heard nothing"
    await assert_no_leftovers(lab)
