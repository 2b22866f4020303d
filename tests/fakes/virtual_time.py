"""``VirtualTimeLoop``: an asyncio event loop on virtual time, for deterministic fast tests.

The loop's clock (``loop.time()``, which ``asyncio.sleep``, ``call_later``, ``wait_for`` and
``asyncio.timeout`` all read) starts at 0 and moves only when the loop has nothing ready to run:
then it jumps straight to the next timer instead of waiting for it. A test that lets 10 s of call
time pass runs in the milliseconds its callbacks take, and two runs interleave identically.

Real I/O still works (the selector is polled without waiting), but nothing waits for it: code that
blocks on a thread or a subprocess must not run on this loop, or time would jump past it. The
agent's model-free tests qualify (their VAD, STT and TTS fakes are synchronous or sleep on the
loop); the tests with the real models and the real Asterisk run on real time.

Built from public API only: ``SelectorEventLoop`` takes the selector to use, and ``time()`` is
the loop's documented clock.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any


class _Selector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[Any] = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # No timer at all: only real I/O (a thread finishing, a signal) can wake the loop.
            return super().select(None)
        self.now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = _Selector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now
