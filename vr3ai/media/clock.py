"""One pacing clock, shared by every media session of the process (owned by its media engine).

Why shared: a task that sleeps 20 ms per call costs a timer, a future and a task switch per call per
tick; at 150 calls that is 7,500 wake-ups a second spent doing nothing but waiting. One task that
wakes every 20 ms and services every session's due frames costs one wake-up per tick in total, and
the per-session work is a few comparisons plus (usually) one non-blocking send.

Why "skip, never burst": if the loop stalls (GC, a CPU-heavy callback, an overloaded host), the
next tick is simply late. The clock does not replay missed ticks; each session compares its own
model of Asterisk's queue with the current time and refills only up to its target lead. Audio sent
to catch up would sit in Asterisk's queue for the rest of the call, because chan_websocket plays
exactly one frame per ptime and never catches up (Asterisk issue #2115).

Sessions only need ``service(now)``; tests drive a clock by hand with :meth:`MediaClock.tick`
(``autostart=False``) and a virtual ``time_fn``. The process's one clock belongs to its
:class:`~vr3ai.media.engine.MediaEngine` (made in ``vr3ai.app``), not to a module-level registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("vr3ai.media.clock")

DEFAULT_TICK_MS = 20.0


class Paced(Protocol):
    def service(self, now: float) -> None:
        """Send whatever is due at ``now`` (seconds on the clock's time base). Must not block."""
        ...


class MediaClock:
    """Wakes every ``tick_ms`` while at least one session is registered and services all of them."""

    def __init__(
        self,
        tick_ms: float = DEFAULT_TICK_MS,
        *,
        time_fn: Callable[[], float] | None = None,
        autostart: bool = True,
    ) -> None:
        self.tick_s = tick_ms / 1000.0
        self.time: Callable[[], float] = time_fn if time_fn is not None else time.monotonic
        """:meth:`now` without the method call, for code that runs per frame."""
        self._autostart = autostart
        self._sessions: dict[int, Paced] = {}
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.late_ticks = 0
        """Ticks that ran more than one tick period after they were due (the loop stalled)."""
        self.max_lateness_ms = 0.0
        self.service_errors = 0
        self._phase: float | None = None
        """When the last tick was due: the tick grid that sessions align their frame grid to."""
        self.lateness_ms: list[float] | None = None
        """Set to a list to record each tick's lateness (benchmarks)."""
        self._hooks: list[Callable[[float], None]] = []
        self.servicing = False
        """True while :meth:`tick` services the sessions (what they send then may be batched:
        :mod:`vr3ai.media.uring`)."""

    def now(self) -> float:
        """Seconds on this clock's monotonic time base."""
        return self.time()

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, session: Paced) -> None:
        self._sessions[id(session)] = session
        if self._autostart and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="vr3ai-media-clock")

    def remove(self, session: Paced) -> None:
        self._sessions.pop(id(session), None)
        # The task notices the empty set on its next tick and exits; no cancel needed.

    def add_hook(self, fn: Callable[[float], None], *, first: bool = False) -> None:
        """Call ``fn(now)`` on every tick after all sessions were serviced (ticks run only while
        sessions are registered); ``first``: before the hooks added so far."""
        if first:
            self._hooks.insert(0, fn)
        else:
            self._hooks.append(fn)

    def remove_hook(self, fn: Callable[[float], None]) -> None:
        if fn in self._hooks:
            self._hooks.remove(fn)

    def tick(self, now: float | None = None, *, due: float | None = None) -> None:
        """Service every registered session once. One broken session never stops the others."""
        if now is None:
            now = self.now()
        self._phase = due if due is not None else now
        self.ticks += 1
        self.servicing = True
        try:
            for session in list(self._sessions.values()):
                try:
                    session.service(now)
                except Exception:
                    self.service_errors += 1
                    log.exception("media session service failed")
        finally:
            self.servicing = False
        for hook in tuple(self._hooks):
            try:
                hook(now)
            except Exception:
                self.service_errors += 1
                log.exception("media clock hook failed")

    def align(self, t: float, period: float) -> float:
        """Delay in [0, period) that puts ``t`` on the tick grid (modulo ``period``).

        A session whose queue model restarts (call start, after an underrun or a flush) may place
        its frame grid anywhere: Asterisk's own timer phase is unknown to us. Putting it on the tick
        grid makes every tick see the same lead, half a frame away from the refill threshold, so
        tick jitter below half a frame never flips between sending 0 and 2 frames."""
        phase = self._phase
        if phase is None or period <= 0:
            return 0.0
        d = (phase - t) % period
        return 0.0 if d >= period - 1e-6 else d

    async def _run(self) -> None:
        # Absolute deadlines so per-tick jitter does not accumulate into drift.
        tick = self.tick_s
        due = self.now()
        try:
            while self._sessions:
                now = self.now()
                lateness = now - due
                if lateness > tick:
                    self.late_ticks += 1
                    # Re-phase instead of replaying the missed ticks.
                    due = now
                if lateness * 1000.0 > self.max_lateness_ms:
                    self.max_lateness_ms = lateness * 1000.0
                if self.lateness_ms is not None:
                    self.lateness_ms.append(max(0.0, lateness) * 1000.0)
                self.tick(now, due=due)
                due += tick
                await asyncio.sleep(max(0.0, due - self.now()))
        finally:
            self._task = None

    async def aclose(self) -> None:
        task = self._task
        self._sessions.clear()
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
