"""One call's media over Asterisk's chan_websocket: the :class:`CallAudio` the agent talks to.

How outbound audio is paced, and why:

chan_websocket (22.10) puts whatever we send into a per-channel queue and plays exactly one frame
per ptime from a timer; it never plays faster to catch up (Asterisk #2115). Anything we send early
therefore becomes *permanent* latency, and it also delays barge-in (the caller keeps hearing the
queue until we FLUSH_MEDIA). So the session keeps a model of that queue: every frame we send gets a
predicted play-out slot ``max(now, end_of_queue)``; on each tick of the shared
:class:`~vr3ai.media.clock.MediaClock` the session sends frames only while the predicted queue is
shorter than ``target_lead_ms``: right after a tick the queue reaches ``target_lead_ms`` ahead, just
before the next tick one tick less.

* Whole frames only: Asterisk drops the tail of a message that is not a multiple of
  ``optimal_frame_size`` (outside buffering mode). Agent audio is re-framed in a byte buffer; a
  partial frame is padded with silence only at the end of an utterance (a ``mark``) or when the
  buffer runs dry, never between two chunks that arrive in time. Frames due in the same tick go out
  as one message (Asterisk re-frames any multiple of the frame size), saving syscalls.
* Silence when idle: 22.10 generates no audio of its own when the queue is empty, so RTP to the
  caller would stop (NAT pinholes, carrier RTP timeouts). We stream silence frames instead.
* Stalls: if our loop stalls longer than the lead, Asterisk's queue runs dry; we count the gap as
  ``skipped_ms`` and refill only up to the target lead — a catch-up burst would be permanent delay.
* Fast start: when the agent starts talking while only silence is queued at Asterisk, we send
  FLUSH_MEDIA first so speech does not wait behind up to ``target_lead_ms`` of silence.
* Drift: the model is re-anchored when a MEDIA_MARK_PROCESSED arrives (exact play-out time) and from
  a periodic GET_STATUS (``queue_length`` counts audio frames only), if it is off by more than
  ``resync_threshold_ms``. That also absorbs clock-rate differences and Asterisk-side stalls.

Inbound audio: the reader never blocks. It decodes each frame to PCM16 and hands it to the agent's
handler if the agent listens (:meth:`MediaSession.listen`: a plain call, no task wake-up per frame), else
appends it to a bounded queue for :meth:`MediaSession.frames`; if that agent falls behind, the
oldest frames are dropped and counted. Asterisk's socket writes block while we do not read, which
can stall its bridge (#2140).

Transport: the session does not know how its socket is read or written. The transport hands it each
message with its arrival time (:meth:`MediaSession.deliver`; with many calls up the media engine
reads sockets on the clock's tick and estimates it, ``vr3ai.media.tickread``), and sends are
synchronous and non-blocking (the transport orders and buffers them), so the shared clock can
service 150 sessions per tick without awaiting each one.

Where the code is: this module is the call's lifecycle and its inbound side;
:mod:`vr3ai.media.playout` paces the agent's audio into Asterisk's queue (the model above);
:mod:`vr3ai.media.stream` re-frames it and keeps what the caller heard.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from vr3ai.media.clock import MediaClock
from vr3ai.media.codec import WireFormat, wire_format
from vr3ai.media.config import MediaConfig, MediaStats
from vr3ai.media.engine import MediaEngine
from vr3ai.media.inbound import CallerAudio, ControlEvents, DropQueue
from vr3ai.media.interface import CallEnded, CallEvent
from vr3ai.media.playout import Playout
from vr3ai.media.protocol import (
    Command,
    ControlFormat,
    Hangup,
    MediaStart,
    Status,
)
from vr3ai.media.recording import CallRecorder
from vr3ai.media.stream import AgentStream
from vr3ai.media.transport import MediaTransport

__all__ = [
    "CloseInfo",
    "MediaConfig",
    "MediaFormatError",
    "MediaSession",
    "MediaSessionClosed",
    "MediaStats",
    "MediaTransport",
]

log = logging.getLogger("vr3ai.media.session")

T = TypeVar("T")


class MediaFormatError(ValueError):
    """MEDIA_START announced a format this session cannot re-frame (e.g. opus passthrough)."""


class MediaSessionClosed(ConnectionError, TimeoutError):
    """The media session ended while (or before) waiting for Asterisk. Also a TimeoutError, so
    code that treats "no STATUS in time" as the normal failure needs no extra case."""


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """Why and how a media session ended. ``code`` is the WebSocket close code if known."""

    code: int | None
    reason: str
    initiator: Literal["remote", "local", "error"]
    at_ms: int


_MIN_FRAME_MS = 10.0
_MAX_FRAME_MS = 200.0


class MediaSession:
    """Implements :class:`vr3ai.media.interface.CallAudio` for one chan_websocket channel.

    Created by the media server on MEDIA_START; the server then awaits :meth:`run` (which attaches
    the session to its transport) for the life of the socket. Everything else is for the agent and
    the call owner. ``engine``: the process's :class:`~vr3ai.media.engine.MediaEngine` (its clock
    paces this session); ``clock`` alone (tests) makes a private engine around it.
    """

    def __init__(
        self,
        transport: MediaTransport,
        start: MediaStart,
        *,
        control_format: ControlFormat = ControlFormat.PLAIN,
        config: MediaConfig | None = None,
        engine: MediaEngine | None = None,
        clock: MediaClock | None = None,
        recording_path: str | os.PathLike[str] | None = None,
    ) -> None:
        wire, size_ms = _framing(start)
        size = start.optimal_frame_size
        if engine is None:
            engine = MediaEngine(clock=clock)
        self.config = config or MediaConfig()
        self.media_start = start
        self.channel_id = start.channel_id
        self.control_format = control_format
        self.sample_rate: int = wire.sample_rate
        self.stats = MediaStats()

        self._transport = transport
        self._clock = engine.clock
        self._loop = asyncio.get_running_loop()
        self._log_extra = {"channel_id": start.channel_id}
        self._recorder = CallRecorder(wire, jitter_ms=self.config.recording_jitter_ms) if recording_path else None
        self._recording_path = Path(recording_path) if recording_path else None
        self._events_q: DropQueue[CallEvent] = DropQueue()
        self._out = Playout(
            engine=engine,
            transport=transport,
            control_format=control_format,
            config=self.config,
            stats=self.stats,
            stream=AgentStream(wire, size, self.stats),
            silence_frame=wire.silence(size),
            frame_s=(start.ptime if start.ptime > 0 else size_ms) / 1000.0,
            recorder=self._recorder,
            on_mark_heard=self._events_q.push,
            log_extra=self._log_extra,
        )
        self._t0 = self._out.t0

        self._control = ControlEvents(self._out, self._events_q, self.stats, self._t0, self._log_extra)
        self._in = CallerAudio(
            wire,
            max_frames=self.config.max_inbound_frames,
            stats=self.stats,
            recorder=self._recorder,
            t0=self._t0,
            on_text=self._control.on_text,
            log_extra=self._log_extra,
        )

        self._running = False
        self._reader_task: asyncio.Task[object] | None = None
        self._stop_requested = False
        self._closing = False
        self._finished = False
        self._local_close: tuple[str, int] | None = None
        self._recording_task: asyncio.Task[None] | None = None
        self.closed: asyncio.Future[CloseInfo] = self._loop.create_future()
        """Resolves once when the socket is gone, whoever closed it."""
        self.recording: asyncio.Future[Path | None] = self._loop.create_future()
        """Resolves after the WAV is written (None without a recording path or on failure)."""

    @property
    def transport(self) -> MediaTransport:
        """The socket this session was handed (for its counters; the session owns its use)."""
        return self._transport

    @property
    def last_error(self) -> str | None:
        """The text of Asterisk's last ERROR event."""
        return self._control.last_error

    @property
    def xoff(self) -> bool:
        """True while Asterisk holds our audio (MEDIA_XOFF until MEDIA_XON)."""
        return self._out.xoff

    @property
    def frame_s(self) -> float:
        """Duration of one of Asterisk's frames (its ptime; the frame size's if ptime is 0)."""
        return self._out.frame_s

    @property
    def last_status(self) -> Status | None:
        """Asterisk's last STATUS reply."""
        return self._out.status.last

    # ------------------------------------------------------------------ CallAudio

    def frames(self) -> AsyncIterator[bytes]:
        """Caller audio as PCM16 (one chunk per Asterisk frame). Ends when the call ends."""
        return self._in.frames()

    async def listen(self, on_frame: Callable[[bytes], None]) -> None:
        """Caller audio pushed to ``on_frame`` by the reader (see :class:`~vr3ai.media.interface.PushedFrames`)."""
        await self._in.listen(on_frame)

    async def events(self) -> AsyncIterator[CallEvent]:
        """Dtmf, MarkHeard and finally CallEnded."""
        while True:
            item = await self._events_q.get()
            if item is None:
                return
            yield item

    def play(self, pcm: bytes, mark: str | None = None) -> None:
        """Queue agent PCM16 (any length). ``mark`` closes an utterance: its last frame is padded,
        MARK_MEDIA follows it, and :class:`MarkHeard` is emitted when Asterisk has played it."""
        if self._closing or self._finished:
            return
        self._out.play(pcm, mark)

    def flush(self) -> int:
        """Barge-in: drop every agent frame the caller has not heard (ours and Asterisk's queue).

        Returns the milliseconds of agent audio dropped. Pending marks are cancelled (no MarkHeard);
        :meth:`heard_ms_of` keeps what each marked utterance had played by now."""
        if self._finished:
            return 0
        return self._out.flush()

    def queued_ms(self) -> int:
        """Agent audio queued (here or at Asterisk) that the caller has not heard yet."""
        return round(self._out.stream.unheard_ms(self._out.heard_pos()))

    def heard_ms_of(self, mark: str) -> int | None:
        """How much of the utterance closed by ``play(..., mark=mark)`` the caller has heard, in ms.

        The utterance is all audio queued after the previous mark (or the last flush) up to that
        mark. It grows while it plays, is complete once MarkHeard fired, and is frozen by
        :meth:`flush` at what had been played. None for an unknown (or long forgotten) mark."""
        if mark not in self._out.stream.segments:
            return None
        heard = self._out.stream.heard_ms_of(mark, self._out.heard_pos())
        return None if heard is None else round(heard)

    def clock_ms(self) -> int:
        return int((self._clock.now() - self._t0) * 1000)

    async def hangup(self, reason: str) -> None:
        """Send HANGUP (Asterisk hangs up the media channel, cause 16) and close the socket."""
        if self._closing or self._finished:
            return
        self._set_closing()
        self._local_close = (f"hangup:{reason}", 1000)
        self._out.send_command(Hangup())
        await self._close_transport(1000)

    async def close(self, code: int = 1000, reason: str = "closed") -> None:
        """Close the socket without HANGUP (Asterisk still hangs the media channel up, cause 16)."""
        if self._closing or self._finished:
            return
        self._set_closing()
        self._local_close = (f"local:{reason}", code)
        await self._close_transport(code)

    # ------------------------------------------------------------------ extras for the call owner

    def send_command(self, command: Command) -> None:
        """Send any chan_websocket command in this call's control format (e.g. ANSWER with ``n``)."""
        self._out.send_command(command)

    async def get_status(self, within_s: float = 2.0) -> Status:
        """Ask Asterisk for its queue state (GET_STATUS -> STATUS). Raises TimeoutError after
        ``within_s``, MediaSessionClosed if the session ends first."""
        if self._closing or self._finished:
            raise MediaSessionClosed("media session closed")
        fut = self._out.status.wait(self._loop)
        self._out.request_status(self._clock.now())
        return await asyncio.wait_for(fut, within_s)

    def _request_status(self, now: float) -> None:
        self._out.request_status(now)

    @property
    def lead_ms(self) -> float:
        """Our model of how far Asterisk's queue reaches ahead of now."""
        return self._out.lead_ms

    # ------------------------------------------------------------------ inbound

    async def run(self) -> CloseInfo:
        """Take Asterisk's messages until the socket closes. Never blocks on the agent. Returns the
        close info."""
        if self._running or self._finished:
            raise RuntimeError("MediaSession.run() called twice")
        self._running = True
        self._reader_task = asyncio.current_task()
        self._clock.add(self._out)
        self._out.fill(self._clock.now())
        error: BaseException | None = None
        try:
            await self._transport.attach(self._in.deliver, self._clock.time)
        except asyncio.CancelledError as exc:
            task = self._reader_task
            if not (self._stop_requested and task is not None and task.uncancel() == 0):
                error = exc
                raise
            # Only we cancelled it (see _close_transport): a normal local end.
        except Exception as exc:
            error = exc
            log.exception("media reader failed", extra=self._log_extra)
            if not self._closing:
                self._set_closing()
                try:
                    await self._transport.close(1011)
                except Exception:
                    log.debug("transport close failed", exc_info=True, extra=self._log_extra)
        finally:
            self._finish(error)
        return self.closed.result()

    def deliver(self, msg: str | bytes, arrived_at: float) -> None:
        """One message from Asterisk and when it arrived (clock time base)."""
        self._in.deliver(msg, arrived_at)

    # ------------------------------------------------------------------ teardown

    def _set_closing(self) -> None:
        self._closing = True
        self._out.closing = True

    async def _close_transport(self, code: int) -> None:
        try:
            await asyncio.wait_for(self._transport.close(code), self.config.close_grace_s)
        except Exception:  # TimeoutError included: a stuck transport must not hold the caller
            log.debug("transport close failed", exc_info=True, extra=self._log_extra)
        if not self._running:
            self._finish(None)
            return
        if asyncio.current_task() is self._reader_task:
            return  # run() finishes the session when it unwinds
        # Asterisk answers our close within milliseconds and the reader ends; if the peer has
        # stopped reading it may never do so, and nobody must wait for it.
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), self.config.close_grace_s)
        except TimeoutError:
            log.warning("peer did not complete the close; ending the session", extra=self._log_extra)
            self._stop_requested = True
            task = self._reader_task
            if task is not None and not task.done():
                task.cancel()
            else:
                self._finish(None)

    def _finish(self, error: BaseException | None) -> None:
        if self._finished:
            return
        self._finished = True
        self._set_closing()
        self._clock.remove(self._out)
        now = self._clock.now()
        at_ms = int((now - self._t0) * 1000)
        self._out.retire(now)
        info = _close_info(self._local_close, error, self._transport.close_code, at_ms)
        self._out.status.fail(MediaSessionClosed("media session closed"))
        self._events_q.push(CallEnded(info.reason, at_ms))
        self._events_q.close()
        self._in.close()
        if not self.closed.done():
            self.closed.set_result(info)
        log.info(
            "media session ended: %s",
            info.reason,
            extra={**self._log_extra, "close_code": info.code, "stats": self.stats.as_dict()},
        )
        recorder, path = self._recorder, self._recording_path
        if recorder is not None:
            recorder.agent_quiet_until(self._out.quiet_until - self._t0)
        if recorder is not None and path is not None:
            # Held on self: the loop keeps only a weak reference to tasks.
            self._recording_task = self._loop.create_task(
                _write_recording(recorder, path, self.recording, self._log_extra),
                name=f"vr3ai-recording-{self.channel_id}",
            )
        elif not self.recording.done():
            self.recording.set_result(None)


def _framing(start: MediaStart) -> tuple[WireFormat, float]:
    """The wire format MEDIA_START announced and its frame's duration in ms; MediaFormatError if
    this session cannot re-frame it."""
    wire = wire_format(start.format)
    if wire is None:
        raise MediaFormatError(f"unsupported media format {start.format!r}")
    size = start.optimal_frame_size
    if size <= 0 or size % wire.bytes_per_sample:
        raise MediaFormatError(f"unusable optimal_frame_size {size} for {start.format}")
    size_ms = wire.ms_for_bytes(size)
    # chan_websocket's frame is one ptime of audio (20 ms for every re-framable codec). Anything
    # else is a broken peer; an absurd size would also make us allocate absurd silence frames.
    if not _MIN_FRAME_MS <= size_ms <= _MAX_FRAME_MS:
        raise MediaFormatError(f"optimal_frame_size {size} is {size_ms:.1f} ms of {start.format}")
    if start.ptime > 0 and abs(start.ptime - size_ms) > 1:
        raise MediaFormatError(f"optimal_frame_size {size} ({size_ms:.1f} ms) does not match ptime {start.ptime}")
    return wire, size_ms


def _close_info(
    local_close: tuple[str, int] | None, error: BaseException | None, close_code: int | None, at_ms: int
) -> CloseInfo:
    if local_close is not None:
        reason, code = local_close
        return CloseInfo(code, reason, "local", at_ms)
    if error is not None and not isinstance(error, asyncio.CancelledError):
        return CloseInfo(close_code or 1011, f"error:{type(error).__name__}", "error", at_ms)
    if isinstance(error, asyncio.CancelledError):
        return CloseInfo(close_code, "local:cancelled", "local", at_ms)
    reason = f"remote:{close_code if close_code is not None else 'unknown'}"
    return CloseInfo(close_code, reason, "remote", at_ms)


async def _write_recording(
    recorder: CallRecorder, path: Path, done: asyncio.Future[Path | None], log_extra: dict[str, str]
) -> None:
    try:
        result: Path | None = await asyncio.to_thread(recorder.write_wav, path)
    except Exception:
        log.exception("writing the call recording failed", extra={**log_extra, "path": str(path)})
        result = None
    if not done.done():
        done.set_result(result)
