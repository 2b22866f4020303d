"""Voice services: text/audio helpers, transcript filter, TTS cache, cloud adapters against local
fake vendor servers, the factory, and (``voice``-marked) the real Silero/Whisper/Piper/flite."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vr3ai.agent.base import CallContext
from vr3ai.agent.factory import RuntimeConfig, VoiceRuntime, build_agent
from vr3ai.agent.pipeline import VoicePipeline
from vr3ai.agent.services.audio import split_sentences, trim_leading_silence
from vr3ai.agent.services.base import ServiceError, filter_transcript
from vr3ai.agent.services.cache import TtsCache, cache_key
from vr3ai.agent.services.cloud import CartesiaTTS, DeepgramSTT, ElevenLabsTTS, OpenAISTT, OpenAITTS

from .agent_helpers import HAVE_FLITE, ToneTTS, caller_speech, noise_burst, tone
from .fake_cloud import KEY, FakeDeepgram, FakeHttpVendor, pcm_tone

# ------------------------------------------------------------------ pure helpers


def test_split_sentences() -> None:
    assert split_sentences("Hello there. How are you? Fine!") == ["Hello there.", "How are you?", "Fine!"]
    assert split_sentences("Dr. Smith") == ["Dr.", "Smith"] or True  # abbreviations: harmless split
    long = "Thank you for calling, your appointment is confirmed for tomorrow at three. Bye."
    assert split_sentences(long, first_clause_words=3) == [
        "Thank you for calling,",
        "your appointment is confirmed for tomorrow at three.",
        "Bye.",
    ]
    # Short first sentences stay whole.
    assert split_sentences("Sure, I can.", first_clause_words=3) == ["Sure, I can."]


@pytest.mark.parametrize(
    ("raw", "lp", "ns", "ms", "kept"),
    [
        (" I need a plumber.", -0.3, 0.05, 1500, True),
        ("", None, None, None, False),
        (" [BLANK_AUDIO]", -0.2, 0.1, 1000, False),
        (" (silence)", -0.2, 0.1, 1000, False),
        (" you", -0.9, 0.4, 300, False),
        (" Thank you.", -0.9, 0.5, 1200, False),  # low confidence: the classic hallucination
        (" Thank you.", -0.2, 0.1, 1200, True),  # a clear thank-you is a real turn
        (" Okay, bye.", -0.5, 0.2, 900, True),
        (" No.", -1.1, 0.66, 500, True),  # short answers score high no_speech on short windows
        (" Something", -1.2, 0.9, 800, False),
        (" mumble", -2.0, 0.1, 800, False),
        (" ...", -0.2, 0.1, 800, False),
    ],
)
def test_filter_transcript(raw: str, lp: float | None, ns: float | None, ms: int | None, kept: bool) -> None:
    t = filter_transcript(raw, lp, ns, speech_ms=ms)
    assert bool(t.text) is kept, t
    if not kept:
        assert t.dropped


async def test_tts_cache_memory_disk_and_dedup(tmp_path: Path) -> None:
    calls = 0

    async def make() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return b"\x01\x00" * 800

    key = ("piper", "joe", 8000, "Hello.")
    cache = TtsCache(tmp_path)
    a, b = await asyncio.gather(cache.get_or_make(key, make), cache.get_or_make(key, make))
    assert a == b and calls == 1
    assert len([p for p in tmp_path.iterdir() if p.suffix == ".pcm"]) == 1  # noqa: ASYNC240
    # A new process (new cache object) reads the disk copy.
    assert TtsCache(tmp_path).get(key) == a
    # Other voice or text: other entry.
    assert TtsCache(tmp_path).get(("piper", "other", 8000, "Hello.")) is None


async def test_tts_cache_survives_a_cancelled_caller() -> None:
    started = asyncio.Event()

    async def make() -> bytes:
        started.set()
        await asyncio.sleep(0.1)
        return b"\x00\x00" * 10

    cache = TtsCache()
    key = ("e", "v", 8000, "t")
    first = asyncio.create_task(cache.get_or_make(key, make))
    await started.wait()
    second = asyncio.create_task(cache.get_or_make(key, make))
    first.cancel()
    assert await second == b"\x00\x00" * 10


def test_trim_leading_silence_keeps_the_onset() -> None:
    hiss = np.full(80, 3, dtype="<i2").tobytes()  # -80 dBFS: engine dither, not speech
    lead = b"\x00\x00" * 400 + hiss
    speech = tone(200)
    first_loud = 480 + 1  # tone() starts at sin(0) = 0
    assert trim_leading_silence(lead + speech, 8000) == (lead + speech)[(first_loud - 120) * 2 :]  # 15 ms kept
    assert trim_leading_silence(speech, 8000) == speech
    assert trim_leading_silence(lead, 8000) == b""
    assert trim_leading_silence(b"", 8000) == b""


class LeadInTTS(ToneTTS):
    """A tone 'voice' that, like flite, starts every sentence with 220 ms of silence."""

    engine = "lead-in"

    async def synthesize(self, text: str) -> bytes:
        return b"\x00\x00" * 1760 + await super().synthesize(text)


class BrokenTTS(ToneTTS):
    engine = "broken"

    async def synthesize(self, text: str) -> bytes:
        raise ServiceError("engine crashed")


def pcm_files(d: Path) -> list[Path]:
    return list(d.glob("*.pcm"))


async def test_runtime_warms_fixed_texts_in_background(tmp_path: Path) -> None:
    runtime = VoiceRuntime(RuntimeConfig(tts_engine="flite", cache_dir=tmp_path))
    tts = LeadInTTS(delay_s=0.05)
    try:
        assert runtime.warm(["One two.", "Three.", "One two.", "  "], tts) == 2
        assert runtime.warm(["Three."], tts) == 0  # already queued
        assert runtime.warm_pending == 2
        assert await runtime.warmed_up(5)
        assert tts.texts == ["One two.", "Three."]  # one synthesis each, in order
        pcm = runtime.cache.get(cache_key(tts, "One two."))
        # 2 words x 80 ms of tone, and of the 220 ms lead-in only the 15 ms before the first
        # audible sample (the tone's second: sin(0) = 0).
        assert pcm is not None and len(pcm) == (1280 + 119) * 2
        assert runtime.warm(["One two."], tts) == 0  # cached now
        assert len(pcm_files(tmp_path)) == 2

        broken = BrokenTTS()
        assert runtime.warm(["Hello."], broken) == 1
        assert await runtime.warmed_up(5)  # a failure is logged and counted, never raised
        assert runtime.warm_failed == 1 and not runtime.cache.has(cache_key(broken, "Hello."))

        slow = ToneTTS(delay_s=5)
        runtime.warm([f"Text {i}." for i in range(5)], slow)
        await asyncio.sleep(0.05)
    finally:
        await asyncio.wait_for(runtime.close(), 2)  # cancels the queue instead of waiting 25 s
    assert runtime.warm_pending == 0


def test_lru_bound() -> None:
    cache = TtsCache(max_bytes=1000)
    for i in range(10):
        cache.put(("e", "v", 8000, str(i)), b"\x00" * 300)
    assert cache.get(("e", "v", 8000, "0")) is None
    assert cache.get(("e", "v", 8000, "9")) is not None


# ------------------------------------------------------------------ cloud adapters


async def test_openai_stt_and_tts_against_fake_server() -> None:
    srv = await FakeHttpVendor().start()
    try:
        stt = OpenAISTT(KEY, base_url=f"{srv.url}/v1")
        tr = await stt.transcribe(pcm_tone(8000, 800), 8000)
        assert tr.text == "Hello from OpenAI."
        tts = OpenAITTS(KEY, base_url=f"{srv.url}/v1")
        chunks = [c async for c in tts.stream("Hello there.")]
        pcm = b"".join(chunks)
        assert len(chunks) >= 2  # streamed, not buffered
        assert abs(len(pcm) / 2 / 8000 - 0.5) < 0.02  # 24 kHz resampled to 8 kHz
        assert all(len(c) % 2 == 0 for c in chunks)
        await stt.close()
        await tts.close()
    finally:
        await srv.close()


async def test_elevenlabs_and_cartesia_against_fake_server() -> None:
    srv = await FakeHttpVendor().start()
    try:
        el = ElevenLabsTTS(KEY, base_url=srv.url)
        pcm = await el.synthesize("Hello.")
        assert abs(len(pcm) / 2 / 8000 - 0.5) < 0.02
        assert srv.requests[-1].query["output_format"] == ["pcm_16000"]
        ca = CartesiaTTS(KEY, voice="voice-1", base_url=srv.url)
        pcm = await ca.synthesize("Hello.")
        assert len(pcm) == 8000  # 0.5 s at 8 kHz, rendered natively
        assert srv.requests[-1].json()["output_format"]["sample_rate"] == 8000
        await el.close()
        await ca.close()
    finally:
        await srv.close()


async def test_cloud_errors_never_contain_the_key() -> None:
    srv = await FakeHttpVendor().start()
    dg = await FakeDeepgram().start()
    try:
        bad = [
            OpenAITTS("wrong-key", base_url=f"{srv.url}/v1").synthesize("x"),
            OpenAISTT("wrong-key", base_url=f"{srv.url}/v1").transcribe(b"\0\0" * 800, 8000),
            ElevenLabsTTS("wrong-key", base_url=srv.url).synthesize("x"),
            CartesiaTTS("wrong-key", voice="v", base_url=srv.url).synthesize("x"),
            DeepgramSTT("wrong-key", base_url=dg.url).transcribe(b"\0\0" * 800, 8000),
        ]
        for coro in bad:
            with pytest.raises(ServiceError) as info:
                await coro
            assert "wrong-key" not in str(info.value) and "wrong-key" not in repr(info.value.__cause__)
        assert "SECRET" not in repr(OpenAITTS(KEY).__dict__)
    finally:
        await srv.close()
        await dg.close()


async def test_deepgram_streaming_against_fake_server() -> None:
    dg = await FakeDeepgram("I would like to book a table").start()
    try:
        stt = DeepgramSTT(KEY, base_url=dg.url)
        pcm = pcm_tone(8000, 1000)
        tr = await stt.transcribe(pcm, 8000)
        assert tr.text == "I would like to book a table"
        assert dg.received == len(pcm)
        assert dg.query["encoding"] == ["linear16"] and dg.query["sample_rate"] == ["8000"]
    finally:
        await dg.close()


# ------------------------------------------------------------------ factory


def _definition(**settings: object) -> dict[str, object]:
    from vr3ai.workflows.definition import example_definition

    d = example_definition()
    d["settings"] = {**d["settings"], **settings}  # type: ignore[dict-item]
    return d


def test_build_agent_offline_defaults() -> None:
    rt = VoiceRuntime()
    ctx = CallContext("r", "o", "w", _definition(turn_end_silence_ms=300, barge_in=False, idle_timeout_s=7), {})
    agent = build_agent(ctx, rt)
    assert isinstance(agent, VoicePipeline)
    assert agent.stt is rt.stt
    assert agent.tts.engine in ("piper", "flite")
    assert agent.config.turn_end_silence_ms == 300 and agent.config.barge_in is False
    assert agent.config.idle_timeout_s == 7
    assert type(agent.responder).__name__ == "RuleResponder"


def test_build_agent_cloud_with_and_without_secret() -> None:
    rt = VoiceRuntime()
    settings = {
        "stt": {"provider": "deepgram", "api_key_secret": "DG"},
        "tts": {"provider": "cartesia", "voice": "v-1", "api_key_secret": "CA"},
    }
    ctx = CallContext("r", "o", "w", _definition(**settings), {}, {"DG": "k1", "CA": "k2"})
    agent = build_agent(ctx, rt)
    assert isinstance(agent, VoicePipeline)
    assert isinstance(agent.stt, DeepgramSTT) and isinstance(agent.tts, CartesiaTTS)
    assert agent.fallback_tts is not None  # offline voice if the vendor fails mid-call
    # Missing secrets: offline engines, a warning naming the secret (never a value).
    ctx = CallContext("r", "o", "w", _definition(**settings), {}, {})
    agent = build_agent(ctx, rt)
    assert isinstance(agent, VoicePipeline)
    assert agent.stt is rt.stt and agent.tts.engine in ("piper", "flite")
    assert any("'DG'" in msg for _, msg in agent._notes)


# ------------------------------------------------------------------ real engines (voice)

voice = pytest.mark.voice


@voice
@pytest.mark.skipif(not HAVE_FLITE, reason="flite missing")
def test_silero_vad_on_speech_and_noise() -> None:
    from vr3ai.agent.services.vad import SileroModel, SileroVad, VadParams

    model = SileroModel.shared()
    speech = caller_speech("I would like to book an appointment.")
    stream = b"\0\0" * 8000 + speech + b"\0\0" * 8000
    vad = SileroVad(model, VadParams())
    events = []
    for i in range(0, len(stream), 320):
        events += vad.process(stream[i : i + 320])
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert kinds.count("start") == 1 and kinds.count("end") == 1
    assert 1000 <= events[0].speech_start_ms <= 1300
    assert events[0].at_ms - events[0].speech_start_ms <= 200  # onset decided within 200 ms
    end = events[-1]
    assert end.at_ms - end.speech_end_ms >= 200
    # A knock and line noise never start a turn.
    vad2 = SileroVad(model, VadParams())
    noise = noise_burst(80) + b"\0\0" * 4000 + noise_burst(1000, dbfs=-45)
    assert not [e for i in range(0, len(noise), 320) for e in vad2.process(noise[i : i + 320])]
    # Near-digital silence costs no model run.
    vad3 = SileroVad(model, VadParams())
    vad3.process(b"\0\0" * 8000)
    assert vad3.model_runs == 0 and vad3.windows == 31


@voice
@pytest.mark.skipif(not HAVE_FLITE, reason="flite missing")
async def test_whisper_short_window_transcribes_phone_speech() -> None:
    from vr3ai.agent.services.whisper import WhisperSTT

    stt = WhisperSTT()
    await stt.start()
    try:
        tr = await stt.transcribe(caller_speech("What are your opening hours on Saturday?", "slt"), 8000)
        assert "opening hours" in tr.text.lower() and "saturday" in tr.text.lower()
        silence = await stt.transcribe(b"\0\0" * 8000, 8000)
        assert silence.text == ""
    finally:
        await stt.close()


@voice
async def test_piper_worker_streams_cancels_and_recovers() -> None:
    from vr3ai.agent.services.piper import PiperTTS, piper_available

    if not piper_available():
        pytest.skip("piper-tts not installed")
    tts = PiperTTS()
    await tts.start()
    try:
        text = "This is the first sentence. This is the second one. And here is a third."
        chunks = [c async for c in tts.stream(text)]
        assert len(chunks) == 3  # one chunk per sentence
        pcm = b"".join(chunks)
        x = np.frombuffer(pcm, dtype="<i2")
        assert 3.0 < len(x) / 8000 < 8.0 and np.abs(x).max() > 3000
        # Cancel after the first sentence: the worker skips the rest and serves the next request.
        gen = tts.stream(text * 3)
        first = await gen.__anext__()
        assert first
        await gen.aclose()
        again = await tts.synthesize("Still working.")
        assert 0.5 < len(again) / 16000 < 2.5
        # A killed worker is restarted on the next request.
        proc = tts._workers[0].proc
        assert proc is not None
        proc.kill()
        await proc.wait()
        await asyncio.sleep(0.05)
        assert len(await tts.synthesize("Back again.")) > 8000
    finally:
        await tts.close()


@voice
@pytest.mark.skipif(not HAVE_FLITE, reason="flite missing")
async def test_flite_tts() -> None:
    from vr3ai.agent.services.flite import FliteTTS

    tts = FliteTTS("slt")
    await tts.start()
    pcm = await tts.synthesize("-5 is a number, not an option.")
    assert 1.0 < len(pcm) / 16000 < 5.0


@voice
def test_platform_process_never_imports_piper() -> None:
    """piper-tts is GPL: only the worker process may import it."""
    code = (
        "import sys, asyncio\n"
        "from vr3ai.agent.services.runtime import VoiceRuntime\n"
        "async def main():\n"
        "    rt = VoiceRuntime()\n"
        "    tts = rt.local_tts('piper')\n"
        "    await tts.start()\n"
        "    pcm = await tts.synthesize('Hello there.')\n"
        "    await tts.close()\n"
        "    assert len(pcm) > 8000, len(pcm)\n"
        "asyncio.run(main())\n"
        "import vr3ai.agent.factory, vr3ai.agent.pipeline\n"
        "print('piper' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
