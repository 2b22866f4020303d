"""A real SIP caller: the lab's SIP phone (a second Asterisk) registers with the PBX under test as
PJSIP endpoint 7001 and calls VR3 AI over SIP/RTP, offering G.711 μ-law or A-law only. With A-law the
PBX transcodes between the phone's leg and VR3 AI's ulaw media channel. DTMF travels as RFC 4733."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.harness import AsteriskLab, SecondAsterisk, audio
from tests.integration.agents import AgentRecorder
from tests.integration.conftest import SIMPLE_WORKFLOW
from tests.integration.platform import RunningPlatform
from tests.integration.test_inbound import assert_no_leftovers

pytestmark = pytest.mark.asterisk


@pytest.mark.parametrize("codec", ["ulaw", "alaw"])
async def test_sip_phone_call(
    codec: str, lab: AsteriskLab, sip_phone: SecondAsterisk, platform: RunningPlatform, recorder: AgentRecorder
) -> None:
    wf_id, _ = await platform.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab)
    speech = audio.synth_speech("I would like to book an appointment for tomorrow")
    call = await sip_phone.phone_call("8000", codec=codec, wav=speech, hold_s=6, dtmf="12#")

    # The PBX's leg is the phone's SIP call (same Call-ID) and runs the codec the phone offered;
    # VR3 AI's media channel on the same PBX is ulaw whatever the caller's codec.
    leg = await sip_phone.pbx_leg(call)
    assert leg["name"].startswith("PJSIP/7001-"), leg
    assert await _native_format(lab, leg["id"]) == codec
    media_legs = [c for c in await lab.ari_channels() if c["name"].startswith("WebSocket/")]
    for _ in range(50):
        if media_legs:
            break
        await _sleep()
        media_legs = [c for c in await lab.ari_channels() if c["name"].startswith("WebSocket/")]
    assert media_legs, "VR3 AI's media channel never appeared"
    assert await _native_format(lab, media_legs[0]["id"]) == "ulaw"

    heard = await call.recording()
    run = await platform.wait_run(workflow_id=wf_id)
    assert run["status"] == "completed", run
    assert run["context"]["caller_number"] == "7001"
    assert run["context"]["called_number"] == "8000"
    assert run["end_reason"] == "caller hung up"

    # The caller heard the agent: its 440 Hz tone, through RTP (and A-law) to the phone.
    segs = audio.segments(heard)
    assert segs, "the SIP caller heard nothing"
    tone = heard[int(segs[0].start_s * 8000) : int(segs[0].end_s * 8000)]
    assert abs(audio.dominant_freq(tone) - 440) < 15, audio.dominant_freq(tone)

    # The agent heard the caller's speech, sample for sample up to the codecs' quantization.
    agent = recorder.agents[0]
    got = np.frombuffer(bytes(agent.heard), dtype="<i2")
    ref = audio.load_8k(speech)
    for start in (0.5, 1.2, 2.0):
        chunk = ref[int(start * 8000) : int((start + 0.3) * 8000)]
        lag, corr = audio.find_lag(chunk, got)
        assert corr > 0.95, (codec, start, lag, corr)
    # RFC 4733 events from the phone reached the agent as digits.
    assert agent.digits == "12#"
    await assert_no_leftovers(lab)


async def _sleep() -> None:
    await asyncio.sleep(0.05)


async def _native_format(lab: AsteriskLab, channel_id: str) -> str:
    r = await lab.ari("GET", f"/channels/{channel_id}/variable", params={"variable": "CHANNEL(audionativeformat)"})
    return str(r.json()["value"]).strip("()")  # Asterisk prints the format capability as "(ulaw)"
