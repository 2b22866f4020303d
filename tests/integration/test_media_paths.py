"""Media-path details against the real Asterisk: Basic auth, wss, flow control, flush, SIP."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from tests.harness import AsteriskLab, audio
from tests.integration.agents import AgentRecorder, tone_pcm
from tests.integration.conftest import SIMPLE_WORKFLOW
from tests.integration.platform import RunningPlatform, running_platform
from tests.integration.test_inbound import assert_no_leftovers

pytestmark = pytest.mark.asterisk


async def _first_agent(recorder: AgentRecorder, timeout_s: float = 5.0) -> object:
    for _ in range(int(timeout_s / 0.05)):
        if recorder.agents and recorder.agents[0].audio is not None:
            return recorder.agents[0]
        await asyncio.sleep(0.05)
    raise AssertionError("the agent never started")


async def test_media_basic_auth_required(lab: AsteriskLab, platform: RunningPlatform) -> None:
    # vr3ai_auth sends vr3ai-media:media-secret; the configuration expects exactly that.
    wf_id, cfg_id = await platform.setup_inbound(
        definition=SIMPLE_WORKFLOW,
        lab=lab,
        ws_client="vr3ai_auth",
        media_username="vr3ai-media",
        media_password="media-secret",
    )
    call = await lab.call("8000", hold_s=2)
    await call.wait_hangup(8)
    run = await platform.wait_run(workflow_id=wf_id)
    assert run["status"] == "completed", run["end_reason"]
    # The same configuration expecting other credentials: Asterisk's connection is refused.
    r = await platform.http.patch(
        f"/api/v1/telephony-configurations/{cfg_id}",
        json={"media_username": "vr3ai-media", "media_password": "another-secret"},
    )
    assert r.status_code == 200, r.text
    await platform.wait_state(cfg_id)
    call = await lab.call("8000", hold_s=6)
    await call.wait_hangup(15)
    run = await platform.wait_run(lambda r: r["status"] == "failed", workflow_id=wf_id)
    assert "media" in run["end_reason"], run["end_reason"]
    await assert_no_leftovers(lab)


async def test_wss_media(lab: AsteriskLab, tmp_path: Path) -> None:
    recorder = AgentRecorder()
    async with running_platform(
        tmp_path,
        port=lab.media_port,
        agent_factory=recorder,
        tls_port=lab.tls_media_port,
        tls_cert=str(lab.server_cert_path),
        tls_key=str(lab.server_key_path),
    ) as platform:
        wf_id, _ = await platform.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab, ws_client="vr3ai_tls")
        call = await lab.call("8000", hold_s=3)
        heard = await call.recording()
        run = await platform.wait_run(workflow_id=wf_id)
        assert run["status"] == "completed", run["end_reason"]
        segs = audio.segments(heard)
        assert (
            segs and abs(audio.dominant_freq(heard[int(segs[0].start_s * 8000) : int(segs[0].end_s * 8000)]) - 440) < 15
        )
    await assert_no_leftovers(lab)


async def test_wss_on_the_main_port(lab: AsteriskLab, tmp_path: Path) -> None:
    """VR3AI_TLS_CERT / VR3AI_TLS_KEY: one port serves the API, the dashboard and the media socket over
    TLS; Asterisk dials the guide's uri = wss://<host>:<port>/api/v1/telephony/ws/ari with
    tls_enabled = yes and ca_list_file = the CA (websocket_client.conf [vr3ai_wss] of the lab)."""
    recorder = AgentRecorder()
    async with running_platform(
        tmp_path,
        port=lab.media_port,
        agent_factory=recorder,
        tls_cert=str(lab.server_cert_path),
        tls_key=str(lab.server_key_path),
        main_tls_ca=str(lab.ca_cert_path),
    ) as platform:
        assert platform.base_url.startswith("https://")
        login = await platform.http.get("/login")
        assert login.status_code == 200 and "<form" in login.text
        wf_id, cfg_id = await platform.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab, ws_client="vr3ai_wss")
        snippets = await platform.get(f"/api/v1/telephony-configurations/{cfg_id}/asterisk-snippets")
        expected = f"wss://127.0.0.1:{lab.media_port}/api/v1/telephony/ws/ari"
        assert snippets["media_uri"] == expected
        ws_conf = next(i for i in snippets["items"] if i["filename"] == "websocket_client.conf")["text"]
        assert f"uri = {expected}" in ws_conf and "tls_enabled = yes" in ws_conf and "ca_list_file = " in ws_conf
        call = await lab.call("8000", hold_s=3)
        heard = await call.recording()
        run = await platform.wait_run(workflow_id=wf_id)
        assert run["status"] == "completed", run["end_reason"]
        segs = audio.segments(heard)
        assert (
            segs and abs(audio.dominant_freq(heard[int(segs[0].start_s * 8000) : int(segs[0].end_s * 8000)]) - 440) < 15
        )
    await assert_no_leftovers(lab)


async def test_flush_media_cuts_agent_audio(
    lab: AsteriskLab, platform: RunningPlatform, recorder: AgentRecorder
) -> None:
    recorder.kw.update(freq=660.0, secs=0.0)
    wf_id, _ = await platform.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab)
    call = await lab.call("8000", hold_s=5)
    agent = await _first_agent(recorder)
    session = agent.audio  # type: ignore[attr-defined]
    session.play(tone_pcm(660.0, 4.0), mark="long")
    await asyncio.sleep(1.0)
    dropped = session.flush()
    assert dropped > 2000, dropped  # most of the 4 s were never heard
    heard = await call.recording()
    segs = [s for s in audio.segments(heard) if s.duration_s > 0.3]
    assert segs, "caller heard nothing"
    total = sum(s.duration_s for s in segs)
    assert 0.7 < total < 1.5, segs  # ~1 s heard, then the flush stopped it at the caller
    assert "long" not in agent.marks  # type: ignore[attr-defined]
    run = await platform.wait_run(workflow_id=wf_id)
    assert run["status"] == "completed"


async def test_xoff_xon_loses_nothing(lab: AsteriskLab, platform: RunningPlatform, recorder: AgentRecorder) -> None:
    recorder.kw.update(secs=0.0)
    await platform.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab)
    call = await lab.call("8000", hold_s=8)
    agent = await _first_agent(recorder)
    session = agent.audio  # type: ignore[attr-defined]
    # Fill Asterisk's queue past its XOFF level (900 frames) behind the session's back, as a bulk
    # sender would; the session must hold our audio on MEDIA_XOFF and send all of it on MEDIA_XON.
    bulk = bytes([0xFF]) * 160 * 905
    for i in range(0, len(bulk), 16000):
        session._transport.send_bytes(bulk[i : i + 16000])
    for _ in range(100):
        if session.xoff:
            break
        await asyncio.sleep(0.02)
    assert session.xoff, "no MEDIA_XOFF seen"
    sent_at_xoff = session.stats.audio_frames_out
    session.play(tone_pcm(550.0, 0.5), mark="after-xoff")
    await asyncio.sleep(0.5)
    assert session.stats.audio_frames_out == sent_at_xoff, "sent audio while Asterisk said XOFF"
    for _ in range(200):  # Asterisk sends XON once its queue is below 800 frames (~2 s here)
        if not session.xoff:
            break
        await asyncio.sleep(0.05)
    assert not session.xoff, "no MEDIA_XON seen"
    assert session.stats.xoff >= 1
    # Nothing was dropped: the tone is still ours to send, waiting for the queue to come back to
    # the session's lead. Clear the bulk behind the session's back again; the tone must follow.
    assert session.queued_ms() >= 480, session.queued_ms()
    session._transport.send_text("FLUSH_MEDIA")
    for _ in range(200):
        if "after-xoff" in agent.marks:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.05)
    assert "after-xoff" in agent.marks, session.stats  # type: ignore[attr-defined]
    assert session.stats.audio_frames_out >= sent_at_xoff + 25
    heard = await call.recording()
    segs = [s for s in audio.segments(heard) if s.duration_s > 0.2]
    assert segs, "the tone held during XOFF was never heard"
    last = heard[int(segs[-1].start_s * 8000) : int(segs[-1].end_s * 8000)]
    assert abs(audio.dominant_freq(last) - 550) < 15
    assert 0.4 < segs[-1].duration_s < 0.7, segs
    await assert_no_leftovers(lab)


async def test_real_sip_call(lab: AsteriskLab, platform: RunningPlatform, recorder: AgentRecorder) -> None:
    wf_id, _ = await platform.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab)
    call = await lab.sip_call("8000", hold_s=3, dtmf="7#", dtmf_after_s=1.0)
    await call.wait_hangup(10)
    run = await platform.wait_run(workflow_id=wf_id)
    assert run["status"] == "completed", run["end_reason"]
    assert run["context"]["called_number"] == "8000"
    agent = recorder.agents[0]
    assert agent.digits == "7#"
    assert "tone" in agent.marks
    got = np.frombuffer(bytes(agent.heard), dtype="<i2")
    assert len(got) > 0
    await assert_no_leftovers(lab)
