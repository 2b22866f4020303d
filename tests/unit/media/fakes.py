"""Test doubles for the media layer: a scripted transport and a virtual clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from vr3ai.media.clock import MediaClock
from vr3ai.media.engine import MediaEngine, MediaTuning
from vr3ai.media.protocol import ControlFormat, MediaStart, format_event, parse_command
from vr3ai.media.session import MediaConfig, MediaSession
from vr3ai.media.transport import Deliver, pump


class VirtualTime:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


@dataclass
class Sent:
    at: float
    data: str | bytes


@dataclass
class FakeTransport:
    """Records what the session sends (with virtual timestamps); tests push what Asterisk says."""

    time: VirtualTime
    sent: list[Sent] = field(default_factory=list)
    inbox: asyncio.Queue[str | bytes | None] = field(default_factory=asyncio.Queue)
    closed_with: int | None = None
    _close_code: int | None = None

    @property
    def close_code(self) -> int | None:
        return self._close_code

    def send_text(self, text: str) -> None:
        self.sent.append(Sent(self.time(), text))

    def send_bytes(self, data: bytes) -> None:
        self.sent.append(Sent(self.time(), data))

    async def receive(self) -> str | bytes | None:
        return await self.inbox.get()

    async def attach(self, deliver: Deliver, time: Callable[[], float]) -> None:
        await pump(self.receive, deliver, time)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed_with is None:
            self.closed_with = code
            self._close_code = code
            self.inbox.put_nowait(None)

    def remote_close(self, code: int = 1000) -> None:
        self._close_code = code
        self.inbox.put_nowait(None)

    # views
    def messages(self) -> list[Sent]:
        """Binary messages as sent (several frames of one tick are one message)."""
        return [s for s in self.sent if isinstance(s.data, bytes)]

    def frames(self, frame: int = 160) -> list[Sent]:
        """Binary messages split into frames the way Asterisk queues them."""
        out: list[Sent] = []
        for s in self.messages():
            assert isinstance(s.data, bytes)
            out += [Sent(s.at, s.data[i : i + frame]) for i in range(0, len(s.data), frame)]
        return out

    def texts(self) -> list[str]:
        return [s.data for s in self.sent if isinstance(s.data, str)]

    def commands(self) -> list[object]:
        return [parse_command(t) for t in self.texts()]


def media_start(channel_id: str = "chan-1", fmt: str = "ulaw", frame: int = 160, ptime: int = 20) -> MediaStart:
    return MediaStart(
        connection_id="vr3ai",
        channel="WebSocket/vr3ai/0x1",
        channel_id=channel_id,
        format=fmt,
        optimal_frame_size=frame,
        ptime=ptime,
    )


class Rig:
    """A session on a virtual clock; ``advance(ms)`` moves time in 20 ms ticks."""

    def __init__(
        self,
        config: MediaConfig | None = None,
        fmt: str = "ulaw",
        frame: int = 160,
        control_format: ControlFormat = ControlFormat.PLAIN,
        recording_path: str | None = None,
        tuning: MediaTuning | None = None,
    ) -> None:
        self.time = VirtualTime()
        self.clock = MediaClock(time_fn=self.time, autostart=False)
        self.engine = MediaEngine(tuning, clock=self.clock)
        self.transport = FakeTransport(self.time)
        self.session = MediaSession(
            self.transport,
            media_start(fmt=fmt, frame=frame),
            control_format=control_format,
            config=config or MediaConfig(status_interval_s=0),
            engine=self.engine,
            recording_path=recording_path,
        )
        self.control_format = control_format
        self.task: asyncio.Task[object] | None = None

    async def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.session.run())
        await asyncio.sleep(0)

    async def say(self, event: object) -> None:
        """Asterisk sends a control event."""
        self.transport.inbox.put_nowait(format_event(event, self.control_format))  # type: ignore[arg-type]
        await settle()

    async def audio(self, data: bytes) -> None:
        self.transport.inbox.put_nowait(data)
        await settle()

    def tick(self, ms: float = 20.0) -> None:
        self.time.t += ms / 1000.0
        self.clock.tick()

    def advance(self, ms: float, step: float = 20.0) -> None:
        n = round(ms / step)
        for _ in range(n):
            self.tick(step)

    def lead_ms(self) -> float:
        return self.session.lead_ms


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)
