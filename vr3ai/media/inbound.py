"""What Asterisk sends one call: caller audio to the agent, control events to the play-out model.

The reader never blocks: each frame is decoded to PCM16 and handed to the agent's handler if it
listens (a plain call, no task wake-up per frame), else appended to a bounded queue for
``frames()``; if that agent falls behind, the oldest frames are dropped and counted. Text messages
are parsed (:func:`~vr3ai.media.protocol.parse_event` never raises) and dispatched by
:class:`ControlEvents`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from vr3ai.media.codec import WireFormat
from vr3ai.media.interface import CallEvent, Dtmf
from vr3ai.media.playout import Playout
from vr3ai.media.protocol import (
    DtmfEnd,
    ErrorEvent,
    Malformed,
    MediaBufferingCompleted,
    MediaMarkProcessed,
    MediaStart,
    MediaXoff,
    MediaXon,
    QueueDrained,
    Status,
    UnknownEvent,
    parse_event,
)
from vr3ai.media.recording import CallRecorder

if TYPE_CHECKING:
    from vr3ai.media.config import MediaStats

log = logging.getLogger("vr3ai.media.session")

T = TypeVar("T")

_MAX_LOGGED_UNKNOWN = 5


class DropQueue(Generic[T]):
    """Single-consumer queue without asyncio.Queue's overhead; optionally drops its oldest item."""

    __slots__ = ("_closed", "_items", "_maxlen", "_waiter", "dropped")

    def __init__(self, maxlen: int | None = None) -> None:
        self._items: deque[T] = deque()
        self._maxlen = maxlen
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.dropped = 0

    def push(self, item: T) -> bool:
        """Append; returns False if that dropped the oldest item."""
        if self._closed:
            return True
        kept = True
        if self._maxlen is not None and len(self._items) >= self._maxlen:
            self._items.popleft()
            self.dropped += 1
            kept = False
        self._items.append(item)
        self._wake()
        return kept

    def close(self) -> None:
        self._closed = True
        self._wake()

    @property
    def closed(self) -> bool:
        return self._closed

    def take_all(self) -> list[T]:
        items = list(self._items)
        self._items.clear()
        return items

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> T | None:
        """Next item, or None once closed and drained."""
        while not self._items:
            if self._closed:
                return None
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class CallerAudio:
    """The inbound side of a session (see module doc); :meth:`deliver` takes every message."""

    def __init__(
        self,
        wire: WireFormat,
        *,
        max_frames: int,
        stats: MediaStats,
        recorder: CallRecorder | None,
        t0: float,
        on_text: Callable[[str, float], None],
        log_extra: dict[str, str],
    ) -> None:
        self._frames_q: DropQueue[bytes] = DropQueue(max(1, max_frames))
        self._sink: Callable[[bytes], None] | None = None
        """The agent's frame handler while it listens (frames then bypass the queue)."""
        self._sink_done: asyncio.Future[None] | None = None
        self._decode = wire.decode
        self._odd_bytes_matter = wire.bytes_per_sample == 2
        self._stats = stats
        self._recorder = recorder
        self._t0 = t0
        self._on_text = on_text
        self._log_extra = log_extra

    async def frames(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._frames_q.get()
            if item is None:
                return
            yield item

    async def listen(self, on_frame: Callable[[bytes], None]) -> None:
        if self._sink_done is not None:
            raise RuntimeError("MediaSession.listen() is already active")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sink_done = done
        try:
            for pcm in self._frames_q.take_all():
                on_frame(pcm)
            if self._frames_q.closed:
                return
            self._sink = on_frame
            await done
        finally:
            self._sink = None
            self._sink_done = None

    def deliver(self, msg: str | bytes, arrived_at: float) -> None:
        """Every message from Asterisk, with when it arrived (clock time base). Caller audio, one
        message per call every 20 ms, is handled here without further calls but the recorder's
        and the agent's."""
        if isinstance(msg, str):
            self._on_text(msg, arrived_at)
            return
        data = msg
        stats = self._stats
        stats.frames_in += 1
        stats.bytes_in += len(data)
        if self._odd_bytes_matter and len(data) % 2:
            # A broken peer's half sample would shift every later sample by one byte.
            data = data[:-1]
        if not data:
            return
        if self._recorder is not None:
            self._recorder.caller(arrived_at - self._t0, data)
        sink = self._sink
        if sink is not None:
            try:
                sink(self._decode(data))
            except Exception as exc:
                # The agent's failure, not the call's: it ends the agent's listen(), not the reader.
                self._sink = None
                done = self._sink_done
                if done is not None and not done.done():
                    done.set_exception(exc)
            return
        if not self._frames_q.push(self._decode(data)):
            stats.frames_in_dropped += 1
            if stats.frames_in_dropped == 1 or stats.frames_in_dropped % 500 == 0:
                log.warning(
                    "agent is not consuming caller audio; dropping oldest frames",
                    extra={**self._log_extra, "dropped": stats.frames_in_dropped},
                )

    def close(self) -> None:
        """The call ended: ``frames()`` and ``listen()`` end."""
        self._frames_q.close()
        done = self._sink_done
        if done is not None and not done.done():
            done.set_result(None)


class ControlEvents:
    """Asterisk's control events of one call: to the play-out model, or to the agent's events."""

    def __init__(
        self, out: Playout, events: DropQueue[CallEvent], stats: MediaStats, t0: float, log_extra: dict[str, str]
    ) -> None:
        self._out = out
        self._events = events
        self._stats = stats
        self._t0 = t0
        self._log_extra = log_extra
        self.last_error: str | None = None
        self._unknown_logged = 0

    def on_text(self, text: str, now: float) -> None:
        """One text message from Asterisk, arrived at ``now``."""
        event = parse_event(text)
        if isinstance(event, MediaMarkProcessed):
            self._out.on_mark_processed(event, now)
        elif isinstance(event, DtmfEnd):
            self._events.push(Dtmf(event.digit, int((now - self._t0) * 1000)))
        elif isinstance(event, Status):
            self._out.on_status(event, now)
        elif isinstance(event, MediaXoff):
            self._out.xoff = True
            self._stats.xoff += 1
            log.warning("Asterisk sent MEDIA_XOFF; holding audio", extra=self._log_extra)
        elif isinstance(event, MediaXon):
            self._out.on_xon()
        elif isinstance(event, ErrorEvent):
            self._stats.errors += 1
            self.last_error = event.error_text
            log.warning(
                "Asterisk media ERROR: %s",
                event.error_text,
                extra={**self._log_extra, "error_text": event.error_text},
            )
        elif isinstance(event, QueueDrained | MediaBufferingCompleted):
            log.debug("media event %s", type(event).__name__, extra=self._log_extra)
        elif isinstance(event, MediaStart):
            log.warning("duplicate MEDIA_START ignored", extra=self._log_extra)
        elif isinstance(event, UnknownEvent | Malformed):
            self._stats.unknown_messages += 1
            level = logging.WARNING if self._unknown_logged < _MAX_LOGGED_UNKNOWN else logging.DEBUG
            self._unknown_logged += 1
            log.log(level, "unrecognised media text message", extra={**self._log_extra, "raw": event.raw[:120]})
