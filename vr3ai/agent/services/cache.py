"""Audio cache for fixed texts (greetings, a node's ``say``), keyed by (engine, voice, rate, text).

A fixed text is synthesised once per process and reused on every call, so a cached greeting is
on the wire within milliseconds of the call being bridged (the 150 ms setup target cannot be
met by synthesising: Piper needs 0.2-0.3 s for a greeting sentence on these cores).

* Memory: a bounded LRU (by bytes; 8 kHz PCM16 is 16 kB/s, so the 64 MB default holds over an
  hour of distinct prompts).
* Disk (optional, ``directory``): one ``<sha256>.pcm`` file per entry under the data dir, so a
  restart does not re-synthesise. Written atomically (tmp + rename). Only *fixed* texts are ever
  cached: templated replies may carry caller data (names, numbers), which must not be persisted.
  Bounded too (``max_disk_bytes``, ``VR3AI_TTS_CACHE_MAX_MB``): every tenant's workflow texts land
  here, so when a write takes it over the bound the least recently written files are deleted down
  to 90 % of it (a deleted text is synthesised again when a call needs it).
* Concurrent requests for the same missing key share one synthesis (``get_or_make``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from vr3ai.files import private_dir

CacheKey = tuple[str, str, int, str]


def cache_key(tts: Any, text: str) -> CacheKey:
    """The key of ``text`` said by ``tts`` (a TextToSpeech): engine, voice and rate matter."""
    return (tts.engine, tts.voice, tts.sample_rate, text)


# Bumped when what is stored for a key changes (v2: lead-in silence trimmed), so files an older
# version left in the disk cache are not played.
_FORMAT = "v2"


def _digest(key: CacheKey) -> str:
    return hashlib.sha256("\x1f".join(map(str, (_FORMAT, *key))).encode("utf-8")).hexdigest()


class TtsCache:
    def __init__(
        self, directory: str | Path | None = None, max_bytes: int = 64 << 20, max_disk_bytes: int = 512 << 20
    ) -> None:
        self.directory = Path(directory) if directory else None
        self.max_bytes = max_bytes
        self.max_disk_bytes = max_disk_bytes
        self._disk_bytes = 0
        self._mem: OrderedDict[CacheKey, bytes] = OrderedDict()
        self._bytes = 0
        self._inflight: dict[CacheKey, asyncio.Future[bytes]] = {}
        self.hits = 0
        self.misses = 0
        if self.directory is not None:
            private_dir(self.directory)
            self._disk_bytes = sum(size for _, size, _ in self._disk_entries())

    def _path(self, key: CacheKey) -> Path | None:
        return self.directory / f"{_digest(key)}.pcm" if self.directory is not None else None

    def _remember(self, key: CacheKey, pcm: bytes) -> None:
        old = self._mem.pop(key, None)
        if old is not None:
            self._bytes -= len(old)
        self._mem[key] = pcm
        self._bytes += len(pcm)
        while self._bytes > self.max_bytes and len(self._mem) > 1:
            _, dropped = self._mem.popitem(last=False)
            self._bytes -= len(dropped)

    def get(self, key: CacheKey) -> bytes | None:
        pcm = self._mem.get(key)
        if pcm is not None:
            self._mem.move_to_end(key)
            self.hits += 1
            return pcm
        path = self._path(key)
        if path is not None and path.exists():
            # A few kB to a few hundred kB: reading inline is cheaper than a thread hop.
            pcm = path.read_bytes()
            self._remember(key, pcm)
            self.hits += 1
            return pcm
        return None

    def has(self, key: CacheKey) -> bool:
        """In memory or on disk (does not count as a hit)."""
        if key in self._mem:
            return True
        path = self._path(key)
        return path is not None and path.exists()

    def put(self, key: CacheKey, pcm: bytes) -> None:
        if not pcm:
            return
        self._remember(key, pcm)
        path = self._path(key)
        if path is not None:
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            try:
                old = path.stat().st_size if path.exists() else 0
                tmp.write_bytes(pcm)
                tmp.replace(path)
                self._disk_bytes += len(pcm) - old
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            if self._disk_bytes > self.max_disk_bytes:
                self._trim_disk()

    @property
    def disk_bytes(self) -> int:
        return self._disk_bytes

    def _disk_entries(self) -> list[tuple[float, int, Path]]:
        out: list[tuple[float, int, Path]] = []
        if self.directory is None:
            return out
        for entry in os.scandir(self.directory):
            if entry.name.endswith(".pcm"):
                with contextlib.suppress(OSError):
                    st = entry.stat()
                    out.append((st.st_mtime, st.st_size, Path(entry.path)))
        return out

    def _trim_disk(self) -> None:
        # Rare (only when over the bound) and it rescans, so the count also heals from files other
        # processes wrote or removed.
        entries = sorted(self._disk_entries(), key=lambda e: e[0])
        total = sum(size for _, size, _ in entries)
        target = self.max_disk_bytes * 9 // 10
        for _, size, path in entries:
            if total <= target:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
        self._disk_bytes = total

    async def get_or_make(self, key: CacheKey, make: Callable[[], Awaitable[bytes]]) -> bytes:
        pcm = self.get(key)
        if pcm is not None:
            return pcm
        task = self._inflight.get(key)
        if task is None:
            self.misses += 1
            # The synthesis runs in its own task: a call that gives up (hangs up, barge-in) must
            # not cancel the synthesis other calls are waiting for.
            task = asyncio.ensure_future(self._make(key, make))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._inflight[key] = task
        return await asyncio.shield(task)

    async def _make(self, key: CacheKey, make: Callable[[], Awaitable[bytes]]) -> bytes:
        try:
            pcm = await make()
            self.put(key, pcm)
            return pcm
        finally:
            self._inflight.pop(key, None)
