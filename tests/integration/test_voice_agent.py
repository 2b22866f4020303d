"""The offline voice agent, end to end through the real Asterisk: greeting heard and understood,
a spoken request moves the workflow, DTMF follows a dtmf edge, the end node hangs up after its last
words are heard, barge-in cuts the agent off, and the run holds transcript, recording and metrics.

What the caller heard is transcribed back with Whisper (the same offline model the agent uses).
"""

from __future__ import annotations

import io
import re
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from tests.harness import AsteriskLab, audio
from tests.integration.platform import RunningPlatform, running_platform
from tests.integration.test_inbound import assert_no_leftovers

pytestmark = [pytest.mark.asterisk, pytest.mark.voice]

RECEPTION = {
    "variables": {"company": "Acme Dental"},
    "settings": {"turn_end_silence_ms": 200, "barge_in": True},
    "nodes": [
        {"id": "start", "type": "start", "greeting": "Hello, thank you for calling {{company}}. How can I help you?"},
        {"id": "booking", "type": "agent", "say": "Sure. Which day would suit you best?"},
        {"id": "hours", "type": "end", "say": "We are open from nine to five. Goodbye."},
    ],
    "edges": [
        {"id": "to_booking", "from": "start", "to": "booking", "keywords": ["appointment", "book"]},
        {"id": "to_hours", "from": "start", "to": "hours", "keywords": ["hours", "open"], "dtmf": "1"},
        {"id": "done", "from": "booking", "to": "hours", "keywords": ["bye"]},
    ],
}

LONG_GREETING = {
    "nodes": [
        {
            "id": "start",
            "type": "start",
            "greeting": (
                "Welcome to the Acme Dental practice. Our team of friendly dentists offers check ups, "
                "cleaning, whitening and emergency care six days a week. Please tell me how I can help you today."
            ),
        },
        {"id": "person", "type": "agent", "say": "Of course, let me find someone for you."},
        {"id": "bye", "type": "end", "say": "Goodbye."},
    ],
    # Two edges: the start node is a menu (a single edge would move on right after the greeting).
    "edges": [
        {"id": "e1", "from": "start", "to": "bye", "keywords": ["goodbye"]},
        {"id": "e2", "from": "start", "to": "person", "keywords": ["someone", "person"]},
    ],
}


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9 ]", " ", text.lower()))


@pytest.fixture(scope="module")
def whisper() -> object:
    from faster_whisper import WhisperModel

    from vr3ai.agent.services.whisper import tiny_en_model_path

    return WhisperModel(str(tiny_en_model_path()), device="cpu", compute_type="int8", local_files_only=True)


def transcribe(model: object, pcm: np.ndarray) -> str:
    x = audio.resample(pcm, 8000, 16000).astype(np.float32) / 32768.0
    segments, _ = model.transcribe(x, language="en", beam_size=1, condition_on_previous_text=False)  # type: ignore[attr-defined]
    return " ".join(s.text for s in segments)


@pytest_asyncio.fixture
async def voice_platform(lab: AsteriskLab, tmp_path: Path) -> AsyncIterator[RunningPlatform]:
    async with running_platform(tmp_path, port=lab.media_port, voice=True) as p:
        yield p


async def test_spoken_request_reaches_end_node_which_hangs_up(
    lab: AsteriskLab, voice_platform: RunningPlatform, whisper: object
) -> None:
    p = voice_platform
    wf_id, _ = await p.setup_inbound(definition=RECEPTION, lab=lab)
    request = audio.synth_speech("What are your opening hours?")
    call = await lab.call("8000", wav=request, wav_after_s=5.0, hold_s=25)
    elapsed = await call.wait_hangup(30)
    assert elapsed < 20, "the end node did not hang up"
    heard = await call.recording()
    text = _words(transcribe(whisper, heard))
    assert "thank you for calling" in text and "dental" in text, text
    assert "open from" in text and ("nine" in text or "9" in text), text
    assert "goodbye" in text or "good bye" in text, text  # the last words were heard before hangup

    run = await p.wait_run(workflow_id=wf_id)
    assert run["status"] == "completed", run["end_reason"]
    assert "end node" in run["end_reason"] or "workflow" in run["end_reason"], run["end_reason"]
    roles = [line["role"] for line in run["transcript"]]
    assert roles[0] == "agent" and "caller" in roles
    caller_lines = " ".join(line["text"] for line in run["transcript"] if line["role"] == "caller").lower()
    assert "hours" in caller_lines, run["transcript"]
    turns = [m for m in run["metrics"] if "first_audio_ms" in m]
    assert turns, run["metrics"]
    assert run["context"]["called_number"] == "8000"
    r = await p.http.get(f"/api/v1/workflow-runs/{run['id']}/recording")
    assert r.status_code == 200 and r.headers["content-type"].startswith("audio/")
    with wave.open(io.BytesIO(r.content)) as w:
        assert w.getnchannels() == 2 and w.getframerate() == 8000
        assert w.getnframes() > 8000 * 5
    await assert_no_leftovers(lab)


async def test_spoken_booking_and_dtmf(lab: AsteriskLab, voice_platform: RunningPlatform, whisper: object) -> None:
    p = voice_platform
    wf_id, _ = await p.setup_inbound(definition=RECEPTION, lab=lab)
    request = audio.synth_speech("I would like to book an appointment.")
    call = await lab.call("8000", wav=request, wav_after_s=5.0, hold_s=12)
    heard = await call.recording()
    text = _words(transcribe(whisper, heard))
    assert "which day" in text, text
    run = await p.wait_run(workflow_id=wf_id)
    summary = run["metrics"][-1]
    assert summary["node_path"][:2] == ["start", "booking"], summary
    assert "appointment" in " ".join(x["text"] for x in run["transcript"] if x["role"] == "caller").lower()
    # DTMF 1 on the start node follows the dtmf edge to the hours node, which hangs up.
    call = await lab.call("8000", dtmf="1", dtmf_after_s=5.0, hold_s=25)
    elapsed = await call.wait_hangup(30)
    assert elapsed < 20
    heard = await call.recording()
    assert "nine to five" in _words(transcribe(whisper, heard)) or "open" in _words(transcribe(whisper, heard))
    await assert_no_leftovers(lab)


async def test_barge_in_cuts_the_agent_off(lab: AsteriskLab, voice_platform: RunningPlatform) -> None:
    p = voice_platform
    wf_id, _ = await p.setup_inbound(definition=LONG_GREETING, lab=lab)
    interrupt = audio.synth_speech("Sorry to interrupt, can I speak to someone?")
    call = await lab.call("8000", wav=interrupt, wav_after_s=2.5, hold_s=9)
    heard = await call.recording()
    run = await p.wait_run(workflow_id=wf_id)
    agent_lines = [line for line in run["transcript"] if line["role"] == "agent"]
    assert agent_lines, run["transcript"]
    first = agent_lines[0]
    full = LONG_GREETING["nodes"][0]["greeting"]
    assert len(first["text"]) < len(full) * 0.7, run["transcript"]  # cut to what the caller heard
    assert any(x["role"] == "caller" and "someone" in x["text"].lower() for x in run["transcript"])
    assert any("find someone" in x["text"] for x in agent_lines[1:]), run["transcript"]
    # At the caller: agent audio stops soon after the caller starts talking (~2.5 s after answer).
    segs = audio.segments(heard)
    assert segs, "caller heard nothing"
    agent_end = segs[0].end_s
    assert agent_end < 2.5 + 1.2, segs  # the greeting alone would run ~10 s
    await assert_no_leftovers(lab)
