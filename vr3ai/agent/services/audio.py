"""Small PCM helpers shared by the voice services.

Everything on the agent side is PCM16 little-endian mono. Resampling uses soxr (the same library
pipecat uses): one-shot ``soxr.resample`` costs ~1-2 ms per sentence, far below anything we could
win with a hand-rolled polyphase filter, and it is band-limited, which matters for Whisper's
features and for what a caller hears after 8 kHz u-law.
"""

from __future__ import annotations

import io
import re
import wave
from typing import Any

import numpy as np
import soxr


def pcm_ms(pcm: bytes | int, sample_rate: int) -> int:
    """Duration of PCM16 mono audio (bytes or byte count) in whole milliseconds."""
    n = pcm if isinstance(pcm, int) else len(pcm)
    return (n // 2) * 1000 // sample_rate


def silence(ms: int, sample_rate: int) -> bytes:
    return b"\x00\x00" * (sample_rate * ms // 1000)


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def resample_pcm16(pcm: bytes, src_rate: int, dst_rate: int) -> bytes:
    if src_rate == dst_rate or not pcm:
        return pcm
    x = np.frombuffer(pcm, dtype="<i2")
    # soxr accepts int16 directly and returns int16; no float round trip needed.
    return soxr.resample(x, src_rate, dst_rate).astype("<i2").tobytes()


def resample_float(x: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    if src_rate == dst_rate or x.size == 0:
        return x.astype(np.float32, copy=False)
    return soxr.resample(x.astype(np.float32, copy=False), src_rate, dst_rate).astype(np.float32)


def read_wav(data: bytes) -> tuple[bytes, int]:
    """PCM16 mono payload and sample rate of a WAV file (mono 16-bit only, which is all our
    engines produce)."""
    with wave.open(io.BytesIO(data)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError("expected 16-bit mono WAV")
        return w.readframes(w.getnframes()), w.getframerate()


def write_wav(pcm: bytes, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return buf.getvalue()


# -50 dBFS sample peak: below any speech onset (soft fricatives peak far above), above the dither
# and hiss engines put in front of a sentence (Piper 40-60 ms, flite 220 ms of it).
_LEAD_PEAK = int(32768 * 10 ** (-50 / 20))


def trim_leading_silence(pcm: bytes, sample_rate: int, keep_ms: int = 15) -> bytes:
    """Drop the silence a TTS engine puts before a sentence, keeping ``keep_ms`` before the first
    audible sample so an onset ramp stays whole. Every millisecond of it is voice-to-voice delay
    the caller waits through. Returns b"" when ``pcm`` holds no audible sample at all."""
    x = np.frombuffer(pcm[: len(pcm) & ~1], dtype="<i2")
    loud = np.flatnonzero(np.abs(x.astype(np.int32)) > _LEAD_PEAK)
    if loud.size == 0:
        return b""
    start = max(0, int(loud[0]) - sample_rate * keep_ms // 1000)
    return pcm[start * 2 :]


async def synthesize_trimmed(tts: Any, text: str) -> bytes:
    """``tts.synthesize(text)`` without the engine's lead-in silence: what the cache stores."""
    return trim_leading_silence(await tts.synthesize(text), tts.sample_rate)


def rms_dbfs(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    if x.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(x * x)))
    return 20.0 * np.log10(max(rms, 1e-3) / 32768.0)


_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+(?=\S)")
_CLAUSE_END = re.compile(r"(?<=,)\s+(?=\S)")


def split_sentences(text: str, first_clause_words: int = 0) -> list[str]:
    """Split text into sentences for sentence-by-sentence synthesis.

    With ``first_clause_words`` > 0, a long first sentence is further split at its first comma
    that has at least that many words before it: Piper's time to first audio grows with the
    length of the sentence it is given, and the first chunk is the one the caller waits for.
    Later sentences are synthesised while earlier ones play, so they stay whole (better prosody).
    """
    parts = [p.strip() for p in _SENTENCE_END.split(text.strip()) if p.strip()]
    if first_clause_words > 0 and parts:
        first = parts[0]
        if len(first.split()) > 2 * first_clause_words:
            pieces = _CLAUSE_END.split(first)
            head: list[str] = []
            for i, piece in enumerate(pieces):
                head.append(piece)
                words = sum(len(h.split()) for h in head)
                if words >= first_clause_words and i < len(pieces) - 1:
                    rest = " ".join(pieces[i + 1 :])
                    if len(rest.split()) >= 2:
                        parts[0:1] = [" ".join(head), rest]
                    break
    return parts
