"""``ReplySpeaker``: the agent's side of a call, one reply at a time (sentence jobs, synthesis
ahead of playback, cached fixed texts, a fallback voice, marks).

Each ``Say`` is split into sentences (a long first sentence at its first comma, since Piper's time
to first audio grows with sentence length), each synthesised as soon as it is known (up to
``synth_ahead`` ahead of playback; only the reply's first is "urgent" for the shared Piper queue)
and played with a mark ``<reply>.<n>``, so the :class:`~vr3ai.agent.heard.HeardTranscript` knows
what the caller heard. Fixed texts play from the TTS cache, are pre-synthesised when the call
starts (``presynthesize``) and, when a fixed text had to be synthesised sentence by sentence, the
joined audio becomes its cache entry. If the voice fails before its first chunk, the fallback voice
says the sentence. A ``Hangup`` part goes to the coordinator (``SpeakerHooks.on_hangup``), which
waits for the last mark (``wait_heard``) before it hangs up.

Cancelling the task running :meth:`speak` cancels its synthesis; :meth:`stop` then drops the
unheard audio and cuts the transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal, Protocol

from vr3ai.agent.base import RunReport
from vr3ai.agent.config import PipelineConfig
from vr3ai.agent.heard import AgentLine, HeardTranscript
from vr3ai.agent.services.audio import split_sentences, synthesize_trimmed, trim_leading_silence
from vr3ai.agent.services.base import ServiceError, TextToSpeech
from vr3ai.agent.services.cache import TtsCache, cache_key
from vr3ai.agent.turns import TurnTiming
from vr3ai.media.interface import CallAudio, HeardPosition, MarkHeard
from vr3ai.workflows.responder import Hangup, ReplyPart, Say

log = logging.getLogger(__name__)

Warm = Callable[[list[str], TextToSpeech], object]
"""Hands fixed texts to the process's runtime to be synthesised into the cache after the call."""


class SpeakerHooks(Protocol):
    def on_reply_part(self) -> None:
        """Before each part of a reply and after its last: the responder may have moved on."""
        ...

    async def on_hangup(self, reason: str) -> None:
        """The reply ends the call; everything before the ``Hangup`` part has been queued."""
        ...


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


class ReplySpeaker:
    def __init__(
        self,
        audio: CallAudio,
        report: RunReport,
        hooks: SpeakerHooks,
        *,
        tts: TextToSpeech,
        fallback_tts: TextToSpeech | None,
        cache: TtsCache,
        config: PipelineConfig,
        warm: Warm | None = None,
    ) -> None:
        self._audio = audio
        self._report = report
        self._hooks = hooks
        self.tts = tts
        self.fallback_tts = fallback_tts
        self.cache = cache
        self._config = config
        self._warm = warm
        self.heard = HeardTranscript(report, audio.sample_rate)
        self._marks: dict[str, asyncio.Future[int]] = {}
        self._reply_seq = itertools.count(1)
        self._synth_busy = 0
        self._synth_idle = asyncio.Event()
        self._synth_idle.set()

    def _now(self) -> int:
        return self._audio.clock_ms()

    # ------------------------------------------------------------------ state for the coordinator
    @property
    def talking(self) -> bool:
        """Agent audio is queued or playing (or a mark of it has not come back yet)."""
        return any(not f.done() for f in self._marks.values()) or self._audio.queued_ms() > 0

    def on_mark(self, ev: MarkHeard) -> bool:
        """A mark came back; True when it was the last one outstanding (all audio heard)."""
        fut = self._marks.pop(ev.name, None)
        if fut is not None and not fut.done():
            fut.set_result(ev.at_ms)
        self.heard.marked(ev.name, ev.at_ms)
        if not self._marks:
            self.heard.settled()
            return True
        return False

    async def wait_heard(self) -> None:
        """Until every mark queued so far came back, or the audio should long have been heard."""
        pending = [f for f in self._marks.values() if not f.done()]
        if pending:
            timeout = (self._audio.queued_ms() + self._config.hangup_grace_ms) / 1000
            with contextlib.suppress(TimeoutError):  # the mark got lost: hang up anyway
                await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), timeout)

    def stop(self) -> tuple[int, int]:
        """Barge-in: drop the unheard audio and cut the transcript to what was heard. The caller
        cancels the reply's task. Returns (ms dropped, call clock ms of the flush)."""
        audio = self._audio
        dropped_ms = audio.flush()
        now = audio.clock_ms()
        for fut in self._marks.values():
            if not fut.done():
                fut.cancel()
        self._marks.clear()
        heard_of = audio.heard_ms_of if isinstance(audio, HeardPosition) else None
        self.heard.cut(dropped_ms, now, heard_of)
        return dropped_ms, now

    def close(self) -> None:
        for fut in self._marks.values():
            if not fut.done():
                fut.cancel()

    # ------------------------------------------------------------------ one reply
    async def speak(self, parts: AsyncIterator[ReplyPart], timing: TurnTiming | None) -> None:
        """Say a reply; returns when all of it is queued (or a ``Hangup`` part was handled)."""
        reply_id = next(self._reply_seq)
        jobs: asyncio.Queue[_Job | None] = asyncio.Queue()
        ahead = asyncio.Semaphore(self._config.synth_ahead)
        started: list[_Job] = []
        producer = asyncio.create_task(self._produce(parts, jobs, ahead, started, timing))
        line: AgentLine | None = None
        n = 0
        try:
            while True:
                job = await jobs.get()
                if job is None:
                    break
                ahead.release()
                if job.kind == "hangup":
                    await self._hooks.on_hangup(job.reason)
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
            await asyncio.wait({producer})
            if not producer.cancelled() and producer.exception() is not None:
                exc = producer.exception()
                log.error("reply producer failed: %r", exc, exc_info=exc)
                self._report.event("error", f"reply failed: {type(exc).__name__}: {exc}", self._now())

    async def _produce(
        self,
        parts: AsyncIterator[ReplyPart],
        jobs: asyncio.Queue[_Job | None],
        ahead: asyncio.Semaphore,
        started: list[_Job],
        timing: TurnTiming | None,
    ) -> None:
        try:
            first_text = True
            first_say = True
            async for part in parts:
                self._hooks.on_reply_part()
                if isinstance(part, Hangup):
                    await jobs.put(_Job("hangup", reason=part.reason))
                    break
                if not isinstance(part, Say) or not part.text.strip():
                    continue
                if first_text and timing is not None:
                    timing.metrics["first_text_ms"] = self._now() - timing.vad_end_ms
                    first_text = False
                cached = self.cached(part.text) if part.fixed else None
                assembly: _Assembly | None = None
                if cached is not None:
                    texts: list[tuple[str, bytes | None]] = [(part.text, cached)]
                else:
                    pieces = split_sentences(part.text, self._config.first_clause_words if first_say else 0)
                    texts = [(t, None) for t in pieces]
                    if part.fixed:
                        # Synthesised sentence by sentence for a fast start; the joined audio
                        # becomes the cache entry so the next call plays it instantly.
                        assembly = _Assembly(cache_key(self.tts, part.text), [None] * len(pieces))
                for i, (text, pcm) in enumerate(texts):
                    await ahead.acquire()
                    job = _Job("say", text=text, fixed=part.fixed, chunks=asyncio.Queue())
                    # Only the reply's first sentence is awaited by the caller right now.
                    job.urgent = not started
                    job.assembly = (assembly, i) if assembly is not None else None
                    job.synth_started = asyncio.get_running_loop().time()
                    job.task = asyncio.create_task(self._synth_job(job, pcm))
                    started.append(job)
                    await jobs.put(job)
                first_say = False
        finally:
            await jobs.put(None)
            self._hooks.on_reply_part()

    async def _synth_job(self, job: _Job, cached: bytes | None) -> None:
        assert job.chunks is not None
        q = job.chunks
        loop = asyncio.get_running_loop()
        if cached is not None:
            job.first_chunk_at = loop.time()
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
                        job.first_chunk_at = loop.time()
                    q.put_nowait(chunk)
                    collected.append(chunk)
            except ServiceError as exc:
                if self.fallback_tts is None or job.first_chunk_at:
                    raise
                self._report.event("warning", f"TTS failed, using fallback: {exc}", self._now())
                pcm = b"".join([c async for c in self.fallback_tts.stream(job.text, urgent=job.urgent)])
                pcm = trim_leading_silence(pcm, self.fallback_tts.sample_rate)
                job.first_chunk_at = loop.time()
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

    def _play(
        self,
        pcm: bytes,
        mark: str | None,
        job: _Job,
        line: AgentLine | None,
        timing: TurnTiming | None,
        first_chunk: bool,
    ) -> AgentLine:
        audio = self._audio
        now = audio.clock_ms()
        queued = audio.queued_ms()
        if line is None:
            line = self.heard.open_line(now + queued)
            if timing is not None:
                m = timing.metrics
                m["first_audio_ms"] = now - timing.vad_end_ms
                m["tts_first_ms"] = int((job.first_chunk_at - job.synth_started) * 1000)
                m["v2v_ms"] = now + queued - timing.speech_end_ms
        audio.play(pcm, mark=mark)
        self.heard.queued(line, job.text, len(pcm) // 2, mark, first_chunk)
        if mark is not None:
            self._marks[mark] = asyncio.get_running_loop().create_future()
        return line

    # ------------------------------------------------------------------ fixed texts
    def cached(self, text: str) -> bytes | None:
        return self.cache.get(cache_key(self.tts, text))

    async def _fill_cache(self, text: str) -> None:
        # Waits for idle TTS so a cache fill never delays a live reply's sentence.
        await self._synth_idle.wait()
        try:
            await self.cache.get_or_make(cache_key(self.tts, text), partial(synthesize_trimmed, self.tts, text))
        except ServiceError as exc:  # the reply that needs it synthesises it (or falls back) then
            log.warning("pre-synthesis failed: %s", exc)
        except Exception:
            log.exception("pre-synthesis failed")

    async def presynthesize(self, texts: list[str], ended: Callable[[], bool]) -> None:
        """Synthesise the fixed texts not cached yet, one at a time, while the voice is idle."""
        for text in texts:
            if ended():
                return
            if not text.strip() or self.cached(text) is not None:
                continue
            await self._fill_cache(text)

    def hand_over(self, texts: list[str]) -> None:
        # A caller who hangs up or barges in during the first call's greeting cancels its
        # sentence-by-sentence synthesis before the whole text could become a cache entry, and this
        # call's presynthesize never ran: without this hand-over the greeting would stay uncached
        # for as long as callers keep doing that. The runtime finishes the work after the call.
        if self._warm is None or self.tts.metered:
            return  # cloud voices cost money per character: only what calls really said is cached
        self._warm(texts, self.tts)  # it skips what is cached or queued
