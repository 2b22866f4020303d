"""The TTS pre-synthesis queue and the fixed-text disk cache are shared by every tenant, so both
are bounded (item 5 of issue 12): a tenant saving many large workflows must not grow them without
limit."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from vr3ai.agent.services.cache import TtsCache
from vr3ai.agent.services.runtime import RuntimeConfig, VoiceRuntime


class StuckTTS:
    """A TTS engine that never finishes starting: the queue only fills, nothing drains it."""

    engine = "stuck"
    voice = "v"
    sample_rate = 8000

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def start(self) -> None:
        await self.release.wait()
        raise RuntimeError("never used")


async def test_warm_queue_is_bounded(tmp_path: Path) -> None:
    runtime = VoiceRuntime(RuntimeConfig(cache_dir=tmp_path, tts_engine="flite", warm_queue_max=25))
    tts = StuckTTS()
    try:
        queued = sum(runtime.warm([f"Text number {i} of workflow {w}." for i in range(100)], tts) for w in range(50))
        assert queued == 25
        assert runtime.warm_pending == 25
        assert runtime.warm_dropped == 50 * 100 - 25
        # What was dropped is not lost for good: once the queue drains it can be queued again.
        assert runtime.warm(["Text number 0 of workflow 0."], tts) == 0  # already waiting
    finally:
        tts.release.set()
        await runtime.close()


def test_disk_cache_is_bounded(tmp_path: Path) -> None:
    cache = TtsCache(tmp_path, max_bytes=1 << 20, max_disk_bytes=100_000)
    keys = [("e", "v", 8000, f"text {i}") for i in range(60)]
    for i, key in enumerate(keys):
        path = cache._path(key)
        assert path is not None
        cache.put(key, bytes([i]) * 10_000)
        if path.exists():
            os.utime(path, (1_000_000 + i, 1_000_000 + i))  # distinct write times, oldest first
    on_disk = sum(p.stat().st_size for p in tmp_path.glob("*.pcm"))
    assert on_disk <= 100_000
    assert cache.disk_bytes == on_disk
    # The newest entries are the ones kept; a restart counts what is there.
    fresh = TtsCache(tmp_path, max_bytes=1 << 20, max_disk_bytes=100_000)
    assert fresh.disk_bytes == on_disk
    assert fresh.get(keys[-1]) == bytes([59]) * 10_000
    assert fresh.get(keys[0]) is None
