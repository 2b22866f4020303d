"""``VoiceRuntime``: the process-wide voice models and workers, loaded once, shared by all calls.

Per-call model loading was most of the call setup of the reference's default pipecat agent.
Here everything heavy lives in one object per process:

* the Silero VAD session (``SileroModel``; per-call state lives in each call's ``SileroVad``),
* the Whisper tiny.en model and its thread pool (``WhisperSTT``),
* the Piper worker process(es) (``PiperTTS``), or flite when Piper is not installed,
* the fixed-text audio cache (``TtsCache``, memory + optional disk under the data dir).

``await runtime.start()`` preloads all of it (the app calls it at startup so the first call does
not pay ~2-4 s of loading); calls made before that trigger the same loading lazily.
``runtime.warm(texts, tts)`` synthesises fixed texts (greetings, ``say`` texts) into the cache in
the background, one at a time at Piper's low priority, so a live call's first sentence always goes
first: the app warms every workflow's static texts at start-up and on save
(``vr3ai.agent.factory.prewarm_workflow``), and a call hands over the fixed texts it could not
cache (caller hung up or barged in during the greeting). That is what makes even the first call
after a restart or an edit play its greeting straight from the cache.
``await runtime.close()`` stops the TTS workers and the STT pool. Cloud services are not here:
they are per call (they carry an organization's key) and cost nothing to build.

Two STT workers (CTranslate2 ``inter_threads``, 2 threads each) and two Piper processes by
default: with one of each, a long transcription or sentence of one call blocks every other call
behind it (head-of-line blocking); with two, concurrent calls under load had about half the p50
voice-to-voice for a little more memory (figures: bench/README.md, "Why the offline voice stack is
built this way"). A single call still gets both threads of an idle STT worker.

Its knobs are :class:`vr3ai.settings.VoiceSettings` (``VR3AI_STT_THREADS``, ``VR3AI_TTS_WORKERS``,
``VR3AI_TTS_CACHE_MAX_MB``, ...: their defaults and meaning are written there, once).
``RuntimeConfig()`` takes them from the environment; ``RuntimeConfig.from_settings`` from the
process's settings. The warm queue is bounded (``VR3AI_TTS_WARM_QUEUE_MAX``): it is shared by every
tenant's workflows, so a tenant saving many large workflows must not grow it without bound; a text
that does not fit is synthesised by the first call that says it and cached then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from vr3ai.agent.services.audio import synthesize_trimmed
from vr3ai.agent.services.base import TextToSpeech
from vr3ai.agent.services.cache import CacheKey, TtsCache, cache_key
from vr3ai.agent.services.flite import FliteTTS
from vr3ai.agent.services.piper import PiperTTS, piper_available
from vr3ai.agent.services.vad import SileroModel
from vr3ai.agent.services.whisper import WhisperSTT
from vr3ai.settings import Settings

log = logging.getLogger("vr3ai.agent.runtime")


_UNSET: Any = object()
"""A field not given: taken from the environment's :class:`VoiceSettings` in ``__post_init__``."""


@dataclass
class RuntimeConfig:
    """What :class:`VoiceRuntime` is built with. Fields not given come from the environment
    (:class:`vr3ai.settings.VoiceSettings`, where the defaults are written)."""

    stt_threads: int = _UNSET
    stt_workers: int = _UNSET
    tts_workers: int = _UNSET
    tts_threads: int = _UNSET
    tts_engine: str = _UNSET
    flite_voice: str = "slt"
    cache_dir: Path | None = _UNSET
    """Disk cache of fixed texts; None: memory only. Unset: ``VR3AI_TTS_CACHE_DIR``, else
    ``<VR3AI_DATA_DIR>/tts-cache`` when that variable is set, else memory only."""
    warm_queue_max: int = _UNSET
    cache_max_mb: int = _UNSET

    @classmethod
    def from_settings(cls, settings: Settings) -> RuntimeConfig:
        """The process's configuration (the app's): the disk cache in the data folder."""
        voice = settings.voice
        return cls(
            stt_threads=voice.stt_threads,
            stt_workers=voice.stt_workers,
            tts_workers=voice.tts_workers,
            tts_threads=voice.tts_threads,
            tts_engine=voice.tts_engine,
            cache_dir=settings.tts_cache_dir(),
            warm_queue_max=voice.tts_warm_queue_max,
            cache_max_mb=voice.tts_cache_max_mb,
        )

    def __post_init__(self) -> None:
        unset = [f.name for f in fields(self) if getattr(self, f.name) is _UNSET]
        if unset:
            env = Settings.from_env()
            voice = env.voice
            given = {
                "stt_threads": voice.stt_threads,
                "stt_workers": voice.stt_workers,
                "tts_workers": voice.tts_workers,
                "tts_threads": voice.tts_threads,
                "tts_engine": voice.tts_engine,
                # Without VR3AI_DATA_DIR (a library use, a test) the cache stays in memory.
                "cache_dir": voice.tts_cache_dir
                or (env.storage.data_dir / "tts-cache" if "data_dir" in env.storage.model_fields_set else None),
                "warm_queue_max": voice.tts_warm_queue_max,
                "cache_max_mb": voice.tts_cache_max_mb,
            }
            for name in unset:
                setattr(self, name, given[name])
        if not self.tts_engine:
            self.tts_engine = "piper" if piper_available() else "flite"


class VoiceRuntime:
    _shared: ClassVar[VoiceRuntime | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, config: RuntimeConfig | None = None) -> None:
        self.config = config or RuntimeConfig()
        self.cache = TtsCache(self.config.cache_dir, max_disk_bytes=max(0, self.config.cache_max_mb) * 1_000_000)
        self.stt = WhisperSTT(cpu_threads=self.config.stt_threads, workers=self.config.stt_workers)
        self._piper: PiperTTS | None = None
        self._flite: dict[str, FliteTTS] = {}
        self._vad: SileroModel | None = None
        self._start_lock: asyncio.Lock | None = None
        self._started = False
        self.start_ms: dict[str, int] = {}
        self._warm_queue: deque[tuple[CacheKey, TextToSpeech, str]] = deque()
        self._warm_keys: set[CacheKey] = set()
        self._warm_task: asyncio.Task[None] | None = None
        self.warmed = 0
        self.warm_failed = 0
        self.warm_dropped = 0
        """Texts not queued because the queue was full (``warm_queue_max``)."""

    # ---------------------------------------------------------------- process-wide instance
    @classmethod
    def shared(cls) -> VoiceRuntime:
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = VoiceRuntime()
            return cls._shared

    @classmethod
    def set_shared(cls, runtime: VoiceRuntime | None) -> None:
        with cls._shared_lock:
            cls._shared = runtime

    # ---------------------------------------------------------------- components
    @property
    def vad_model(self) -> SileroModel:
        if self._vad is None:
            self._vad = SileroModel.shared()
        return self._vad

    @property
    def default_tts_engine(self) -> str:
        return self.config.tts_engine

    def local_tts(self, engine: str | None = None, voice: str | None = None) -> TextToSpeech:
        """The shared offline TTS: ``piper`` (if installed), else ``flite``."""
        engine = engine or self.config.tts_engine
        if engine == "piper" and piper_available():
            if self._piper is None:
                self._piper = PiperTTS(workers=self.config.tts_workers, threads=self.config.tts_threads)
            return self._piper
        v = voice if voice in ("slt", "kal", "kal16", "awb", "rms") else self.config.flite_voice
        if v not in self._flite:
            self._flite[v] = FliteTTS(v)
        return self._flite[v]

    def fallback_tts(self) -> TextToSpeech:
        return self.local_tts("flite")

    # ---------------------------------------------------------------- lifecycle
    async def start(self, stt: bool = True, tts: bool = True) -> None:
        """Preload the VAD, Whisper and the TTS worker. Safe to call many times, concurrently."""
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            t0 = time.perf_counter()
            loop = asyncio.get_running_loop()
            if self._vad is None:
                await loop.run_in_executor(None, lambda: self.vad_model)
                self.start_ms["vad"] = int((time.perf_counter() - t0) * 1000)
            jobs = []
            if stt:
                jobs.append(self._timed("stt", self.stt.start()))
            if tts:
                jobs.append(self._timed("tts", self.local_tts().start()))
            await asyncio.gather(*jobs)
            self._started = True

    async def _timed(self, name: str, coro: Any) -> None:
        t0 = time.perf_counter()
        await coro
        self.start_ms.setdefault(name, int((time.perf_counter() - t0) * 1000))

    async def ensure_started(self, tts_engine: str | None = None) -> None:
        if not self._started:
            await self.start()
        if tts_engine:
            await self.local_tts(tts_engine).start()

    # ---------------------------------------------------------------- cache warming
    def warm(self, texts: Iterable[str], tts: TextToSpeech | None = None) -> int:
        """Queue ``texts`` for background synthesis into the cache; returns how many were new.

        Never blocks and never raises: a text that fails is logged (not retried until asked again)."""
        tts = tts or self.local_tts()
        added = 0
        dropped = self.warm_dropped
        for text in texts:
            if not text or not text.strip():
                continue
            key = cache_key(tts, text)
            if key in self._warm_keys or self.cache.has(key):
                continue
            if len(self._warm_keys) >= self.config.warm_queue_max:
                self.warm_dropped += 1
                continue
            self._warm_keys.add(key)
            self._warm_queue.append((key, tts, text))
            added += 1
        if self.warm_dropped > dropped:
            log.warning(
                "background synthesis queue full; the rest will be synthesised when a call says them",
                extra={"not_queued": self.warm_dropped - dropped, "queue_max": self.config.warm_queue_max},
            )
        if added and (self._warm_task is None or self._warm_task.done()):
            self._warm_task = asyncio.get_running_loop().create_task(self._warm_loop(), name="tts-cache-warm")
        return added

    @property
    def warm_pending(self) -> int:
        return len(self._warm_keys)

    async def warmed_up(self, timeout_s: float) -> bool:
        """Wait until the warm queue is empty (True) or ``timeout_s`` passed (False)."""
        task = self._warm_task
        if task is None or task.done():
            return True
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        return bool(done)

    async def _warm_loop(self) -> None:
        while self._warm_queue:
            key, tts, text = self._warm_queue.popleft()
            try:
                await tts.start()
                # One at a time, not urgent: live calls' sentences are served first.
                await self.cache.get_or_make(key, partial(synthesize_trimmed, tts, text))
                self.warmed += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.warm_failed += 1
                log.warning(
                    "could not pre-synthesise a fixed text; calls will synthesise it live",
                    extra={"engine": tts.engine, "error": f"{type(exc).__name__}: {exc}"[:200]},
                )
            finally:
                self._warm_keys.discard(key)

    async def close(self) -> None:
        task, self._warm_task = self._warm_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._warm_queue.clear()
        self._warm_keys.clear()
        if self._piper is not None:
            try:
                await self._piper.close()
            except Exception:  # the STT pool below must still be stopped
                log.exception("stopping the Piper workers failed")
        await self.stt.close()
        self._started = False

    def stats(self) -> dict[str, Any]:
        """RSS of this process and of the TTS workers (MB), for benchmarks and diagnostics."""
        out: dict[str, Any] = {
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cache_hits": self.cache.hits,
            "cache_misses": self.cache.misses,
        }
        with contextlib.suppress(OSError):
            out["rss_mb"] = _rss_mb(os.getpid())
        if self._piper is not None:
            out["tts_worker_rss_mb"] = [_rss_mb(pid) for pid in self._piper.worker_pids]
        return out


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
