"""``TurnDetector``: the caller's audio in, the caller's turns out (VAD, buffer, pre-roll,
speculative transcription).

The shape is livekit-agents' ``AudioRecognition`` reporting to its ``AgentActivity`` through
``RecognitionHooks``: the detector decides *when* the caller talks and *what* they said, the
coordinator decides what that means for the call (barge-in, muting while it hangs up, turn numbers,
the report). It takes frames and the time they arrived on the call clock, and reads that clock
through an injected function, so a test can drive it frame by frame.

Flow: frames -> ``SileroVad`` (32 ms windows). ``start`` (``speech_start_ms`` of speech) asks the
hooks whether to listen (``on_start_of_speech``; the coordinator interrupts the agent there) and
starts capture with a ``pre_roll_ms`` pre-roll. After 32 ms of quiet (64 ms when the STT pool is
busy) a speculative transcription of the audio so far starts; if the caller resumes it is
discarded. ``end`` (``turn_end_silence_ms`` of quiet) takes the speculative result if no speech
came after it, else transcribes now: the stop window and STT overlap instead of adding up.
Transcripts reach ``on_transcript`` in the order the turns were spoken, even when a later
transcription finishes first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from vr3ai.agent.config import PipelineConfig
from vr3ai.agent.services.audio import silence
from vr3ai.agent.services.base import ServiceError, SpeechToText, Transcript
from vr3ai.agent.services.vad import SileroVad, VadEvent, VadState

log = logging.getLogger(__name__)

PRE_ROLL_SLACK_MS = 64
"""History kept beyond pre-roll + speech start: the start is decided up to a window late."""
TRIM_HYSTERESIS_MS = 200
"""The history is trimmed in steps of this much, not on every frame."""
TAIL_MS = 32
"""Real audio kept after the end of speech: one quiet VAD window."""
PAD_MS = 150
"""Zero padding after it (Whisper decodes a clean ending better)."""


@dataclass
class TurnTiming:
    """When one caller turn happened (call clock ms) and the metrics row it will fill."""

    turn: int
    speech_start_ms: int
    speech_end_ms: int
    vad_end_ms: int
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class TurnStats:
    """Counters of one agent (benchmarks read them)."""

    barge_ins: int = 0
    spec_used: int = 0
    spec_wasted: int = 0
    dropped_turns: int = 0


class TurnHooks(Protocol):
    def on_start_of_speech(self, onset_ms: int) -> bool:
        """The caller started talking at ``onset_ms`` (call clock). Return False to ignore this
        speech until it ends (the agent is hanging up, or talking with barge-in off)."""
        ...

    def on_end_of_speech(self) -> None:
        """The VAD's stop window passed after the caller's speech (ignored speech included)."""
        ...

    def on_transcript(self, transcript: Transcript, timing: TurnTiming) -> None:
        """A caller turn's (non-empty) transcript, in the order the turns were spoken."""
        ...

    def on_problem(self, level: Literal["warning", "error"], message: str) -> None:
        """Transcription failed; the turn is lost."""
        ...


@dataclass
class _Spec:
    speech_end_ms: int
    task: asyncio.Task[Transcript]
    started_ms: int


class TurnDetector:
    def __init__(
        self,
        vad: SileroVad,
        stt: SpeechToText,
        hooks: TurnHooks,
        *,
        config: PipelineConfig,
        clock: Callable[[], int],
        sample_rate: int,
        stats: TurnStats | None = None,
        started_ms: int | None = None,
    ) -> None:
        self._vad = vad
        self._stt = stt
        self._hooks = hooks
        self._config = config
        self._clock = clock
        self.sample_rate = sample_rate
        self.stats = stats if stats is not None else TurnStats()
        self._buf = bytearray()
        self._buf_start = 0  # stream sample index of _buf[0]
        self._fed = 0  # samples fed to the VAD
        self._clock_offset = 0  # call clock ms = stream ms + offset
        self.last_frame_ms = clock() if started_ms is None else started_ms
        self._capturing = False
        self._muted = False
        self._utt_onset_ms = 0
        self._spec: _Spec | None = None
        self._chain: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ state for the coordinator
    @property
    def quiet(self) -> bool:
        """Nobody is talking on the caller's side and no utterance is being captured."""
        return not self._capturing and self._vad.state is VadState.QUIET

    @property
    def transcribing(self) -> bool:
        """A finished utterance is still on its way to ``on_transcript``."""
        return self._chain is not None and not self._chain.done()

    # ------------------------------------------------------------------ input
    def _bytes(self, ms: float) -> int:
        return int(ms * self.sample_rate) // 1000 * 2

    def _stream_clock(self, stream_ms: int) -> int:
        return stream_ms + self._clock_offset

    def feed(self, pcm: bytes, now_ms: int) -> None:
        """Caller audio (PCM16 at ``sample_rate``) whose last sample arrived at ``now_ms``."""
        vad = self._vad
        cfg = self._config
        self.last_frame_ms = now_ms
        self._buf += pcm
        self._fed += len(pcm) // 2
        self._clock_offset = now_ms - self._fed * 1000 // self.sample_rate
        for ev in vad.process(pcm):
            self._on_vad(ev)
        if (
            self._capturing
            and cfg.speculative_stt
            and vad.state is VadState.STOPPING
            and vad.quiet_ms >= self._spec_after_ms()
        ):
            start, end = vad.speech_span
            if self._spec is None or self._spec.speech_end_ms != end:
                self._speculate(start, end)
        if not self._capturing:
            # Enough history for the pre-roll before a speech start that is decided only
            # speech_start_ms (+ a window) after the speech began.
            keep = self._bytes(cfg.pre_roll_ms + cfg.speech_start_ms + PRE_ROLL_SLACK_MS)
            if len(self._buf) > keep + self._bytes(TRIM_HYSTERESIS_MS):
                drop = len(self._buf) - keep
                del self._buf[:drop]
                self._buf_start += drop // 2
        elif len(self._buf) > self._bytes(cfg.max_utterance_s * 1000):
            # A monologue (or music on hold): transcribe what we have as one turn; whatever
            # follows starts a new one.
            self._finish_utterance(vad.speech_span[0], vad.stream_ms)
            vad.reset()

    def catch_up(self, now_ms: int, max_gap_ms: int = 120) -> None:
        """Some media paths send nothing while the caller is silent: feed the silence since the
        last frame so the VAD can end the turn (only while someone is talking)."""
        gap = now_ms - self.last_frame_ms
        if gap > max_gap_ms and not self.quiet:
            self.feed(silence(gap, self.sample_rate), now_ms)

    # ------------------------------------------------------------------ turns
    def _slice(self, start_ms: int, end_ms: int) -> bytes:
        rate = self.sample_rate
        a = max(0, start_ms * rate // 1000 - self._buf_start) * 2
        b = max(0, end_ms * rate // 1000 - self._buf_start) * 2
        return bytes(self._buf[a:b])

    def _on_vad(self, ev: VadEvent) -> None:
        if ev.kind == "start":
            if not self._hooks.on_start_of_speech(self._stream_clock(ev.speech_start_ms)):
                self._muted = True
                return
            self._muted = False
            self._capturing = True
            buffered_from = self._buf_start * 1000 // self.sample_rate
            self._utt_onset_ms = max(buffered_from, ev.speech_start_ms - self._config.pre_roll_ms)
            self._spec = None
        elif ev.kind == "end":
            self._hooks.on_end_of_speech()
            if self._muted:
                self._muted = False
                return
            if self._capturing:
                self._finish_utterance(ev.speech_start_ms, ev.speech_end_ms)

    def _utterance_audio(self, speech_end_ms: int) -> bytes:
        # One quiet window of real audio after the speech, then zero padding: identical for the
        # speculative and the final cut, so a speculative result is exactly the final one.
        return self._slice(self._utt_onset_ms, speech_end_ms + TAIL_MS) + silence(PAD_MS, self.sample_rate)

    def _spec_after_ms(self) -> int:
        cfg = self._config
        return cfg.spec_after_ms_idle if self._stt.has_idle_worker() else cfg.spec_after_ms

    def _speculate(self, speech_start_ms: int, speech_end_ms: int) -> None:
        if speech_end_ms - speech_start_ms < self._config.min_speech_ms:
            return
        spec = self._spec
        if spec is not None:
            # The caller went on talking after it started: stale. Cancelling drops it if it is
            # still queued for the STT pool (a running decode cannot be stopped).
            spec.task.cancel()
            self.stats.spec_wasted += 1
        pcm = self._utterance_audio(speech_end_ms)
        task = asyncio.create_task(self._stt.transcribe(pcm, self.sample_rate))
        # Retrieve a discarded run's exception so asyncio does not warn about it.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._spec = _Spec(speech_end_ms, task, self._clock())

    def _finish_utterance(self, speech_start_ms: int, speech_end_ms: int) -> None:
        self._capturing = False
        now = self._clock()
        if speech_end_ms - speech_start_ms < self._config.min_speech_ms:
            self.stats.dropped_turns += 1
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
                self.stats.spec_wasted += 1
            pcm = self._utterance_audio(speech_end_ms)
            stt_task = asyncio.create_task(self._stt.transcribe(pcm, self.sample_rate))
            speculative = False
        timing = TurnTiming(
            turn=0,
            speech_start_ms=self._stream_clock(speech_start_ms),
            speech_end_ms=self._stream_clock(speech_end_ms),
            vad_end_ms=now,
        )
        timing.metrics["speculative"] = speculative
        prev = self._chain
        self._chain = asyncio.create_task(self._finish_turn(stt_task, timing, prev))
        self._tasks.append(self._chain)

    async def _finish_turn(
        self, stt_task: asyncio.Task[Transcript], timing: TurnTiming, prev: asyncio.Task[None] | None
    ) -> None:
        try:
            tr = await stt_task
        except ServiceError as exc:
            self._hooks.on_problem("warning", f"STT failed: {exc}")
            return
        except Exception as exc:
            log.exception("stt failed")
            self._hooks.on_problem("error", f"STT failed: {type(exc).__name__}: {exc}")
            return
        finally:
            # Turns are reported in the order they were spoken.
            if prev is not None and not prev.done():
                await asyncio.wait({prev})
        if timing.metrics.get("speculative"):
            self.stats.spec_used += 1
        if not tr.text:
            self.stats.dropped_turns += 1
            return
        self._hooks.on_transcript(tr, timing)

    async def aclose(self) -> None:
        """Stop transcribing: cancel the speculative run and turns still on their way."""
        spec = self._spec
        if spec is not None and not spec.task.done():
            spec.task.cancel()
        for t in self._tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
