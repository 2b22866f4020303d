"""The voice agent: caller audio -> VAD -> STT -> responder -> TTS -> caller, with barge-in.

Decision: an own thin asyncio pipeline, not a pipecat-ai ``Pipeline``
---------------------------------------------------------------------
pipecat-ai is the field's framework and works offline here. We reuse exactly the libraries it uses
(the Silero ONNX file it bundles, faster-whisper, Piper, soxr) but not its pipeline, because every
stage that decides our latency targets would have to be replaced, leaving only pipecat's frame
plumbing: meeting voice-to-voice p50 <= 600 ms needs the turn to end on the VAD, transcription
started *speculatively* inside the stop window and Whisper on a short window (a custom turn
strategy and a custom STT service); barge-in <= 300 ms needs no smoothed volume gate; call setup
<= 150 ms needs models loaded once per process (``VoiceRuntime``), not per call in service
constructors; pipecat's ``PiperTTSService`` would import GPL piper-tts into the platform process;
and our media session already paces audio, flushes and reports heard marks. What we give up:
pipecat's service catalogue and its evals. pipecat stays installed: it ships the Silero model.
The measurements behind each point, and the agent's latency figures, are in ``bench/README.md``.

Shape: a coordinator of small parts (livekit-agents' ``AgentActivity`` shape)
------------------------------------------------------------------------------
* :class:`~vr3ai.agent.turns.TurnDetector` turns caller frames into caller turns and reports
  through :class:`~vr3ai.agent.turns.TurnHooks`;
* :class:`~vr3ai.agent.speaker.ReplySpeaker` says one reply at a time and keeps a
  :class:`~vr3ai.agent.heard.HeardTranscript`, the agent's lines cut to what the caller heard;
* :class:`~vr3ai.agent.timers.CallTimers` fire the idle turn and the maximum call duration.

:class:`Conversation` (this module) is the live call: it implements those hooks, decides barge-in,
numbers the turns and runs one reply at a time from its inbox (caller turns, DTMF, idle, the time
limit). :class:`VoicePipeline` is what the factory builds: it holds the services, assembles the
parts for a call and releases what the call held, whatever happened. Per turn, ``RunReport.metrics`` gets ``turn, kind,
speech_end_ms, vad_end_ms, transcript_ms, first_text_ms, first_audio_ms, stt_ms, tts_first_ms,
v2v_ms, speculative`` (and ``interrupted, barge_in_ms`` when cut); ``*_ms`` latencies count from
``vad_end_ms``, ``v2v_ms`` from the caller's last speech. Three tasks per call (frames, events, a
100 ms ticker) plus one per reply being spoken.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from vr3ai.agent.base import CallContext, RunReport
from vr3ai.agent.config import DEFAULT_MAX_DURATION_MESSAGE, PipelineConfig
from vr3ai.agent.responding import ResponderLink
from vr3ai.agent.services.base import SpeechToText, TextToSpeech, Transcript
from vr3ai.agent.services.cache import TtsCache
from vr3ai.agent.services.vad import SileroModel, SileroVad, VadParams
from vr3ai.agent.speaker import ReplySpeaker, Warm
from vr3ai.agent.timers import CallTimers
from vr3ai.agent.turns import TurnDetector, TurnStats, TurnTiming
from vr3ai.media.interface import CallAudio, CallEnded, Dtmf, MarkHeard, deliver_frames
from vr3ai.workflows.responder import CallerTurn, ReplyPart, Responder

__all__ = ["DEFAULT_MAX_DURATION_MESSAGE", "Conversation", "PipelineConfig", "VoicePipeline"]

log = logging.getLogger(__name__)

TICK_S = 0.1
"""How often the ticker feeds silence gaps to the turn detector and polls the call timers."""

Note = tuple[Literal["info", "warning", "error"], str]


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
        warm: Warm | None = None,
        notes: list[Note] | None = None,
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
        self.warm = warm
        self._notes = notes or []
        self._stats = TurnStats()

    @property
    def stats(self) -> dict[str, int]:
        """``barge_ins``, ``spec_used``, ``spec_wasted``, ``dropped_turns`` so far."""
        return dataclasses.asdict(self._stats)

    async def run(self, audio: CallAudio, ctx: CallContext, report: RunReport) -> None:
        t0 = audio.clock_ms()
        if audio.sample_rate != SileroVad.sample_rate:
            # Silero runs natively at 8 kHz here; other rates would need a resampler in front.
            report.event("error", f"unsupported sample rate {audio.sample_rate}", t0)
            await audio.hangup("agent error: unsupported sample rate")
            return
        for level, message in self._notes:
            report.event(level, message, t0)
        cfg = self.config
        link = ResponderLink(self.responder, report, audio.clock_ms)
        call = Conversation(audio, report, link, self, stats=self._stats, started_ms=t0)
        try:
            if self._prepare is not None:
                await self._prepare()
            params = VadParams(
                threshold=cfg.vad_threshold,
                start_ms=cfg.speech_start_ms,
                stop_ms=cfg.turn_end_silence_ms,
                floor_dbfs=cfg.vad_floor_dbfs,
            )
            await call.run(SileroVad(self.vad_model or SileroModel.shared(), params))
        finally:
            await call.stop()
            await self._release(link, call.speaker)

    async def _release(self, link: ResponderLink, speaker: ReplySpeaker) -> None:
        # Every step runs even if one fails; failures are logged, never raised into the call owner.
        steps: list[tuple[str, Callable[[], Awaitable[None] | None]]] = [
            ("hand over fixed texts", lambda: speaker.hand_over(link.fixed_texts())),
            ("close the responder", link.aclose),
        ]
        steps += [(f"close {type(svc).__name__}", svc.close) for svc in self._owned]
        for what, step in steps:
            try:
                result = step()
                if result is not None:
                    await result
            except Exception:
                log.exception("agent teardown: %s failed", what)


@dataclass
class _Inbox:
    kind: Literal["turn", "ended", "max_duration"]
    turn: CallerTurn | None = None
    timing: TurnTiming | None = None


class Conversation:
    """The live call: the coordinator of the turn detector, the reply speaker and the timers, and
    the implementation of their hooks (:class:`~vr3ai.agent.turns.TurnHooks`,
    :class:`~vr3ai.agent.speaker.SpeakerHooks`, :class:`~vr3ai.agent.timers.TimerHooks`)."""

    def __init__(
        self,
        audio: CallAudio,
        report: RunReport,
        link: ResponderLink,
        agent: VoicePipeline,
        *,
        stats: TurnStats,
        started_ms: int,
    ) -> None:
        self._audio = audio
        self._report = report
        self._link = link
        self._stt = agent.stt
        self.config = cfg = agent.config
        self._stats = stats
        self.speaker = ReplySpeaker(
            audio,
            report,
            self,
            tts=agent.tts,
            fallback_tts=agent.fallback_tts,
            cache=agent.cache,
            config=cfg,
            warm=agent.warm,
        )
        self._timers = CallTimers(
            audio.clock_ms,
            self,
            idle_timeout_ms=int(cfg.idle_timeout_s * 1000),
            max_duration_ms=int(cfg.max_call_duration_s * 1000),
            started_ms=started_ms,
        )
        self._turns: TurnDetector | None = None
        self._inbox: asyncio.Queue[_Inbox] = asyncio.Queue()
        self._turn_seq = itertools.count(1)
        self._reply_task: asyncio.Task[None] | None = None
        self._reply_timing: TurnTiming | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._ended = False
        self._hanging_up = False
        self._stopped = False

    def _now(self) -> int:
        return self._audio.clock_ms()

    async def run(self, vad: SileroVad) -> None:
        audio = self._audio
        turns = TurnDetector(
            vad,
            self._stt,
            self,
            config=self.config,
            clock=audio.clock_ms,
            sample_rate=audio.sample_rate,
            stats=self._stats,
            started_ms=self._timers.started_ms,
        )
        self._turns = turns
        self._tasks = [
            asyncio.create_task(self._frames_loop(turns), name="agent-frames"),
            asyncio.create_task(self._events_loop(), name="agent-events"),
            asyncio.create_task(self._ticker(turns), name="agent-ticker"),
        ]
        try:
            await self._control()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """End the call's tasks (replies, listening, transcriptions) and settle the report."""
        if self._stopped:
            return
        self._stopped = True
        self._ended = True
        task = self._reply_task
        if task is not None and not task.done():
            task.cancel()
        for t in self._tasks:
            if not t.done():
                t.cancel()
        turns = self._turns.aclose() if self._turns is not None else asyncio.sleep(0)
        await asyncio.gather(turns, *self._tasks, *([task] if task else []), return_exceptions=True)
        self.speaker.close()
        self._link.sync()

    # ------------------------------------------------------------------ control
    async def _control(self) -> None:
        link, cfg = self._link, self.config
        await self._run_reply(link.opening(), None)
        texts = link.fixed_texts() + ([cfg.max_duration_message] if cfg.max_duration_message else [])
        presynth = self.speaker.presynthesize(texts, lambda: self._ended)
        self._tasks.append(asyncio.create_task(presynth, name="agent-presynth"))
        while not self._ended:
            item = await self._inbox.get()
            if item.kind == "ended" or self._ended:
                break
            if item.kind == "max_duration":
                self._interrupt("max duration", None)
                await self._run_reply(link.closing(cfg.max_duration_message, "max call duration reached"), None)
                continue
            assert item.turn is not None
            if self._hanging_up:
                continue
            await self._run_reply(link.respond(item.turn), item.timing)

    async def _run_reply(self, parts: AsyncIterator[ReplyPart], timing: TurnTiming | None) -> None:
        self._reply_timing = timing
        task = asyncio.create_task(self.speaker.speak(parts, timing), name="agent-reply")
        self._reply_task = task
        await asyncio.wait({task})
        self._reply_task = None
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("reply failed: %r", exc)
            self._report.event("error", f"reply failed: {type(exc).__name__}: {exc}", self._now())
        self._link.sync()

    # ------------------------------------------------------------------ barge-in
    def _agent_busy(self) -> bool:
        if self._reply_task is not None and not self._reply_task.done():
            return True
        return self.speaker.talking

    def _interrupt(self, why: str, onset_clock: int | None) -> None:
        """Stop the agent now: cancel the reply (and its synthesis), drop unheard audio, cut the
        transcript to what was heard."""
        task = self._reply_task
        if task is not None and not task.done():
            task.cancel()
        dropped_ms, now = self.speaker.stop()
        if onset_clock is not None:
            self._stats.barge_ins += 1
            info = {"barge_in_ms": now - onset_clock, "dropped_ms": dropped_ms, "why": why}
            timing = self._reply_timing
            if timing is not None:
                timing.metrics.update(interrupted=True, **info)
            else:
                self._report.metrics.append({"turn": None, "interrupted": True, **info})

    # ------------------------------------------------------------------ TurnHooks
    def on_start_of_speech(self, onset_ms: int) -> bool:
        self._timers.activity()
        if self._hanging_up or self._ended:
            return False
        if self._agent_busy():
            if not self.config.barge_in:
                return False
            self._interrupt("caller speech", onset_ms)
        return True

    def on_end_of_speech(self) -> None:
        self._timers.activity()

    def on_transcript(self, transcript: Transcript, timing: TurnTiming) -> None:
        timing.turn = next(self._turn_seq)
        m = timing.metrics
        m.update(
            turn=timing.turn,
            speech_end_ms=timing.speech_end_ms,
            vad_end_ms=timing.vad_end_ms,
            transcript_ms=self._now() - timing.vad_end_ms,
            stt_ms=transcript.stt_ms,
        )
        # Keep a stable key order for readers of the run page.
        timing.metrics = {"turn": timing.turn, "kind": "speech", **{k: v for k, v in m.items() if k != "turn"}}
        self._report.metrics.append(timing.metrics)
        self._report.say("caller", transcript.text, timing.speech_start_ms, timing.speech_end_ms)
        self._inbox.put_nowait(_Inbox("turn", CallerTurn("speech", text=transcript.text), timing))

    def on_problem(self, level: Literal["warning", "error"], message: str) -> None:
        self._report.event(level, message, self._now())

    # ------------------------------------------------------------------ SpeakerHooks
    def on_reply_part(self) -> None:
        self._link.sync()

    async def on_hangup(self, reason: str) -> None:
        self._hanging_up = True
        await self.speaker.wait_heard()
        if self._ended:
            return
        self._report.end_reason = reason
        self._link.sync()
        await self._audio.hangup(reason)
        self._ended = True
        self._inbox.put_nowait(_Inbox("ended"))

    # ------------------------------------------------------------------ TimerHooks
    def on_max_duration(self, now_ms: int) -> None:
        self._report.event("info", "maximum call duration reached", now_ms)
        task = self._reply_task
        if task is not None and not task.done() and not self._hanging_up:
            task.cancel()
        self._inbox.put_nowait(_Inbox("max_duration"))

    def may_go_idle(self) -> bool:
        turns = self._turns
        return (
            not self._hanging_up
            and turns is not None
            and turns.quiet
            and self._inbox.empty()
            and not turns.transcribing
            and not self._agent_busy()
        )

    def on_idle(self, now_ms: int) -> None:
        timing = self._event_timing("idle", now_ms)
        self._inbox.put_nowait(_Inbox("turn", CallerTurn("idle"), timing))

    # ------------------------------------------------------------------ the call's inputs
    async def _frames_loop(self, turns: TurnDetector) -> None:
        audio = self._audio
        failed = False

        def on_frame(frame: bytes) -> None:
            nonlocal failed
            if self._ended:
                return
            try:
                turns.feed(frame, audio.clock_ms())
            except Exception as exc:  # keep listening; report the first failure only
                if not failed:
                    failed = True
                    log.exception("audio processing failed")
                    self._report.event("error", f"audio processing failed: {exc!r}", self._now())

        try:
            # The media session calls on_frame from its reader: no task wake-up per 20 ms frame.
            await deliver_frames(audio, on_frame)
        finally:
            self._on_call_ended("media ended")

    async def _events_loop(self) -> None:
        try:
            async for ev in self._audio.events():
                if isinstance(ev, MarkHeard):
                    if self.speaker.on_mark(ev):
                        self._timers.activity(ev.at_ms)
                elif isinstance(ev, Dtmf):
                    self._on_dtmf(ev)
                elif isinstance(ev, CallEnded):
                    self._on_call_ended(ev.reason)
                    break
        finally:
            self._on_call_ended("media ended")

    def _on_dtmf(self, ev: Dtmf) -> None:
        self._timers.activity()
        if self._hanging_up or self._ended:
            return
        if self.config.barge_in and self._agent_busy():
            self._interrupt("dtmf", ev.at_ms)
        self._report.say("caller", f"[DTMF {ev.digit}]", ev.at_ms, ev.at_ms)
        timing = self._event_timing("dtmf", ev.at_ms)
        self._inbox.put_nowait(_Inbox("turn", CallerTurn("dtmf", dtmf=ev.digit), timing))

    def _event_timing(self, kind: str, at_ms: int) -> TurnTiming:
        """Timing of a turn that is not speech (DTMF, idle): latencies count from ``at_ms``."""
        timing = TurnTiming(next(self._turn_seq), at_ms, at_ms, at_ms)
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

    async def _ticker(self, turns: TurnDetector) -> None:
        clock = self._audio.clock_ms
        while not self._ended:
            await asyncio.sleep(TICK_S)
            try:
                turns.catch_up(clock())
                self._timers.poll()
            except Exception:
                log.exception("agent ticker failed")
