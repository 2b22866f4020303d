"""``CallTimers``: the two clocks of a call that fire without the caller doing anything.

* **Idle**: ``idle_timeout_ms`` after the last activity (caller speech starting or ending, a DTMF
  digit, the agent's last mark heard) the coordinator gets an ``idle`` turn, if it agrees the call
  is quiet (nobody talking, no turn on its way).
* **Max duration**: once per call, ``max_duration_ms`` after the timers started.

They read an injected clock (the call's ``clock_ms``) when polled; the coordinator polls them from
its 100 ms ticker. No task and no sleep of their own, so a test drives them with a plain counter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class TimerHooks(Protocol):
    def on_max_duration(self, now_ms: int) -> None:
        """The call reached its maximum duration (called once)."""
        ...

    def may_go_idle(self) -> bool:
        """Whether the call is quiet enough for an idle turn (asked only once the time is up)."""
        ...

    def on_idle(self, now_ms: int) -> None:
        """Nothing happened for the idle timeout; the idle clock restarts now."""
        ...


class CallTimers:
    def __init__(
        self,
        clock: Callable[[], int],
        hooks: TimerHooks,
        *,
        idle_timeout_ms: int,
        max_duration_ms: int,
        started_ms: int | None = None,
    ) -> None:
        self._clock = clock
        self._hooks = hooks
        self.idle_timeout_ms = idle_timeout_ms
        """0 disables the idle turn."""
        self.max_duration_ms = max_duration_ms
        """0 disables the limit."""
        self.started_ms = self.last_activity_ms = clock() if started_ms is None else started_ms
        self.max_fired = False

    def activity(self, at_ms: int | None = None) -> None:
        """Something happened (at ``at_ms`` on the call clock, default now): restart the idle clock."""
        self.last_activity_ms = self._clock() if at_ms is None else at_ms

    def poll(self) -> None:
        now = self._clock()
        if self.max_duration_ms > 0 and not self.max_fired and now - self.started_ms >= self.max_duration_ms:
            self.max_fired = True
            self._hooks.on_max_duration(now)
        if (
            self.idle_timeout_ms > 0
            and now - self.last_activity_ms >= self.idle_timeout_ms
            and self._hooks.may_go_idle()
        ):
            self.last_activity_ms = now
            self._hooks.on_idle(now)
