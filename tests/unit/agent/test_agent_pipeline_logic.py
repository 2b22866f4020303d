"""Turn-taking logic of ``VoicePipeline`` without models: an energy 'VAD', scripted STT and a tone
'TTS', driven through ``FakeCallAudio`` on virtual time (``VirtualTimeLoop``: sleeps and timeouts
take no real time). Fast and deterministic; the same behaviours with the real models, in real
time, are in ``test_agent_voice.py``."""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes.call_audio import FakeCallAudio
from vr3ai.agent.base import CallContext, RunReport
from vr3ai.agent.pipeline import PipelineConfig, VoicePipeline
from vr3ai.agent.services.base import ServiceError
from vr3ai.agent.services.cache import TtsCache, cache_key
from vr3ai.workflows.responder import Hangup, Say

from .agent_helpers import EnergyVadModel, ScriptedSTT, StubResponder, ToneTTS, metric_rows, tone

pytestmark = pytest.mark.virtual_time

CTX = CallContext("run-1", "org-1", "wf-1", {}, {"caller_number": "100"}, {"KEY": "sk-secret"})
LONG = " ".join(["word"] * 40) + "."


def make(
    responder: StubResponder | None = None,
    stt_texts: list[str] | None = None,
    tts: ToneTTS | None = None,
    cache: TtsCache | None = None,
    **cfg: object,
) -> tuple[VoicePipeline, StubResponder, ScriptedSTT, ToneTTS]:
    responder = responder or StubResponder()
    stt = ScriptedSTT(stt_texts or [])
    tts = tts or ToneTTS()
    config = PipelineConfig(**cfg)  # type: ignore[arg-type]
    agent = VoicePipeline(responder, stt, tts, config=config, vad_model=EnergyVadModel(), cache=cache)  # type: ignore[arg-type]
    return agent, responder, stt, tts


class PlainCallAudio(FakeCallAudio):
    """A CallAudio without the session's optional ``heard_ms_of``: the pipeline falls back to its
    own sample count to cut the transcript."""

    heard_ms_of = None  # type: ignore[assignment]


async def start(
    agent: VoicePipeline, plain: bool = False, **audio_kw: object
) -> tuple[FakeCallAudio, RunReport, asyncio.Task[None]]:
    audio = (PlainCallAudio if plain else FakeCallAudio)(**audio_kw)  # type: ignore[arg-type]
    report = RunReport()
    task = asyncio.create_task(agent.run(audio, CTX, report))
    return audio, report, task


async def finish(audio: FakeCallAudio, task: asyncio.Task[None]) -> None:
    audio.caller_hangup()
    await asyncio.wait_for(task, 3)


async def test_cached_greeting_plays_first_within_150ms() -> None:
    cache = TtsCache()
    tts = ToneTTS()
    greeting = StubResponder().greeting
    cache.put((tts.engine, tts.voice, 8000, greeting), tone(1000, dbfs=-30))
    agent, _, _, _ = make(tts=tts, cache=cache)
    audio, report, task = await start(agent)
    first = await audio.wait_audio(0, within_s=2)
    assert first.start_ms <= 150
    assert report.transcript[0].role == "agent" and report.transcript[0].text == greeting
    assert tts.texts == []  # played from the cache, nothing synthesised for it
    await finish(audio, task)


async def test_uncached_fixed_text_is_cached_after_first_call() -> None:
    cache = TtsCache()
    agent, responder, _, tts = make(cache=cache)
    audio, _, task = await start(agent)
    await audio.wait_audio(0)
    await audio.wait_silent()
    await finish(audio, task)
    assert cache.get((tts.engine, tts.voice, 8000, responder.greeting)) is not None


class MeteredToneTTS(ToneTTS):
    engine = "metered"
    metered = True


@pytest.mark.parametrize("metered", [False, True])
async def test_greeting_cut_short_is_handed_to_the_runtime(metered: bool) -> None:
    """The caller hangs up during the first call's greeting: its sentence-by-sentence synthesis is
    cancelled before the whole text could be cached, so the fixed texts go to the runtime to be
    finished after the call (unless the voice bills per character)."""
    handed: list[tuple[list[str], object]] = []
    # Six sentences: synthesis runs at most 2 ahead of playback, so the last ones have not started.
    responder = StubResponder(greeting=" ".join(f"This is sentence {n}." for n in range(1, 7)))
    tts = MeteredToneTTS(delay_s=0.3) if metered else ToneTTS(delay_s=0.3)
    cache = TtsCache()
    agent = VoicePipeline(
        responder,
        ScriptedSTT([]),
        tts,
        vad_model=EnergyVadModel(),  # type: ignore[arg-type]
        cache=cache,
        warm=lambda texts, t: handed.append((texts, t)),
    )
    audio, _, task = await start(agent)
    await audio.wait_audio(0)
    await finish(audio, task)
    assert not cache.has(cache_key(tts, responder.greeting))
    if metered:
        assert handed == []
    else:
        assert handed == [(responder.fixed_texts(), tts)]


async def test_turn_transcribed_answered_and_measured() -> None:
    agent, responder, stt, _ = make(stt_texts=["I need an appointment"])
    audio, report, task = await start(agent)
    await audio.wait_audio(0)
    await audio.wait_silent()
    said = await audio.say(tone(700))
    reply = await audio.wait_audio(said.end_ms)
    turn = await responder.wait_turn(1)
    assert turn.kind == "speech" and turn.text == "I need an appointment"
    assert reply.start_ms - said.speech_end_ms < 600  # 200 ms stop window + fakes
    await audio.wait_silent()
    await finish(audio, task)
    caller = [t for t in report.transcript if t.role == "caller"]
    agent_lines = [t for t in report.transcript if t.role == "agent"]
    assert caller[0].text == "I need an appointment"
    assert agent_lines[1].text == "You said I need an appointment. Anything else?"
    assert agent_lines[1].end_ms > agent_lines[1].start_ms >= caller[0].end_ms
    (m,) = metric_rows(report)
    for key in ("turn", "vad_end_ms", "transcript_ms", "first_text_ms", "first_audio_ms", "stt_ms", "tts_first_ms"):
        assert key in m, key
    assert m["vad_end_ms"] - m["speech_end_ms"] >= 200
    assert report.variables["last"] == "I need an appointment"
    assert len(stt.calls) == 1  # the speculative run was used, no second transcription


@pytest.mark.parametrize("plain", [False, True], ids=["heard_ms_of", "sample-count"])
async def test_barge_in_flushes_and_cuts_transcript(plain: bool) -> None:
    responder = StubResponder(default=[Say("One two three. " + LONG)])
    agent, _, _, _ = make(responder=responder, stt_texts=["go on", "stop please"])
    audio, report, task = await start(agent, plain=plain)
    await audio.wait_audio(0)
    await audio.wait_silent()
    said = await audio.say(tone(500))
    reply = await audio.wait_audio(said.end_ms)
    await asyncio.sleep(1.0)  # ~12 of the 40 words heard
    interrupt = await audio.say(tone(600))
    assert audio.flushes, "agent audio was not flushed"
    stop = audio.flushes[0][0]
    assert stop - interrupt.speech_start_ms <= 300
    assert audio.flushes[0][1] > 1000  # most of the reply was dropped
    await responder.wait_turn(2)
    await audio.wait_silent()
    await finish(audio, task)
    cut = [t for t in report.transcript if t.role == "agent" and t.start_ms == pytest.approx(reply.start_ms, abs=30)]
    assert cut and cut[0].text.startswith("One two three. word word") and cut[0].text.endswith("...")
    heard_words = len(cut[0].text.split()) - 1
    expected = (stop - reply.start_ms) / 80
    assert abs(heard_words - expected) <= 3
    assert any(m.get("interrupted") for m in report.metrics)
    assert [t.text for t in report.transcript if t.role == "caller"] == ["go on", "stop please"]


async def test_barge_in_disabled_keeps_talking_and_ignores_speech() -> None:
    responder = StubResponder(default=[Say(LONG)])
    agent, _, _, _ = make(responder=responder, stt_texts=["go on", "ignored"], barge_in=False)
    audio, report, task = await start(agent)
    await audio.wait_audio(0)
    await audio.wait_silent()
    said = await audio.say(tone(500))
    await audio.wait_audio(said.end_ms)
    await asyncio.sleep(0.5)
    await audio.say(tone(600))
    await audio.wait_silent()
    await asyncio.sleep(0.4)
    await finish(audio, task)
    assert not audio.flushes
    assert len(responder.turns) == 1
    assert [t.text for t in report.transcript if t.role == "agent"][1] == LONG


async def test_short_noise_does_not_interrupt() -> None:
    responder = StubResponder(default=[Say(LONG)])
    agent, _, _, _ = make(responder=responder, stt_texts=["go on"])
    audio, _, task = await start(agent)
    await audio.wait_audio(0)
    await audio.wait_silent()
    said = await audio.say(tone(500))
    await audio.wait_audio(said.end_ms)
    await asyncio.sleep(0.5)
    await audio.say(tone(40))  # a click: spans at most 2 VAD windows (64 ms < speech_start_ms)
    await asyncio.sleep(0.5)
    assert not audio.flushes
    await finish(audio, task)
    assert len(responder.turns) == 1


async def test_dtmf_becomes_a_turn() -> None:
    agent, responder, _, tts = make()
    audio, report, task = await start(agent)
    await audio.wait_audio(0)
    await audio.wait_silent()
    t = audio.clock_ms()
    audio.press("5")
    turn = await responder.wait_turn(1)
    assert turn.kind == "dtmf" and turn.dtmf == "5"
    await audio.wait_audio(t)
    await audio.wait_silent()
    await finish(audio, task)
    assert "You pressed 5." in tts.texts
    assert any(line.text == "[DTMF 5]" for line in report.transcript)
    assert metric_rows(report, "dtmf")[0]["first_audio_ms"] < 300


async def test_dtmf_interrupts_agent_when_barge_in() -> None:
    responder = StubResponder(greeting=LONG)
    agent, _, _, _ = make(responder=responder)
    audio, _, task = await start(agent)
    await audio.wait_audio(0)
    await asyncio.sleep(0.5)
    audio.press("1")
    await responder.wait_turn(1)
    assert audio.flushes
    await finish(audio, task)


async def test_hangup_after_last_words_heard() -> None:
    agent, _, _, _ = make(stt_texts=["okay bye"])
    audio, report, task = await start(agent)
    await audio.wait_audio(0)
    await audio.wait_silent()
    said = await audio.say(tone(500))
    await asyncio.wait_for(task, 10)
    goodbye = audio.first_audio_after(said.end_ms)
    assert goodbye is not None
    (hung_at, reason) = audio.hangups[0]
    assert hung_at >= goodbye.end_ms - 1
    assert hung_at - goodbye.end_ms < 200
    assert reason == "caller said goodbye" and report.end_reason == "caller said goodbye"
    assert report.node_path == ["start", "end"]
    assert report.transcript[-1].text == "Goodbye, have a nice day!"


async def test_idle_timeout_gives_idle_turn() -> None:
    agent, responder, _, _ = make(idle_timeout_s=0.6)
    audio, _, task = await start(agent)
    await audio.wait_audio(0)
    heard = await audio.wait_silent()
    turn = await responder.wait_turn(1, within_s=3)
    assert turn.kind == "idle"
    assert audio.clock_ms() - heard >= 550
    await finish(audio, task)


async def test_max_call_duration_ends_politely() -> None:
    responder = StubResponder(greeting=LONG)
    agent, _, _, _ = make(responder=responder, max_call_duration_s=1.5, max_duration_message="Time is up. Bye.")
    audio, report, task = await start(agent)
    await asyncio.wait_for(task, 10)
    assert audio.flushes  # the greeting was cut at the limit
    assert report.end_reason == "max call duration reached"
    assert report.transcript[-1].text == "Time is up. Bye."
    assert audio.hangups and audio.hangups[0][0] >= audio.played[-1].end_ms - 1


async def test_caller_hangup_returns_promptly() -> None:
    responder = StubResponder(greeting=LONG)
    agent, _, _, _ = make(responder=responder)
    audio, report, task = await start(agent)
    await audio.wait_audio(0)
    await asyncio.sleep(0.2)
    audio.caller_hangup("caller hung up")
    await asyncio.wait_for(task, 0.5)
    assert report.end_reason == "caller hung up"


async def test_empty_transcript_is_not_a_turn() -> None:
    agent, responder, _, _ = make(stt_texts=["", "hello"])
    audio, _, task = await start(agent)
    await audio.wait_audio(0)
    await audio.wait_silent()
    await audio.say(tone(400))
    await asyncio.sleep(0.6)
    assert responder.turns == []
    await audio.say(tone(400))
    turn = await responder.wait_turn(1)
    assert turn.text == "hello"
    await finish(audio, task)


async def test_turn_end_without_frames_during_silence() -> None:
    # Media paths without comfort noise send nothing while the caller is silent.
    agent, responder, _, _ = make(stt_texts=["hello"])
    audio, _, task = await start(agent, gaps=True)
    await audio.wait_audio(0)
    await audio.wait_silent()
    said = await audio.say(tone(500))
    await responder.wait_turn(1, within_s=2)
    assert audio.clock_ms() - said.end_ms < 700
    await finish(audio, task)


class FailingTTS(ToneTTS):
    engine = "failing"

    async def synthesize(self, text: str) -> bytes:
        raise ServiceError("vendor down")


async def test_tts_failure_falls_back_and_warns() -> None:
    responder = StubResponder(greeting="")
    responder.default = [Say("Hello there."), Hangup("done")]
    stt = ScriptedSTT(["hi"])
    fallback = ToneTTS()
    agent = VoicePipeline(responder, stt, FailingTTS(), vad_model=EnergyVadModel(), fallback_tts=fallback)  # type: ignore[arg-type]
    audio = FakeCallAudio()
    report = RunReport()
    task = asyncio.create_task(agent.run(audio, CTX, report))
    await asyncio.sleep(0.3)
    await audio.say(tone(500))
    await asyncio.wait_for(task, 5)
    assert fallback.texts == ["Hello there."]
    assert any(e["level"] == "warning" and "fallback" in e["message"] for e in report.events)
    assert "sk-secret" not in repr(report.events)


async def test_example_workflow_with_rule_responder() -> None:
    """The pipeline drives the real rule responder through the example booking workflow."""
    from vr3ai.workflows.definition import example_definition
    from vr3ai.workflows.factory import build_responder

    responder = build_responder(example_definition(), {"caller_number": "100"})
    stt = ScriptedSTT(["I would like to book an appointment", "tomorrow at ten am", "yes please"])
    agent = VoicePipeline(responder, stt, ToneTTS(), vad_model=EnergyVadModel())  # type: ignore[arg-type]
    audio = FakeCallAudio()
    report = RunReport()
    task = asyncio.create_task(agent.run(audio, CTX, report))
    await audio.wait_audio(0)
    for _ in range(3):
        await audio.wait_silent()
        await audio.pause(300)
        try:
            await audio.say(tone(500))
        except ConnectionResetError:
            break
    await asyncio.wait_for(task, 15)
    assert report.end_reason and "booked" in report.end_reason
    assert report.node_path[0] == "greeting" and report.node_path[-1] == "booked"
    assert {"day", "time"} <= set(report.variables)
    agent_lines = [t.text for t in report.transcript if t.role == "agent"]
    assert agent_lines[0].startswith("Hello, thanks for calling Acme Dental")
    assert "booked" in agent_lines[-1]
    assert audio.hangups and audio.hangups[0][0] >= audio.played[-1].end_ms - 1


async def test_monologue_is_cut_into_turns() -> None:
    agent, responder, _, _ = make(stt_texts=["part one", "part two"], max_utterance_s=1.0)
    audio, _, task = await start(agent)
    await audio.wait_audio(0)
    await audio.wait_silent()
    await audio.say(tone(1800))
    await responder.wait_turn(2, within_s=5)
    assert [t.text for t in responder.turns] == ["part one", "part two"]
    await finish(audio, task)
