"""The shared pacing clock on a real event loop."""

from __future__ import annotations

import asyncio
import itertools
import time

from vr3ai.media.clock import MediaClock
from vr3ai.media.engine import MediaEngine
from vr3ai.media.session import MediaSession

from .fakes import FakeTransport, VirtualTime, media_start


class Recorder:
    def __init__(self, block_once_s: float = 0.0, fail: bool = False) -> None:
        self.calls: list[float] = []
        self.block_once_s = block_once_s
        self.fail = fail

    def service(self, now: float) -> None:
        self.calls.append(now)
        if self.fail:
            raise RuntimeError("broken session")
        if self.block_once_s:
            time.sleep(self.block_once_s)  # simulate a stalled event loop
            self.block_once_s = 0.0


async def test_one_task_services_all_sessions_every_tick() -> None:
    clock = MediaClock(tick_ms=20)
    sessions = [Recorder() for _ in range(5)]
    for s in sessions:
        clock.add(s)
    await asyncio.sleep(0.3)
    counts = [len(s.calls) for s in sessions]
    # At most one service per 20 ms (a loaded box may give fewer, never more).
    assert all(6 <= c <= 17 for c in counts), counts
    # All sessions are serviced with the same timestamp in one pass.
    assert sessions[0].calls[:5] == sessions[4].calls[:5]
    gaps = [b - a for a, b in itertools.pairwise(sessions[0].calls)]
    assert min(gaps) > 0.005  # paced, not spinning
    for s in sessions:
        clock.remove(s)
    await asyncio.sleep(0.05)
    assert clock._task is None  # the task ends when no session is left


async def test_stall_is_not_replayed() -> None:
    clock = MediaClock(tick_ms=20)
    staller = Recorder(block_once_s=0.15)
    clock.add(staller)
    await asyncio.sleep(0.3)
    clock.remove(staller)
    calls = staller.calls
    after = [t for t in calls if calls[0] + 0.15 <= t <= calls[0] + 0.21]
    assert len(after) <= 4  # no burst of 7 catch-up ticks right after the stall
    assert clock.late_ticks >= 1
    assert clock.max_lateness_ms >= 100


async def test_broken_session_does_not_stop_the_others() -> None:
    clock = MediaClock(tick_ms=10)
    bad, good = Recorder(fail=True), Recorder()
    clock.add(bad)
    clock.add(good)
    await asyncio.sleep(0.1)
    await clock.aclose()
    assert len(good.calls) >= 2
    assert clock.service_errors == len(bad.calls) >= 2


async def test_the_sessions_of_one_engine_share_its_clock() -> None:
    """One clock per process: the engine's (there is no module-level clock any more)."""
    time = VirtualTime()
    engine = MediaEngine(clock=MediaClock(time_fn=time, autostart=False))
    transports = [FakeTransport(time) for _ in range(2)]
    sessions = [MediaSession(t, media_start(f"c{i}"), engine=engine) for i, t in enumerate(transports)]
    readers = [asyncio.ensure_future(s.run()) for s in sessions]
    await asyncio.sleep(0)
    assert len(engine.clock) == 2
    for t in transports:
        t.remote_close()
    await asyncio.gather(*readers)
    assert len(engine.clock) == 0


def test_manual_clock_with_virtual_time() -> None:
    now = [5.0]
    clock = MediaClock(time_fn=lambda: now[0], autostart=False)
    rec = Recorder()
    clock.add(rec)
    clock.tick()
    now[0] = 5.02
    clock.tick()
    assert rec.calls == [5.0, 5.02]
    assert clock.ticks == 2
