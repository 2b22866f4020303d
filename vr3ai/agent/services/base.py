"""Service base classes of the voice pipeline: speech-to-text and text-to-speech.

The pipeline only sees these two small ABCs, so the offline engines (Whisper, Piper, flite) and the
cloud adapters (Deepgram, OpenAI, ElevenLabs, Cartesia) are interchangeable per workflow.

* STT is utterance based: the pipeline's VAD cuts the caller's turn and hands over the audio.
  Streaming engines (Deepgram) stream that audio internally; what the pipeline gains from
  streaming STT it gets instead from speculative transcription at the first pause (see
  ``vr3ai.agent.pipeline``), which works for every engine.
* TTS is sentence based: the pipeline splits replies into sentences and asks for one at a time,
  which is what gives "first sentence plays while the next is synthesised" and cheap barge-in
  (nothing to cancel beyond one sentence). ``stream`` lets engines that deliver audio
  progressively hand over chunks as they arrive.

Both return/consume PCM16 mono at the call's rate (8 kHz); engines resample internally.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass


class ServiceError(RuntimeError):
    """A voice service failed (engine missing, worker died, HTTP error). Message is safe to log."""


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    """Cleaned text; empty when nothing usable was said."""
    raw: str = ""
    """What the engine returned before filtering."""
    stt_ms: int = 0
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    dropped: str | None = None
    """Why ``raw`` was discarded (hallucination, low confidence, ...), or None."""


# Whisper's well-known outputs on silence, noise or breath. They are only dropped when the
# decoder was not confident (see ``filter_transcript``), so a clear "Thank you." still counts.
# Real one-word answers on a phone ("okay", "bye", "yes", "no") are deliberately not here.
_HALLUCINATIONS = {
    "",
    "you",
    "thank you",
    "thank you.",
    "thanks for watching",
    "thanks for watching!",
    "thank you for watching",
    "so",
    "oh",
    "uh",
    "um",
    "hmm",
    "mm",
    ".",
    "...",
}
_BRACKETED = re.compile(r"^[\[\(\*].*[\]\)\*]$")  # [BLANK_AUDIO], (silence), *coughs*


def filter_transcript(
    raw: str,
    avg_logprob: float | None = None,
    no_speech_prob: float | None = None,
    speech_ms: int | None = None,
    stt_ms: int = 0,
) -> Transcript:
    """Apply the hallucination and confidence rules shared by all STT engines."""
    text = " ".join(raw.split())
    t = text.strip()
    low = t.lower().strip(" !?,")
    if not t or not re.search(r"[A-Za-z0-9]", t):
        return Transcript("", raw, stt_ms, avg_logprob, no_speech_prob, "empty")
    if _BRACKETED.match(t):
        return Transcript("", raw, stt_ms, avg_logprob, no_speech_prob, "non-speech tag")
    # Whisper's own rule (no_speech_prob > 0.6 and a weak decode), with a higher bar because the
    # VAD has already heard speech: short answers like "No." score ~0.65 on the short window.
    if no_speech_prob is not None and avg_logprob is not None:
        if no_speech_prob > 0.75 and avg_logprob < -1.0:
            return Transcript("", raw, stt_ms, avg_logprob, no_speech_prob, "no speech")
    if avg_logprob is not None and avg_logprob < -1.5:
        return Transcript("", raw, stt_ms, avg_logprob, no_speech_prob, "low confidence")
    if low in _HALLUCINATIONS or low.rstrip(".") in _HALLUCINATIONS:
        confident = (avg_logprob is None or avg_logprob > -0.6) and (
            no_speech_prob is None or no_speech_prob < 0.3
        )
        long_enough = speech_ms is None or speech_ms >= 350
        if not (confident and long_enough):
            return Transcript("", raw, stt_ms, avg_logprob, no_speech_prob, "likely hallucination")
    return Transcript(t, raw, stt_ms, avg_logprob, no_speech_prob, None)


class SpeechToText(ABC):
    engine: str = "stt"
    model: str = ""

    async def start(self) -> None:
        """Load models / warm up. Idempotent."""
        return None

    @abstractmethod
    async def transcribe(self, pcm: bytes, sample_rate: int) -> Transcript:
        """Transcribe one utterance (PCM16 mono). Never blocks the event loop."""

    def has_idle_worker(self) -> bool:
        """Whether a transcription started now would run at once. Engines with a bounded worker
        pool say no while every worker is busy (the agent then waits longer before a speculative
        run, which may be wasted); remote engines always can."""
        return True

    async def close(self) -> None:
        """Release resources. Idempotent."""
        return None


class TextToSpeech(ABC):
    engine: str = "tts"
    voice: str = ""
    sample_rate: int = 8000
    metered: bool = False
    """Billed per character (cloud voices): never synthesised ahead of need, only what calls say."""

    async def start(self) -> None:
        """Load models / start workers. Idempotent."""
        return None

    @abstractmethod
    async def synthesize(self, text: str) -> bytes:
        """The whole sentence as PCM16 mono at ``sample_rate``."""

    async def stream(self, text: str, urgent: bool = True) -> AsyncIterator[bytes]:
        """Audio of ``text`` in chunks as the engine produces them. Default: one chunk.

        ``urgent=False`` marks audio nobody is waiting for yet (later sentences of a reply, cache
        fills); engines with a shared queue (Piper) serve urgent requests first."""
        yield await self.synthesize(text)

    @property
    def cache_key_prefix(self) -> tuple[str, str]:
        return (self.engine, self.voice)

    async def close(self) -> None:
        """Stop workers. Idempotent."""
        return None
