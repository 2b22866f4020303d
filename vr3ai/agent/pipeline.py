"""The voice agent: caller audio -> VAD -> STT -> responder -> TTS -> caller, with barge-in.

Decision: an own thin asyncio pipeline, not a pipecat-ai ``Pipeline``
---------------------------------------------------------------------
pipecat-ai 1.14 is the field's framework and works offline here. We reuse exactly the libraries
it uses (the Silero ONNX file it bundles, faster-whisper, Piper, soxr) but not its pipeline,
because every stage that decides our latency targets would have to be replaced, leaving only
pipecat's frame plumbing. Measured (``bench/agent_pipecat_compare.py``, same audio and models;
the reference is ``offline-voice-stack.md`` §11):

* **Voice-to-voice (target p50 <= 600 ms).** A default pipecat pipeline measured 1054 ms p50
  through Asterisk: VAD end, then a fixed 0.6 s user-speech timer, then a whole Whisper run, then
  Piper. pipecat's ``WhisperSTTService`` transcribes only after the turn ends and calls
  ``transcribe()`` with faster-whisper's defaults (30 s padded window, beam 5, temperature
  fallback): p50 724 ms per utterance here vs 240 ms for ours, same word accuracy (97.2 % on 20
  flite utterances at 8 kHz). Meeting the target needs the turn to end on the VAD,
  transcription started *speculatively* inside the stop window, and Whisper's encoder on a
  short window (``services/whisper.py``): a custom turn strategy and a custom STT service, i.e.
  the whole STT/turn stage.
* **Barge-in (target <= 300 ms).** pipecat's ``SileroVADAnalyzer`` (default params) reported
  speech 330 ms (median, max 440) after its onset; ours 124 ms (max 344): no smoothed volume
  gate, 96 ms of speech probability. (Turn end: pipecat 275 ms, ours 290 ms after the last
  speech; the difference is our 0.35 hysteresis threshold.) Ours measured 159-201 ms from
  caller onset to audio stopped, end to end through ``FakeCallAudio``.
* **Call setup (target <= 150 ms to greeting audio).** pipecat services load their models in
  their constructors, per call (0.5-0.6 s of blocked event loop in the reference; Whisper alone
  0.4 s here, 2.3 s when the cores are busy). We load once per process (``VoiceRuntime``) and
  play greetings from a per-process cache: 1-5 ms.
* **Licence.** pipecat's ``PiperTTSService`` imports GPL piper-tts into the platform process;
  we need an out-of-process worker anyway (``services/piper_worker.py``).
* **Transport and per-call cost.** Our media session (``CallAudio``) already paces audio,
  flushes and reports heard marks; a pipecat transport would duplicate that (its output
  transport sleeps per 10-20 ms chunk per call) and pipecat has no Asterisk serializer in core.
  A pipecat pipeline runs several tasks and queues per processor per call; ours runs three tasks
  per call (frames, events, a 100 ms ticker) plus one per reply being spoken.

What we give up: pipecat's service catalogue (our cloud adapters in ``services/cloud.py`` are
thin) and its evals. pipecat stays installed: it ships the Silero model file.

Flow of one turn
----------------
frames -> ``SileroVad`` (8 kHz, 32 ms windows). ``start`` (``speech_start_ms`` of speech) starts
capture with a 300 ms pre-roll, and interrupts the agent if it is speaking (barge-in). After
32 ms of quiet (64 ms when the STT pool is busy) a speculative transcription of the audio so far
starts; if the caller resumes it is discarded. ``end`` (``turn_end_silence_ms``, 200 ms, of
quiet) takes the speculative result if no speech came after it, else transcribes now; so the
stop window and STT overlap instead of adding up. The transcript goes to ``responder.respond``; each ``Say`` is split
into sentences (a long first sentence at its first comma, since Piper's time to first audio grows
with sentence length), each synthesised as soon as it is known (up to 2 ahead of playback; only
the first is "urgent" for the shared Piper queue) and played with a mark ``<reply>.<n>`` so we
know what the caller heard. Fixed texts play from the TTS cache (and are pre-synthesised when the
call starts). On barge-in the reply task is cancelled (which cancels synthesis), ``flush()``
drops unheard audio, and the agent's transcript line is cut to the words the caller heard
(``heard_ms_of`` of the media session when it has it, else our own sample count). A ``Hangup``
part waits for the last mark, then hangs up. Per turn, ``RunReport.metrics`` gets
``turn, kind, speech_end_ms, vad_end_ms, transcript_ms, first_text_ms, first_audio_ms, stt_ms,
tts_first_ms, v2v_ms, speculative`` (and ``interrupted, barge_in_ms`` when cut); ``*_ms``
latencies count from ``vad_end_ms``, ``v2v_ms`` from the caller's last speech.

Measured (``bench/agent_latency.py``, FakeCallAudio in real time, 2 cores shared with other
work, load average 1-2; figures move a lot with the load)
-------------------------------------------------------------------------------------------
setup to greeting audio (cached) 1-5 ms; voice-to-voice with Piper-synthesised replies p50
581-628 ms, p95 756-876 ms; VAD + plumbing floor (no models after the VAD) p50 285 ms; barge-in
159-201 ms; 8 concurrent conversations p50 763-1087 ms, p95 1293-1480 ms. At load 3-20 the same
runs gave v2v p50 0.9-1.4 s: every stage is CPU-bound on 2 cores.

Through the real Asterisk (bench/voice_latency.py, bench/capacity.py --agent voice, load 0.2-3):
StasisStart -> greeting heard 70 ms p95 (greeting pre-synthesised when the workflow was saved;
engine lead-in silence cut), barge-in heard 132 ms p95, voice-to-voice p50 315-330 ms for one call
(cached reply), and p95 0.8-1.1 s with 8-10 full conversations at once (12: 1.7 s; the wait for a
free Whisper worker is what grows).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from vr3ai.agent.base import CallContext, RunReport, TranscriptLine
from vr3ai.agent.responders.base import CallerTurn, Hangup, ReplyPart, Responder, Say
from vr3ai.agent.services.audio import silence, split_sentences, synthesize_trimmed, trim_leading_silence
from vr3ai.agent.services.base import ServiceError, SpeechToText, TextToSpeech, Transcript
from vr3ai.agent.services.cache import TtsCache, cache_key
from vr3ai.agent.services.vad import SileroModel, SileroVad, VadEvent, VadParams, VadState
from vr3ai.media.interface import CallAudio, CallEnded, Dtmf, MarkHeard, deliver_frames

log = logging.getLogger(__name__)

DEFAULT_MAX_DURATION_MESSAGE = "I'm sorry, we have reached the time limit for this call. Goodbye."


@dataclass
class PipelineConfig:
    barge_in: bool = True
    turn_end_silence_ms: int = 200
    speech_start_ms: int = 96
    """Speech needed before a turn starts / the agent is interrupted (short noises are ignored)."""
    vad_threshold: float = 0.5
    vad_floor_dbfs: float = -60.0
    """Windows quieter than this skip the VAD model (near-digital silence; saves CPU per call)."""
    idle_timeout_s: float = 10.0
    """Caller silence (after the agent finished speaking) before an ``idle`` turn; 0 disables."""
    max_call_duration_s: float = 600.0
    max_duration_message: str = DEFAULT_MAX_DURATION_MESSAGE
    speculative_stt: bool = True
    spec_after_ms: int = 64
    """Quiet needed before the speculative transcription starts while the STT pool is busy.
    One 32 ms quiet window happens inside words too; two rarely do, and each wasted run costs
    ~0.3 CPU s (14 vs 8 discarded runs per 20 turns, measured)."""
    spec_after_ms_idle: int = 32
    """The same when an STT worker is idle: the early start then costs nothing but idle CPU and
    saves ~40 ms of transcript latency (p50 145 vs 188 ms after VAD end, measured)."""
    pre_roll_ms: int = 300
    min_speech_ms: int = 150
    """Shorter speech is treated as noise and never transcribed."""
    max_utterance_s: float = 30.0
    first_clause_words: int = 5
    synth_ahead: int = 2
    hangup_grace_ms: int = 3000
    """After the last queued audio should have been heard, wait at most this long for its mark."""

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> PipelineConfig:
        c = cls()
        if "barge_in" in settings:
            c.barge_in = bool(settings["barge_in"])
        for key, attr, conv in (
            ("turn_end_silence_ms", "turn_end_silence_ms", int),
            ("speech_start_ms", "speech_start_ms", int),
            ("idle_timeout_s", "idle_timeout_s", float),
            ("max_call_duration_s", "max_call_duration_s", float),
            ("max_duration_message", "max_duration_message", str),
        ):
            if settings.get(key) is not None:
                setattr(c, attr, conv(settings[key]))
        return c


# ------------------------------------------------------------------------------ internals
@dataclass
class _TurnTiming:
    turn: int
    speech_start_ms: int
    speech_end_ms: int
    vad_end_ms: int
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Spec:
    speech_end_ms: int
    task: asyncio.Task[Transcript]
    started_ms: int


@dataclass
class _Line:
    """An agent transcript line being spoken; its text follows what was queued/heard."""

    line: TranscriptLine
    sentences: list[_Played] = field(default_factory=list)


@dataclass
class _Played:
    text: str
    start_sample: int  # position in the agent's cumulative playback timeline
    end_sample: int
    mark: str
    line: _Line


@dataclass
class _Job:
    kind: Literal["say", "hangup"]
    text: str = ""
    fixed: bool = False
    chunks: asyncio.Queue[bytes | BaseException | None] | None = None
    task: asyncio.Task[None] | None = None
    synth_started: float = 0.0
    first_chunk_at: float = 0.0
    reason: str = ""
    assembly: tuple[_Assembly, int] | None = None
    urgent: bool = True


@dataclass
class _Assembly:
    key: tuple[str, str, int, str]
    parts: list[bytes | None]


@dataclass
class _Inbox:
    kind: Literal["turn", "ended", "max_duration"]
    turn: CallerTurn | None = None
    timing: _TurnTiming | None = None


class VoicePipeline:
    """One call's voice agent. Implements :class:`vr3ai.agent.base.Agent`."""

    def __init__(
        self,
        responder: Responder,
        stt: SpeechToText,
        tts: TextToSpeech,
        *,
        config: PipelineConfig | None = None,
        vad_model: SileroModel | None = None,
        cache: TtsCache | None = None,
        fallback_tts: TextToSpeech | None = None,
        owned_services: list[SpeechToText | TextToSpeech] | None = None,
        prepare: Callable[[], Awaitable[None]] | None = None,
        warm: Callable[[list[str], TextToSpeech], object] | None = None,
        notes: list[tuple[Literal["info", "warning", "error"], str]] | None = None,
    ) -> None:
        self.responder = responder
        self.stt = stt
        self.tts = tts
        self.fallback_tts = fallback_tts
        self.config = config or PipelineConfig()
        self.vad_model = vad_model
        self.cache = cache if cache is not None else TtsCache()
        self._owned = owned_services or []
        self._prepare = prepare
        self._warm = warm
        self._notes = notes or []
        self._responder_events_seen = 0
        # per-call state (set in run)
        self._audio: CallAudio | None = None
        self._report = RunReport()
        self._inbox: asyncio.Queue[_Inbox] = asyncio.Queue()
        self._marks: dict[str, asyncio.Future[int]] = {}
        self._played: list[_Played] = []
        self._agent_samples = 0
        self._reply_seq = itertools.count(1)
        self._turn_seq = itertools.count(1)
        self._reply_task: asyncio.Task[None] | None = None
        self._reply_timing: _TurnTiming | None = None
        self._turn_chain: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._ended = False
        self._hanging_up = False
        self._max_fired = False
        self._t0 = 0
        self._last_activity = 0
        self._synth_busy = 0
        self._synth_idle = asyncio.Event()
        self._synth_idle.set()
        # audio capture
        self._vad: SileroVad | None = None
        self._buf = bytearray()
        self._buf_start = 0  # stream sample index of _buf[0]
        self._fed = 0  # samples fed to the VAD
        self._clock_offset = 0  # call clock ms = stream ms + offset
        self._last_frame_clock = 0
        self._capturing = False
        self._muted = False
        self._utt_onset_ms = 0
        self._spec: _Spec | None = None
        self.stats: dict[str, Any] = {"barge_ins": 0, "spec_used": 0, "spec_wasted": 0, "dropped_turns": 0}

    # ------------------------------------------------------------------ Agent protocol
    async def run(self, audio: CallAudio, ctx: CallContext, report: RunReport) -> None:
        self._audio = audio
        self._report = report
        self._t0 = self._last_activity = self._last_frame_clock = audio.clock_ms()
        if audio.sample_rate != 8000:
            # Silero runs natively at 8 kHz here; other rates would need a resampler in front.
            report.event("error", f"unsupported sample rate {audio.sample_rate}", self._t0)
            await audio.hangup("agent error: unsupported sample rate")
            return
        for level, message in self._notes:
            report.event(level, message, self._t0)
        try:
            if self._prepare is not None:
                await self._prepare()
            model = self.vad_model or SileroModel.shared()
            p = self.config
            self._vad = SileroVad(
                model,
                VadParams(
                    threshold=p.vad_threshold,
                    start_ms=p.speech_start_ms,
                    stop_ms=p.turn_end_silence_ms,
                    floor_dbfs=p.vad_floor_dbfs,
                ),
            )
            self._tasks = [
                asyncio.create_task(self._frames_loop(), name="agent-frames"),
                asyncio.create_task(self._events_loop(), name="agent-events"),
                asyncio.create_task(self._ticker(), name="agent-ticker"),
            ]
            await self._control()
        finally:
            await self._shutdown()

    # ------------------------------------------------------------------ control
    async def _control(self) -> None:
        await self._run_reply(self._safe(lambda: self.responder.opening()), None)
        self._tasks.append(asyncio.create_task(self._presynthesize(), name="agent-presynth"))
        while not self._ended:
            item = await self._inbox.get()
            if item.kind == "ended" or self._ended:
                break
            if item.kind == "max_duration":
                self._interrupt("max duration", None)
                parts = self._closing_parts(self.config.max_duration_message, "max call duration reached")
                await self._run_reply(parts, None)
                continue
            assert item.turn is not None
            if self._hanging_up:
                continue
            await self._run_reply(self._safe(partial(self.responder.respond, item.turn)), item.timing)

    async def _closing_parts(self, text: str, reason: str) -> AsyncIterator[ReplyPart]:
        yield Say(text, fixed=True)
        yield Hangup(reason)

    async def _safe(self, make: Callable[[], AsyncIterator[ReplyPart]]) -> AsyncIterator[ReplyPart]:
        try:
            async for part in make():
                yield part
        except Exception as exc:  # a responder bug must not kill the call
            log.exception("responder failed")
            self._report.event("error", f"responder failed: {type(exc).__name__}: {exc}", self._now())

    async def _run_reply(self, parts: AsyncIterator[ReplyPart], timing: _TurnTiming | None) -> None:
        self._reply_timing = timing
        task = asyncio.create_task(self._reply(parts, timing), name="agent-reply")
        self._reply_task = task
        await asyncio.wait({task})
        self._reply_task = None
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("reply failed: %r", exc)
            self._report.event("error", f"reply failed: {type(exc).__name__}: {exc}", self._now())
        self._sync_state()

    # ------------------------------------------------------------------ speaking
    async def _reply(self, parts: AsyncIterator[ReplyPart], timing: _TurnTiming | None) -> None:
        reply_id = next(self._reply_seq)
        jobs: asyncio.Queue[_Job | None] = asyncio.Queue()
        ahead = asyncio.Semaphore(self.config.synth_ahead)
        started: list[_Job] = []
        producer = asyncio.create_task(self._produce(parts, jobs, ahead, started, timing))
        line: _Line | None = None
        n = 0
        try:
            while True:
                job = await jobs.get()
                if job is None:
                    break
                ahead.release()
                if job.kind == "hangup":
                    await self._hangup_after_heard(job.reason)
                    return
                assert job.chunks is not None
                # Hold one chunk back so the sentence's last chunk can carry its mark.
                pending: bytes | None = None
                first = True
                while True:
                    item = await job.chunks.get()
                    if isinstance(item, BaseException):
                        raise item
                    if item is None:
                        break
                    if pending is not None:
                        line = self._play(pending, None, job, line, timing, first)
                        first = False
                    pending = item
                if pending is not None:
                    line = self._play(pending, f"{reply_id}.{n}", job, line, timing, first)
                    n += 1
        finally:
            producer.cancel()
            for job in started:
                if job.task is not None and not job.task.done():
                    job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producer

    async def _produce(
        self,
        parts: AsyncIterator[ReplyPart],
        jobs: asyncio.Queue[_Job | None],
        ahead: asyncio.Semaphore,
        started: list[_Job],
        timing: _TurnTiming | None,
    ) -> None:
        try:
            first_text = True
            first_say = True
            async for part in parts:
                self._sync_state()
                if isinstance(part, Hangup):
                    await jobs.put(_Job("hangup", reason=part.reason))
                    break
                if not isinstance(part, Say) or not part.text.strip():
                    continue
                if first_text and timing is not None:
                    timing.metrics["first_text_ms"] = self._now() - timing.vad_end_ms
                    first_text = False
                cached = self._cache_get(part.text) if part.fixed else None
                assembly: _Assembly | None = None
                if cached is not None:
                    texts: list[tuple[str, bytes | None]] = [(part.text, cached)]
                else:
                    pieces = split_sentences(part.text, self.config.first_clause_words if first_say else 0)
                    texts = [(t, None) for t in pieces]
                    if part.fixed:
                        # Synthesised sentence by sentence for a fast start; the joined audio
                        # becomes the cache entry so the next call plays it instantly.
                        assembly = _Assembly(self._cache_key(part.text), [None] * len(pieces))
                for i, (text, pcm) in enumerate(texts):
                    await ahead.acquire()
                    job = _Job("say", text=text, fixed=part.fixed, chunks=asyncio.Queue())
                    # Only the reply's first sentence is awaited by the caller right now.
                    job.urgent = not started
                    job.assembly = (assembly, i) if assembly is not None else None
                    job.synth_started = time.perf_counter()
                    job.task = asyncio.create_task(self._synth_job(job, pcm))
                    started.append(job)
                    await jobs.put(job)
                first_say = False
        finally:
            await jobs.put(None)
            self._sync_state()

    async def _synth_job(self, job: _Job, cached: bytes | None) -> None:
        assert job.chunks is not None
        q = job.chunks
        if cached is not None:
            job.first_chunk_at = time.perf_counter()
            q.put_nowait(cached)
            q.put_nowait(None)
            return
        self._synth_busy += 1
        self._synth_idle.clear()
        collected: list[bytes] = []
        rate = self.tts.sample_rate
        try:
            try:
                async for chunk in self.tts.stream(job.text, urgent=job.urgent):
                    if not collected:
                        chunk = trim_leading_silence(chunk, rate)
                        if not chunk:
                            continue  # all lead-in so far: the sentence has not started yet
                    if not job.first_chunk_at:
                        job.first_chunk_at = time.perf_counter()
                    q.put_nowait(chunk)
                    collected.append(chunk)
            except ServiceError as exc:
                if self.fallback_tts is None or job.first_chunk_at:
                    raise
                self._report.event("warning", f"TTS failed, using fallback: {exc}", self._now())
                pcm = b"".join([c async for c in self.fallback_tts.stream(job.text, urgent=job.urgent)])
                pcm = trim_leading_silence(pcm, self.fallback_tts.sample_rate)
                job.first_chunk_at = time.perf_counter()
                q.put_nowait(pcm)
                job.assembly = None  # never cache the fallback voice under the primary's key
            q.put_nowait(None)
            if job.assembly is not None:
                asm, i = job.assembly
                asm.parts[i] = b"".join(collected)
                if all(p is not None for p in asm.parts):
                    self.cache.put(asm.key, b"".join(p for p in asm.parts if p is not None))
        except asyncio.CancelledError:
            q.put_nowait(None)
            raise
        except Exception as exc:
            q.put_nowait(exc)
        finally:
            self._synth_busy -= 1
            if self._synth_busy == 0:
                self._synth_idle.set()

    def _cache_key(self, text: str, tts: TextToSpeech | None = None) -> tuple[str, str, int, str]:
        return cache_key(tts or self.tts, text)

    def _cache_get(self, text: str) -> bytes | None:
        return self.cache.get(self._cache_key(text))

    async def _fill_cache(self, text: str) -> None:
        # Waits for idle TTS so a cache fill never delays a live reply's sentence.
        with contextlib.suppress(Exception):
            await self._synth_idle.wait()
            await self.cache.get_or_make(self._cache_key(text), partial(synthesize_trimmed, self.tts, text))

    async def _presynthesize(self) -> None:
        try:
            texts = list(self.responder.fixed_texts())
        except Exception:
            return
        if self.config.max_duration_message:
            texts.append(self.config.max_duration_message)
        for text in texts:
            if self._ended:
                return
            if not text.strip() or self._cache_get(text) is not None:
                continue
            await self._fill_cache(text)

    def _hand_over_fixed_texts(self) -> None:
        # A caller who hangs up or barges in during the first call's greeting cancels its
        # sentence-by-sentence synthesis before the whole text could become a cache entry, and this
        # call's _presynthesize never ran: without this hand-over the greeting would stay uncached
        # for as long as callers keep doing that. The runtime finishes the work after the call.
        if self._warm is None or self.tts.metered:
            return  # cloud voices cost money per character: only what calls really said is cached
        with contextlib.suppress(Exception):
            self._warm(self.responder.fixed_texts(), self.tts)  # it skips what is cached or queued

    def _play(
        self,
        pcm: bytes,
        mark: str | None,
        job: _Job,
        line: _Line | None,
        timing: _TurnTiming | None,
        first_chunk: bool,
    ) -> _Line:
        audio = self._audio
        assert audio is not None
        now = audio.clock_ms()
        queued = audio.queued_ms()
        if line is None:
            tl = self._report.say("agent", "", now + queued, now + queued)
            line = _Line(tl)
            if timing is not None:
                m = timing.metrics
                m["first_audio_ms"] = now - timing.vad_end_ms
                m["tts_first_ms"] = int((job.first_chunk_at - job.synth_started) * 1000)
                m["v2v_ms"] = now + queued - timing.speech_end_ms
        audio.play(pcm, mark=mark)
        start = self._agent_samples
        self._agent_samples += len(pcm) // 2
        if first_chunk:
            played = _Played(job.text, start, self._agent_samples, mark or "", line)
            line.sentences.append(played)
            self._played.append(played)
            line.line.text = " ".join(s.text for s in line.sentences)
        else:
            line.sentences[-1].end_sample = self._agent_samples
        if mark is not None:
            line.sentences[-1].mark = mark
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._marks[mark] = fut
        return line

    async def _hangup_after_heard(self, reason: str) -> None:
        audio = self._audio
        assert audio is not None
        self._hanging_up = True
        pending = [f for f in self._marks.values() if not f.done()]
        if pending:
            timeout = (audio.queued_ms() + self.config.hangup_grace_ms) / 1000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), timeout)
        if self._ended:
            return
        self._report.end_reason = reason
        self._sync_state()
        await audio.hangup(reason)
        self._ended = True
        self._inbox.put_nowait(_Inbox("ended"))

    # ------------------------------------------------------------------ barge-in
    def _agent_busy(self) -> bool:
        if self._reply_task is not None and not self._reply_task.done():
            return True
        if any(not f.done() for f in self._marks.values()):
            return True
        return self._audio is not None and self._audio.queued_ms() > 0

    def _interrupt(self, why: str, onset_clock: int | None) -> None:
        """Stop the agent now: cancel the reply (and its synthesis), drop unheard audio, cut the
        transcript to what was heard."""
        audio = self._audio
        assert audio is not None
        task = self._reply_task
        if task is not None and not task.done():
            task.cancel()
        dropped_ms = audio.flush()
        now = audio.clock_ms()
        heard = max(0, self._agent_samples - dropped_ms * audio.sample_rate // 1000)
        for name, fut in list(self._marks.items()):
            if not fut.done():
                fut.cancel()
            self._marks.pop(name, None)
        # The media session knows exactly what each marked sentence played (it pads every marked
        # sentence to whole frames, which our sample count cannot see); use it when it has it.
        heard_of = getattr(audio, "heard_ms_of", None)
        touched: dict[int, _Line] = {}
        for p in self._played:
            if p.end_sample > heard:
                touched[id(p.line)] = p.line
        for line in touched.values():
            words: list[str] = []
            cut = False
            for s in line.sentences:
                n = s.end_sample - s.start_sample
                done = min(max(heard - s.start_sample, 0), n)
                if s.mark and callable(heard_of):
                    ms = heard_of(s.mark)
                    if ms is not None:
                        done = min(n, ms * audio.sample_rate // 1000)
                sw = s.text.split()
                if done >= n - audio.sample_rate // 50:  # within a frame (ms rounding, padding)
                    words.extend(sw)
                else:
                    words.extend(sw[: int(len(sw) * done / max(1, n))])
                    cut = True
            text = " ".join(words)
            if cut and text:
                text += " ..."
            line.line.text = text
            line.line.end_ms = now
            if not words and line.line in self._report.transcript:
                self._report.transcript.remove(line.line)
        self._played.clear()
        self._agent_samples = heard
        timing = self._reply_timing
        if onset_clock is not None:
            self.stats["barge_ins"] += 1
            info = {"barge_in_ms": now - onset_clock, "dropped_ms": dropped_ms, "why": why}
            if timing is not None:
                timing.metrics.update(interrupted=True, **info)
            else:
                self._report.metrics.append({"turn": None, "interrupted": True, **info})

    # ------------------------------------------------------------------ listening
    def _now(self) -> int:
        return self._audio.clock_ms() if self._audio is not None else 0

    def _clock(self, stream_ms: int) -> int:
        return stream_ms + self._clock_offset

    async def _frames_loop(self) -> None:
        audio = self._audio
        assert audio is not None
        failed = False

        def on_frame(frame: bytes) -> None:
            nonlocal failed
            if self._ended:
                return
            try:
                self._on_audio(frame, audio.clock_ms())
            except Exception as exc:  # keep listening; report the first failure only
                if not failed:
                    failed = True
                    log.exception("audio processing failed")
                    self._report.event("error", f"audio processing failed: {exc!r}", self._now())

        try:
            # The media session calls on_frame from its reader: no task wake-up per 20 ms frame.
            await deliver_frames(audio, on_frame)
        finally:
            if not self._ended:
                self._on_call_ended("media ended")

    def _on_audio(self, pcm: bytes, now: int) -> None:
        vad = self._vad
        assert vad is not None
        self._last_frame_clock = now
        self._buf += pcm
        self._fed += len(pcm) // 2
        self._clock_offset = now - self._fed * 1000 // 8000
        for ev in vad.process(pcm):
            self._on_vad(ev)
        if (
            self._capturing
            and self.config.speculative_stt
            and vad.state is VadState.STOPPING
            and vad.quiet_ms >= self._spec_after_ms()
        ):
            start, end = vad.speech_span
            if self._spec is None or self._spec.speech_end_ms != end:
                self._speculate(start, end)
        if not self._capturing:
            # Enough history for the pre-roll before a speech start that is decided only
            # speech_start_ms (+ a window) after the speech began.
            keep = (self.config.pre_roll_ms + self.config.speech_start_ms + 64) * 16
            if len(self._buf) > keep + 3200:
                drop = len(self._buf) - keep
                del self._buf[:drop]
                self._buf_start += drop // 2
        elif len(self._buf) > self.config.max_utterance_s * 16000:
            # A monologue (or music on hold): transcribe what we have as one turn; whatever
            # follows starts a new one.
            self._finish_utterance(vad.speech_span[0], vad.stream_ms)
            vad.reset()

    def _slice(self, start_ms: int, end_ms: int) -> bytes:
        a = max(0, start_ms * 8 - self._buf_start) * 2
        b = max(0, end_ms * 8 - self._buf_start) * 2
        return bytes(self._buf[a:b])

    def _on_vad(self, ev: VadEvent) -> None:
        if ev.kind == "start":
            self._last_activity = self._now()
            if self._hanging_up or self._ended:
                self._muted = True
                return
            if self._agent_busy():
                if not self.config.barge_in:
                    self._muted = True
                    return
                self._interrupt("caller speech", self._clock(ev.speech_start_ms))
            self._muted = False
            self._capturing = True
            self._utt_onset_ms = max(self._buf_start * 1000 // 8000, ev.speech_start_ms - self.config.pre_roll_ms)
            self._spec = None
        elif ev.kind == "end":
            self._last_activity = self._now()
            if self._muted:
                self._muted = False
                return
            if self._capturing:
                self._finish_utterance(ev.speech_start_ms, ev.speech_end_ms)

    def _utterance_audio(self, speech_end_ms: int) -> bytes:
        # One quiet window of real audio after the speech, then zero padding: identical for the
        # speculative and the final cut, so a speculative result is exactly the final one.
        return self._slice(self._utt_onset_ms, speech_end_ms + 32) + silence(150, 8000)

    def _spec_after_ms(self) -> int:
        stt = self.stt
        idle = getattr(stt, "busy", 0) < getattr(stt, "workers", 1)
        return self.config.spec_after_ms_idle if idle else self.config.spec_after_ms

    def _speculate(self, speech_start_ms: int, speech_end_ms: int) -> None:
        if speech_end_ms - speech_start_ms < self.config.min_speech_ms:
            return
        spec = self._spec
        if spec is not None:
            # The caller went on talking after it started: stale. Cancelling drops it if it is
            # still queued for the STT pool (a running decode cannot be stopped).
            spec.task.cancel()
            self.stats["spec_wasted"] += 1
        pcm = self._utterance_audio(speech_end_ms)
        task = asyncio.create_task(self.stt.transcribe(pcm, 8000))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._spec = _Spec(speech_end_ms, task, self._now())

    def _finish_utterance(self, speech_start_ms: int, speech_end_ms: int) -> None:
        self._capturing = False
        now = self._now()
        if speech_end_ms - speech_start_ms < self.config.min_speech_ms:
            self.stats["dropped_turns"] += 1
            self._spec = None
            return
        spec = self._spec
        self._spec = None
        if spec is not None and spec.speech_end_ms == speech_end_ms:
            stt_task = spec.task
            speculative = True
        else:
            if spec is not None:
                if not spec.task.done():
                    spec.task.cancel()
                self.stats["spec_wasted"] += 1
            stt_task = asyncio.create_task(self.stt.transcribe(self._utterance_audio(speech_end_ms), 8000))
            speculative = False
        timing = _TurnTiming(
            turn=0,
            speech_start_ms=self._clock(speech_start_ms),
            speech_end_ms=self._clock(speech_end_ms),
            vad_end_ms=now,
        )
        timing.metrics["speculative"] = speculative
        prev = self._turn_chain
        self._turn_chain = asyncio.create_task(self._finish_turn(stt_task, timing, prev))
        self._tasks.append(self._turn_chain)

    async def _finish_turn(
        self, stt_task: asyncio.Task[Transcript], timing: _TurnTiming, prev: asyncio.Task[None] | None
    ) -> None:
        try:
            tr = await stt_task
        except ServiceError as exc:
            self._report.event("warning", f"STT failed: {exc}", self._now())
            return
        except Exception as exc:
            log.exception("stt failed")
            self._report.event("error", f"STT failed: {type(exc).__name__}: {exc}", self._now())
            return
        finally:
            if prev is not None and not prev.done():
                await asyncio.wait({prev})
        if timing.metrics.get("speculative"):
            self.stats["spec_used"] += 1
        if not tr.text:
            self.stats["dropped_turns"] += 1
            return
        timing.turn = next(self._turn_seq)
        now = self._now()
        m = timing.metrics
        m.update(
            turn=timing.turn,
            speech_end_ms=timing.speech_end_ms,
            vad_end_ms=timing.vad_end_ms,
            transcript_ms=now - timing.vad_end_ms,
            stt_ms=tr.stt_ms,
        )
        # Keep a stable key order for readers of the run page.
        timing.metrics = {"turn": timing.turn, "kind": "speech", **{k: v for k, v in m.items() if k != "turn"}}
        self._report.metrics.append(timing.metrics)
        self._report.say("caller", tr.text, timing.speech_start_ms, timing.speech_end_ms)
        self._inbox.put_nowait(_Inbox("turn", CallerTurn("speech", text=tr.text), timing))

    # ------------------------------------------------------------------ events
    async def _events_loop(self) -> None:
        assert self._audio is not None
        try:
            async for ev in self._audio.events():
                if isinstance(ev, MarkHeard):
                    self._on_mark(ev)
                elif isinstance(ev, Dtmf):
                    self._on_dtmf(ev)
                elif isinstance(ev, CallEnded):
                    self._on_call_ended(ev.reason)
                    break
        finally:
            if not self._ended:
                self._on_call_ended("media ended")

    def _on_mark(self, ev: MarkHeard) -> None:
        fut = self._marks.pop(ev.name, None)
        if fut is not None and not fut.done():
            fut.set_result(ev.at_ms)
        for p in self._played:
            if p.mark == ev.name:
                p.line.line.end_ms = max(p.line.line.end_ms, ev.at_ms)
                break
        if not self._marks:
            self._last_activity = ev.at_ms
            self._played.clear()

    def _on_dtmf(self, ev: Dtmf) -> None:
        self._last_activity = self._now()
        if self._hanging_up or self._ended:
            return
        if self.config.barge_in and self._agent_busy():
            self._interrupt("dtmf", ev.at_ms)
        self._report.say("caller", f"[DTMF {ev.digit}]", ev.at_ms, ev.at_ms)
        timing = self._event_timing("dtmf", ev.at_ms)
        self._inbox.put_nowait(_Inbox("turn", CallerTurn("dtmf", dtmf=ev.digit), timing))

    def _event_timing(self, kind: str, at_ms: int) -> _TurnTiming:
        """Timing of a turn that is not speech (DTMF, idle): latencies count from ``at_ms``."""
        timing = _TurnTiming(next(self._turn_seq), at_ms, at_ms, at_ms)
        timing.metrics = {"turn": timing.turn, "kind": kind, "vad_end_ms": at_ms}
        self._report.metrics.append(timing.metrics)
        return timing

    def _on_call_ended(self, reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        if self._report.end_reason is None:
            self._report.end_reason = reason
        task = self._reply_task
        if task is not None and not task.done():
            task.cancel()
        self._inbox.put_nowait(_Inbox("ended"))

    async def _ticker(self) -> None:
        audio = self._audio
        vad = self._vad
        assert audio is not None and vad is not None
        idle_ms = int(self.config.idle_timeout_s * 1000)
        max_ms = int(self.config.max_call_duration_s * 1000)
        while not self._ended:
            await asyncio.sleep(0.1)
            try:
                self._tick(audio, vad, idle_ms, max_ms)
            except Exception:
                log.exception("agent ticker failed")

    def _tick(self, audio: CallAudio, vad: SileroVad, idle_ms: int, max_ms: int) -> None:
        now = audio.clock_ms()
        # Some media paths send nothing while the caller is silent: feed the silence so the
        # VAD can end the turn.
        gap = now - self._last_frame_clock
        if gap > 120 and (self._capturing or vad.state is not VadState.QUIET):
            self._on_audio(silence(gap, 8000), now)
        if max_ms > 0 and not self._max_fired and now - self._t0 >= max_ms:
            self._max_fired = True
            self._report.event("info", "maximum call duration reached", now)
            task = self._reply_task
            if task is not None and not task.done() and not self._hanging_up:
                task.cancel()
            self._inbox.put_nowait(_Inbox("max_duration"))
        if (
            idle_ms > 0
            and not self._hanging_up
            and not self._capturing
            and vad.state is VadState.QUIET
            and self._inbox.empty()
            and (self._turn_chain is None or self._turn_chain.done())
            and not self._agent_busy()
            and now - self._last_activity >= idle_ms
        ):
            self._last_activity = now
            timing = self._event_timing("idle", now)
            self._inbox.put_nowait(_Inbox("turn", CallerTurn("idle"), timing))

    # ------------------------------------------------------------------ teardown
    def _sync_state(self) -> None:
        with contextlib.suppress(Exception):
            st = self.responder.state
            self._report.variables.update(st.variables)
            self._report.node_path = list(st.node_path)
            events = getattr(st, "events", None) or []
            now = self._now()
            for ev in events[self._responder_events_seen :]:
                self._report.event(ev.get("level", "warning"), str(ev.get("message", "")), ev.get("at_ms") or now)
            self._responder_events_seen = len(events)

    async def _shutdown(self) -> None:
        self._ended = True
        task = self._reply_task
        if task is not None and not task.done():
            task.cancel()
        for t in self._tasks:
            if not t.done():
                t.cancel()
        spec = self._spec
        if spec is not None and not spec.task.done():
            spec.task.cancel()
        await asyncio.gather(*self._tasks, *([task] if task else []), return_exceptions=True)
        for fut in self._marks.values():
            if not fut.done():
                fut.cancel()
        self._sync_state()
        self._hand_over_fixed_texts()
        aclose = getattr(self.responder, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
        for svc in self._owned:
            with contextlib.suppress(Exception):
                await svc.close()
