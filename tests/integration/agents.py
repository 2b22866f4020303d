"""Small deterministic agents for call-flow tests: they prove the media path, not the voice stack."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vr3ai.agent.base import CallContext, RunReport
from vr3ai.media.interface import CallAudio, CallEnded, Dtmf, MarkHeard


def tone_pcm(freq: float, secs: float, rate: int = 8000, amp: float = 8000.0) -> bytes:
    t = np.arange(int(secs * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


@dataclass
class ToneAgent:
    """Plays a tone at once, records everything it hears and every event; optional hangup."""

    freq: float = 440.0
    secs: float = 0.6
    hangup_after_s: float | None = None
    heard: bytearray = field(default_factory=bytearray)
    events: list[Any] = field(default_factory=list)
    started: float = 0.0
    ctx: CallContext | None = None
    audio: CallAudio | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, audio: CallAudio, ctx: CallContext, report: RunReport) -> None:
        self.started = time.monotonic()
        self.ctx, self.audio = ctx, audio
        audio.play(tone_pcm(self.freq, self.secs), mark="tone")
        report.say("agent", f"<tone {self.freq:.0f} Hz>", audio.clock_ms(), audio.clock_ms() + int(self.secs * 1000))

        async def read_frames() -> None:
            async for frame in audio.frames():
                self.heard.extend(frame)

        async def read_events() -> None:
            async for ev in audio.events():
                self.events.append(ev)
                if isinstance(ev, CallEnded):
                    return

        reader = asyncio.create_task(read_frames())
        try:
            if self.hangup_after_s is not None:
                events = asyncio.create_task(read_events())
                await asyncio.sleep(self.hangup_after_s)
                report.end_reason = "agent hung up (test)"
                await audio.hangup("test agent done")
                await events
            else:
                await read_events()
        finally:
            reader.cancel()
            self.done.set()

    @property
    def digits(self) -> str:
        return "".join(e.digit for e in self.events if isinstance(e, Dtmf))

    @property
    def marks(self) -> list[str]:
        return [e.name for e in self.events if isinstance(e, MarkHeard)]


class AgentRecorder:
    """An agent factory that remembers the agents it built."""

    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.agents: list[ToneAgent] = []

    def __call__(self, ctx: CallContext) -> ToneAgent:
        agent = ToneAgent(**self.kw)
        self.agents.append(agent)
        return agent
