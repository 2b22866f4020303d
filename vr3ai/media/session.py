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
can stall its bridge (#2140). With many calls up, the socket is read by the media clock's tick
instead of the event loop (``vr3ai.media.tickread``); arrival times are then the middle of the time
since the previous read.

Transport: sends are synchronous and non-blocking (the transport orders and buffers them), so the
shared clock can service 150 sessions per tick without awaiting each one. See ``server.py`` for the
Starlette adapter.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Generic, Literal, Protocol, TypeVar

from vr3ai.media.clock import MediaClock, shared_clock
from vr3ai.media.codec import WireFormat, wire_format
from vr3ai.media.interface import CallEnded, CallEvent, Dtmf, MarkHeard
from vr3ai.media.protocol import (
    Command,
    ControlFormat,
    DtmfEnd,
    ErrorEvent,
    FlushMedia,
    GetStatus,
    Hangup,
    Malformed,
    MarkMedia,
    MediaBufferingCompleted,
    MediaMarkProcessed,
    MediaStart,
    MediaXoff,
    MediaXon,
    QueueDrained,
    Status,
    UnknownEvent,
    format_command,
    parse_event,
)
from vr3ai.media.recording import CallRecorder

log = logging.getLogger("vr3ai.media.session")

T = TypeVar("T")


class MediaTransport(Protocol):
    """The socket as the session needs it. Sends never block and keep their order."""

    def send_text(self, text: str) -> None: ...

    def send_bytes(self, data: bytes) -> None: ...

    async def receive(self) -> str | bytes | None:
        """Next message; ``None`` once the socket is closed (see :attr:`close_code`)."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    @property
    def close_code(self) -> int | None: ...


class MediaFormatError(ValueError):
    """MEDIA_START announced a format this session cannot re-frame (e.g. opus passthrough)."""


class MediaSessionClosed(ConnectionError, TimeoutError):
    """The media session ended while (or before) waiting for Asterisk. Also a TimeoutError, so
    code that treats "no STATUS in time" as the normal failure needs no extra case."""


@dataclass(frozen=True)
class MediaConfig:
    target_lead_ms: float = 60.0
    """How far ahead of real time Asterisk's queue reaches right after each tick; just before the
    next tick it is one tick less (60 -> 40 ms with 20 ms ticks). The margin before the next tick
    is what absorbs a late event loop; below ~40 a busy loop causes audible gaps. Speech start
    and barge-in do not pay for it (fast start, flush)."""
    send_silence: bool = True
    """Stream silence frames while the agent is quiet (Asterisk 22.10 does not)."""
    fast_start: bool = True
    """FLUSH_MEDIA queued silence when speech starts, so it is not delayed by the lead."""
    max_inbound_frames: int = 50
    """Caller frames buffered for a slow agent (50 = 1 s of 20 ms frames); oldest dropped beyond."""
    status_interval_s: float = 5.0
    """Periodic GET_STATUS to re-anchor the queue model; 0 disables."""
    resync_threshold_ms: float = 40.0
    """Re-anchor the model only when it is off by more than this (Asterisk's timer phase is unknown
    to us, so smaller differences are noise)."""
    recording_jitter_ms: float = 60.0
    tick_reads_from: int = 16
    """From this many media sockets in the process, the media clock reads them once per tick
    instead of the event loop waking for every frame (:mod:`vr3ai.media.tickread`): a fifth to a third less
    CPU per call at 100 calls, for 10 ms more latency on average; 0 never. Only sockets served by
    :mod:`vr3ai.media.direct`."""
    paired_sends_from: int = 16
    """From this many sessions on the clock, refill Asterisk's queue two frames at a time, every
    other tick: half the messages (each one a write and a wake-up of an Asterisk thread), the
    same lowest lead before a refill (``target_lead_ms`` less a frame), one frame more queued
    at the top. Speech start is not delayed by it (fast start sends a whole lead at once).
    0: never."""
    ring_sends: bool = True
    """Send what sessions send during a clock tick with one io_uring submission (Linux; elsewhere
    frame by frame): :mod:`vr3ai.media.uring`. Only sockets served by :mod:`vr3ai.media.direct`."""
    close_grace_s: float = 1.0
    """After we close, how long the peer gets to complete the close before the session ends
    anyway (a peer that stopped reading must not keep the call and its owner waiting)."""


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """Why and how a media session ended. ``code`` is the WebSocket close code if known."""

    code: int | None
    reason: str
    initiator: Literal["remote", "local", "error"]
    at_ms: int


@dataclass
class MediaStats:
    frames_in: int = 0
    bytes_in: int = 0
    frames_in_dropped: int = 0
    """Caller frames dropped because the agent did not consume :meth:`MediaSession.frames` fast enough."""
    frames_out: int = 0
    messages_out: int = 0
    """Binary messages sent: frames due in the same tick go out as one message."""
    audio_frames_out: int = 0
    silence_frames_out: int = 0
    pad_bytes_out: int = 0
    """Silence bytes used to complete a partial last frame."""
    late_ticks: int = 0
    """Services that came more than 1.5 frames after the previous one (our loop was late)."""
    skipped_ms: float = 0.0
    """Time Asterisk's queue was empty while we were streaming (the caller heard a gap)."""
    max_send_gap_ms: float = 0.0
    marks_sent: int = 0
    marks_heard: int = 0
    marks_cancelled: int = 0
    flushes: int = 0
    flushed_ms: float = 0.0
    fast_starts: int = 0
    xoff: int = 0
    resyncs: int = 0
    errors: int = 0
    """ERROR events from Asterisk."""
    unknown_messages: int = 0

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


class _Queue(Generic[T]):
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


_Sent = tuple[float, int, bytes]
"""A frame sent to Asterisk and not yet played out (per our model): (start, end_off, payload), where
``start`` is when it starts playing and ``end_off`` the stream offset after it, -1 for generated
silence. A tuple, not an object: one is made per call per 20 ms, and a class's ``__init__`` is a
Python call."""


@dataclass(slots=True)
class _Segment:
    """Agent audio between two marks, in stream offsets; ``frozen_ms`` once final."""

    start: int
    end: int
    frozen_ms: float | None = None


@dataclass(slots=True)
class _Mark:
    wire_id: str
    name: str
    offset: int
    segment: _Segment
    expected_end: float = 0.0


_MAX_SEGMENTS = 256
_MIN_FRAME_MS = 10.0
_MAX_FRAME_MS = 200.0
_EPS = 1e-6
"""Seconds; absorbs float rounding so a frame due "now" is not off by one."""
_MAX_LOGGED_UNKNOWN = 5


class MediaSession:
    """Implements :class:`vr3ai.media.interface.CallAudio` for one chan_websocket channel.

    Created by the media server on MEDIA_START; the server then awaits :meth:`run` (the reader) for
    the life of the socket. Everything else is for the agent and the call owner.
    """

    def __init__(
        self,
        transport: MediaTransport,
        start: MediaStart,
        *,
        control_format: ControlFormat = ControlFormat.PLAIN,
        config: MediaConfig | None = None,
        clock: MediaClock | None = None,
        recording_path: str | os.PathLike[str] | None = None,
    ) -> None:
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
        self.config = config or MediaConfig()
        self.media_start = start
        self.channel_id = start.channel_id
        self.control_format = control_format
        self.sample_rate: int = wire.sample_rate
        self.stats = MediaStats()
        self.last_status: Status | None = None
        self.last_error: str | None = None

        self._transport = transport
        self._wire: WireFormat = wire
        self._clock = clock if clock is not None else shared_clock()
        self._loop = asyncio.get_running_loop()
        self._fb = start.optimal_frame_size
        frame_ms = start.ptime if start.ptime > 0 else size_ms
        self._frame_s = frame_ms / 1000.0
        self._bytes_per_ms = wire.sample_rate * wire.bytes_per_sample / 1000.0
        self._silence_frame = wire.silence(self._fb)
        self._send_silence = self.config.send_silence
        self._odd_bytes_matter = wire.bytes_per_sample == 2
        self._lead_s = self.config.target_lead_ms / 1000.0
        self._pairs_from = max(0, self.config.paired_sends_from)
        self._log_extra = {"channel_id": start.channel_id}

        self._t0 = self._clock.now()
        # Outbound stream: agent audio in wire format; offsets count bytes since the session began.
        self._buf = bytearray()
        self._rd = 0
        self._sent_off = 0
        self._end_off = 0
        self._pcm_carry = b""
        self._holes: deque[tuple[int, int]] = deque()
        """Stream ranges that are not agent audio (padding, flushed audio)."""
        self._inflight: deque[_Sent] = deque()
        self._inflight_audio = 0
        self._quiet_until = self._t0
        """End of the last generated silence frame played (for the recording's agent track)."""
        self._play_end = self._t0
        self._heard_off = 0
        self._streaming = False
        self._xoff = False
        self._last_send: float | None = None
        self._last_service: float | None = None
        self._frames_sent_total = 0
        self._flush_gen = 0
        self._batch: list[bytes] = []
        """Frames of the current service, sent as one message (one syscall instead of several)."""

        self._mark_seq = 0
        self._local_marks: deque[_Mark] = deque()
        self._pending_marks: dict[str, _Mark] = {}
        self._segments: OrderedDict[str, _Segment] = OrderedDict()
        self._seg_start = 0

        self._status_reqs: deque[tuple[int, int]] = deque()
        self._status_waiters: list[asyncio.Future[Status]] = []
        self._last_status_req = self._t0

        self._frames_q: _Queue[bytes] = _Queue(max(1, self.config.max_inbound_frames))
        self._sink: Callable[[bytes], None] | None = None
        """The agent's frame handler while it listens (frames then bypass the queue)."""
        self._sink_done: asyncio.Future[None] | None = None
        self._decode = wire.decode
        self._events_q: _Queue[CallEvent] = _Queue()

        self._recorder = CallRecorder(wire, jitter_ms=self.config.recording_jitter_ms) if recording_path else None
        self._recording_path = Path(recording_path) if recording_path else None

        self._running = False
        self._reader_task: asyncio.Task[object] | None = None
        self._stop_requested = False
        self._closing = False
        self._finished = False
        self._local_close: tuple[str, int] | None = None
        self._unknown_logged = 0
        self._recording_task: asyncio.Task[None] | None = None
        self.closed: asyncio.Future[CloseInfo] = self._loop.create_future()
        """Resolves once when the socket is gone, whoever closed it."""
        self.recording: asyncio.Future[Path | None] = self._loop.create_future()
        """Resolves after the WAV is written (None without a recording path or on failure)."""

    # ------------------------------------------------------------------ CallAudio

    async def frames(self) -> AsyncIterator[bytes]:
        """Caller audio as PCM16 (one chunk per Asterisk frame). Ends when the call ends."""
        while True:
            item = await self._frames_q.get()
            if item is None:
                return
            yield item

    async def listen(self, on_frame: Callable[[bytes], None]) -> None:
        """Caller audio pushed to ``on_frame`` by the reader (see :class:`~vr3ai.media.interface.PushedFrames`)."""
        if self._sink_done is not None:
            raise RuntimeError("MediaSession.listen() is already active")
        done: asyncio.Future[None] = self._loop.create_future()
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
        now = self._clock.now()
        was_idle = self._end_off == self._sent_off
        if self._pcm_carry:
            pcm = self._pcm_carry + pcm
            self._pcm_carry = b""
        if len(pcm) % 2:
            self._pcm_carry = pcm[-1:]
            pcm = pcm[:-1]
        if pcm:
            self._append(self._wire.encode(pcm))
        if mark is not None:
            self._pcm_carry = b""
            self._add_mark(mark)
        if (
            self.config.fast_start
            and was_idle
            and self._end_off > self._sent_off
            and not self._xoff
            and self._inflight_audio == 0
            and not self._pending_marks
            and any(s[0] > now + _EPS for s in self._inflight)
        ):
            self._fast_start(now)
        self._fill(now)

    def flush(self) -> int:
        """Barge-in: drop every agent frame the caller has not heard (ours and Asterisk's queue).

        Returns the milliseconds of agent audio dropped. Pending marks are cancelled (no MarkHeard);
        :meth:`heard_ms_of` keeps what each marked utterance had played by now."""
        if self._finished:
            return 0
        now = self._clock.now()
        self._retire(now)
        # The frame Asterisk is playing right now was dequeued at its last tick: FLUSH_MEDIA
        # cannot take it back, so it stays in the model.
        kept: deque[_Sent] = deque()
        dropped_any = False
        for sent in self._inflight:
            if sent[0] <= now + _EPS:
                kept.append(sent)
            else:
                dropped_any = True
        final_heard = self._heard_off
        for _start, end_off, _payload in kept:
            if end_off >= 0:
                final_heard = max(final_heard, end_off)
        dropped_bytes = (self._end_off - final_heard) - self._hole_bytes(final_heard, self._end_off)
        for seg in self._segments.values():
            if seg.frozen_ms is None and seg.end > final_heard:
                seg.frozen_ms = self._ms(min(max(final_heard - seg.start, 0), seg.end - seg.start))
        cancelled = len(self._pending_marks) + len(self._local_marks)
        if (dropped_any or self._pending_marks) and not self._closing:
            self._send_command(FlushMedia())
        self._pending_marks.clear()
        self._local_marks.clear()
        if final_heard < self._end_off:
            self._add_hole(final_heard, self._end_off)
        self._inflight = kept
        self._inflight_audio = sum(1 for s in kept if s[1] >= 0)
        self._play_end = max(now, kept[-1][0] + self._frame_s) if kept else now
        self._buf = bytearray()
        self._rd = 0
        self._sent_off = self._end_off
        self._seg_start = self._end_off
        self._pcm_carry = b""
        self._flush_gen += 1
        dropped_ms = self._ms(max(dropped_bytes, 0))
        self.stats.flushes += 1
        self.stats.marks_cancelled += cancelled
        self.stats.flushed_ms += dropped_ms
        if not self._closing:
            self._fill(now)
        return round(dropped_ms)

    def queued_ms(self) -> int:
        """Agent audio queued (here or at Asterisk) that the caller has not heard yet."""
        now = self._clock.now()
        pos = self._heard_pos(now)
        unheard = (self._end_off - pos) - self._hole_bytes(pos, self._end_off)
        return round(self._ms(max(unheard, 0)))

    def heard_ms_of(self, mark: str) -> int | None:
        """How much of the utterance closed by ``play(..., mark=mark)`` the caller has heard, in ms.

        The utterance is all audio queued after the previous mark (or the last flush) up to that
        mark. It grows while it plays, is complete once MarkHeard fired, and is frozen by
        :meth:`flush` at what had been played. None for an unknown (or long forgotten) mark."""
        seg = self._segments.get(mark)
        if seg is None:
            return None
        if seg.frozen_ms is not None:
            return round(seg.frozen_ms)
        pos = self._heard_pos(self._clock.now())
        return round(self._ms(min(max(pos - seg.start, 0), seg.end - seg.start)))

    def clock_ms(self) -> int:
        return int((self._clock.now() - self._t0) * 1000)

    async def hangup(self, reason: str) -> None:
        """Send HANGUP (Asterisk hangs up the media channel, cause 16) and close the socket."""
        if self._closing or self._finished:
            return
        self._closing = True
        self._local_close = (f"hangup:{reason}", 1000)
        self._send_command(Hangup())
        await self._close_transport(1000)

    async def close(self, code: int = 1000, reason: str = "closed") -> None:
        """Close the socket without HANGUP (Asterisk still hangs the media channel up, cause 16)."""
        if self._closing or self._finished:
            return
        self._closing = True
        self._local_close = (f"local:{reason}", code)
        await self._close_transport(code)

    # ------------------------------------------------------------------ extras for the call owner

    def send_command(self, command: Command) -> None:
        """Send any chan_websocket command in this call's control format (e.g. ANSWER with ``n``)."""
        self._send_command(command)

    async def get_status(self, within_s: float = 2.0) -> Status:
        """Ask Asterisk for its queue state (GET_STATUS -> STATUS). Raises TimeoutError after
        ``within_s``, MediaSessionClosed if the session ends first."""
        if self._closing or self._finished:
            raise MediaSessionClosed("media session closed")
        fut: asyncio.Future[Status] = self._loop.create_future()
        self._status_waiters.append(fut)
        self._request_status(self._clock.now())
        return await asyncio.wait_for(fut, within_s)

    @property
    def lead_ms(self) -> float:
        """Our model of how far Asterisk's queue reaches ahead of now."""
        return max(0.0, (self._play_end - self._clock.now()) * 1000.0)

    # ------------------------------------------------------------------ reader

    async def run(self) -> CloseInfo:
        """Read the socket until it closes. Never blocks on the agent. Returns the close info."""
        if self._running or self._finished:
            raise RuntimeError("MediaSession.run() called twice")
        self._running = True
        self._reader_task = asyncio.current_task()
        self._clock.add(self)
        self._fill(self._clock.now())
        receive = self._transport.receive
        # A transport that can push (vr3ai.media.direct) calls us from its data_received: no task
        # wake-up per 20 ms frame. The others are read in a loop.
        attach = getattr(self._transport, "attach", None)
        error: BaseException | None = None
        try:
            if attach is not None:
                await attach(self._on_message, self._clock, self.config.tick_reads_from, self.config.ring_sends)
            else:
                while (msg := await receive()) is not None:
                    self._on_message(msg)
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
                self._closing = True
                try:
                    await self._transport.close(1011)
                except Exception:
                    log.debug("transport close failed", exc_info=True, extra=self._log_extra)
        finally:
            self._finish(error)
        return self.closed.result()

    def _on_message(self, msg: str | bytes) -> None:
        """Every message from Asterisk. Caller audio, one message per call every 20 ms, is handled
        here without further calls but the recorder's and the agent's."""
        clock = self._clock
        now = clock.time() - clock.arrival_offset_s
        if isinstance(msg, str):
            self._on_text(msg, now)
            return
        data = msg
        stats = self.stats
        stats.frames_in += 1
        stats.bytes_in += len(data)
        if self._odd_bytes_matter and len(data) % 2:
            # A broken peer's half sample would shift every later sample by one byte.
            data = data[:-1]
        if not data:
            return
        if self._recorder is not None:
            self._recorder.caller(now - self._t0, data)
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

    def _on_text(self, text: str, now: float) -> None:
        event = parse_event(text)
        if isinstance(event, MediaMarkProcessed):
            self._on_mark_processed(event, now)
        elif isinstance(event, DtmfEnd):
            self._events_q.push(Dtmf(event.digit, self._at_ms(now)))
        elif isinstance(event, Status):
            self._on_status(event, now)
        elif isinstance(event, MediaXoff):
            self._xoff = True
            self.stats.xoff += 1
            log.warning("Asterisk sent MEDIA_XOFF; holding audio", extra=self._log_extra)
        elif isinstance(event, MediaXon):
            if self._xoff:
                self._xoff = False
                # ``now`` may be the estimated arrival (tick reads); sending goes by the clock.
                now = self._clock.now()
                self._request_status(now)
                self._fill(now)
        elif isinstance(event, ErrorEvent):
            self.stats.errors += 1
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
            self.stats.unknown_messages += 1
            level = logging.WARNING if self._unknown_logged < _MAX_LOGGED_UNKNOWN else logging.DEBUG
            self._unknown_logged += 1
            log.log(level, "unrecognised media text message", extra={**self._log_extra, "raw": event.raw[:120]})

    def _on_mark_processed(self, event: MediaMarkProcessed, now: float) -> None:
        mark = self._pending_marks.pop(event.correlation_id or "", None)
        if mark is None:
            # A mark cancelled by flush whose event was already on the wire, or not ours.
            log.debug("ignoring MEDIA_MARK_PROCESSED %s", event.correlation_id, extra=self._log_extra)
            return
        seg = mark.segment
        seg.frozen_ms = self._ms(seg.end - seg.start)
        if mark.offset > self._heard_off:
            self._heard_off = mark.offset
        self.stats.marks_heard += 1
        self._events_q.push(MarkHeard(mark.name, self._at_ms(now)))
        # The marker is emitted on the timer tick that ends the previous frame: an exact anchor.
        self._resync(now - mark.expected_end)

    def _on_status(self, status: Status, now: float) -> None:
        self.last_status = status
        waiters, self._status_waiters = self._status_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(status)
        if not self._status_reqs:
            return
        sent_before, gen = self._status_reqs.popleft()
        if gen != self._flush_gen or status.media_paused or self._xoff:
            return
        # queue_length counts audio frames queued when GET_STATUS was handled; frames we sent after
        # it are queued now too. The frame being played has on average half a frame left.
        frames = status.queue_length + (self._frames_sent_total - sent_before)
        measured_end = now + frames * self._frame_s + self._frame_s / 2
        self._resync(measured_end - max(self._play_end, now))

    # ------------------------------------------------------------------ pacing

    def service(self, now: float) -> None:
        """Called by the shared clock every tick."""
        if self._closing or self._finished:
            return
        last = self._last_service
        if last is not None and now - last > 1.5 * self._frame_s:
            self.stats.late_ticks += 1
        self._last_service = now
        self._retire(now)
        interval = self.config.status_interval_s
        if interval > 0 and now - self._last_status_req >= interval - _EPS:
            self._request_status(now)
        self._fill(now)

    def _fill(self, now: float) -> None:
        if self._closing or self._finished:
            return
        if self._play_end < now:
            if self._streaming and not self._xoff:
                gap = now - self._play_end
                if gap > 0.001:
                    self.stats.skipped_ms += gap * 1000.0
            self._play_end = now
        if self._xoff:
            return
        # Threshold half a frame below the target: with the frame grid aligned to the tick grid the
        # lead at each tick sits half a frame away from it, so tick jitter < F/2 changes nothing.
        horizon = now + self._lead_s - self._frame_s / 2
        streaming = True
        if self._play_end < horizon:
            pairs = self._pairs_from
            if pairs and len(self._clock) >= pairs:
                horizon += self._frame_s  # two frames now, none on the next tick
            while self._play_end < horizon:
                if not self._send_frame(now):
                    streaming = False
                    break
        self._flush_batch()
        self._streaming = streaming and (self._send_silence or self._end_off > self._sent_off)

    def _send_frame(self, now: float) -> bool:
        fb = self._fb
        avail = self._end_off - self._sent_off
        if avail > 0:
            if avail < fb:
                self._pad(fb - avail)
            rd = self._rd
            payload = bytes(self._buf[rd : rd + fb])
            self._rd = rd + fb
            self._sent_off += fb
            end_off = self._sent_off
            self._inflight_audio += 1
            self.stats.audio_frames_out += 1
            if self._rd >= 65536 and self._rd * 2 >= len(self._buf):
                del self._buf[: self._rd]
                self._rd = 0
        elif self._send_silence:
            payload = self._silence_frame
            end_off = -1
            self.stats.silence_frames_out += 1
        else:
            return False
        if self._play_end > now:
            start = self._play_end
        else:
            start = now + self._clock.align(now, self._frame_s)
        self._play_end = start + self._frame_s
        self._batch.append(payload)
        self._inflight.append((start, end_off, payload))
        self._frames_sent_total += 1
        stats = self.stats
        stats.frames_out += 1
        if self._last_send is not None and now > self._last_send:
            gap_ms = (now - self._last_send) * 1000.0
            if gap_ms > stats.max_send_gap_ms:
                stats.max_send_gap_ms = gap_ms
        self._last_send = now
        if end_off >= 0:
            marks = self._local_marks
            while marks and marks[0].offset <= end_off:
                self._send_mark(marks.popleft())
        return True

    def _retire(self, now: float) -> None:
        inflight = self._inflight
        frame_s = self._frame_s
        recorder = self._recorder
        limit = now + _EPS
        while inflight and inflight[0][0] + frame_s <= limit:
            start, end_off, payload = inflight.popleft()
            if end_off >= 0:
                self._inflight_audio -= 1
                if end_off > self._heard_off:
                    self._heard_off = end_off
                if recorder is not None:
                    recorder.agent(start - self._t0, payload)
            else:
                # Generated silence is not handed to the recorder (it fills gaps with silence).
                self._quiet_until = start + frame_s
        holes = self._holes
        while holes and holes[0][1] <= self._heard_off:
            holes.popleft()

    def _heard_pos(self, now: float) -> int:
        self._retire(now)
        pos = self._heard_off
        if self._inflight:
            start, end_off, _payload = self._inflight[0]
            if end_off >= 0 and start <= now:
                partial = int((now - start) / self._frame_s * self._fb)
                pos = max(pos, end_off - self._fb + partial)
        return pos

    def _fast_start(self, now: float) -> None:
        self._send_command(FlushMedia())
        kept = deque(s for s in self._inflight if s[0] <= now + _EPS)
        self._inflight = kept
        self._play_end = max(now, kept[-1][0] + self._frame_s) if kept else now
        self._flush_gen += 1
        self.stats.fast_starts += 1

    def _resync(self, delta_s: float) -> None:
        if abs(delta_s) * 1000.0 <= self.config.resync_threshold_ms:
            return
        # Whole frames: the measurement is only good to about a frame, and keeping the grid phase
        # keeps the per-tick sends steady.
        delta_s = round(delta_s / self._frame_s) * self._frame_s
        self._inflight = deque((start + delta_s, end_off, payload) for start, end_off, payload in self._inflight)
        self._play_end += delta_s
        self.stats.resyncs += 1
        log.debug("re-anchored play-out model by %.1f ms", delta_s * 1000.0, extra=self._log_extra)

    def _request_status(self, now: float) -> None:
        if self._closing or self._finished:
            return
        # Replies come back in order; a lost one must not poison the pairing forever.
        if len(self._status_reqs) > 4:
            self._status_reqs.clear()
        self._status_reqs.append((self._frames_sent_total, self._flush_gen))
        self._last_status_req = now
        self._send_command(GetStatus())

    # ------------------------------------------------------------------ stream bookkeeping

    def _append(self, wire: bytes) -> None:
        self._buf += wire
        self._end_off += len(wire)

    def _add_hole(self, lo: int, hi: int) -> None:
        # Holes stay sorted and disjoint: a flush hole swallows the pads inside it.
        holes = self._holes
        while holes and holes[-1][0] >= lo:
            holes.pop()
        if holes and holes[-1][1] > lo:
            holes[-1] = (holes[-1][0], lo)
        holes.append((lo, hi))

    def _pad(self, n: int) -> None:
        self._add_hole(self._end_off, self._end_off + n)
        self._append(self._wire.silence(n))
        self.stats.pad_bytes_out += n

    def _add_mark(self, name: str) -> None:
        audio_end = self._end_off
        rem = (self._end_off - self._sent_off) % self._fb
        if rem:
            self._pad(self._fb - rem)
        seg = _Segment(self._seg_start, audio_end)
        self._segments[name] = seg
        self._segments.move_to_end(name)
        while len(self._segments) > _MAX_SEGMENTS:
            self._segments.popitem(last=False)
        self._seg_start = self._end_off
        self._mark_seq += 1
        mark = _Mark(f"m{self._mark_seq}", name, self._end_off, seg)
        if mark.offset <= self._sent_off:
            self._send_mark(mark)
        else:
            self._local_marks.append(mark)

    def _send_mark(self, mark: _Mark) -> None:
        mark.expected_end = self._play_end
        self._pending_marks[mark.wire_id] = mark
        self.stats.marks_sent += 1
        self._send_command(MarkMedia(mark.wire_id))

    def _hole_bytes(self, lo: int, hi: int) -> int:
        total = 0
        for a, b in self._holes:
            a2, b2 = max(a, lo), min(b, hi)
            if b2 > a2:
                total += b2 - a2
        return total

    def _ms(self, nbytes: float) -> float:
        return nbytes / self._bytes_per_ms

    def _at_ms(self, now: float) -> int:
        return int((now - self._t0) * 1000)

    def _flush_batch(self) -> None:
        batch = self._batch
        if batch:
            self._transport.send_bytes(batch[0] if len(batch) == 1 else b"".join(batch))
            batch.clear()
            self.stats.messages_out += 1

    def _send_command(self, command: Command) -> None:
        # Text must not overtake audio batched before it (MARK_MEDIA follows its last frame).
        self._flush_batch()
        try:
            self._transport.send_text(format_command(command, self.control_format))
        except Exception:
            log.exception("could not send %s", type(command).__name__, extra=self._log_extra)

    # ------------------------------------------------------------------ teardown

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
        self._closing = True
        self._clock.remove(self)
        now = self._clock.now()
        at_ms = self._at_ms(now)
        self._retire(now)
        if self._local_close is not None:
            reason, code = self._local_close
            info = CloseInfo(code, reason, "local", at_ms)
        elif error is not None and not isinstance(error, asyncio.CancelledError):
            info = CloseInfo(self._transport.close_code or 1011, f"error:{type(error).__name__}", "error", at_ms)
        elif isinstance(error, asyncio.CancelledError):
            info = CloseInfo(self._transport.close_code, "local:cancelled", "local", at_ms)
        else:
            remote_code = self._transport.close_code
            reason = f"remote:{remote_code if remote_code is not None else 'unknown'}"
            info = CloseInfo(remote_code, reason, "remote", at_ms)
        for fut in self._status_waiters:
            if not fut.done():
                # Not cancel(): a CancelledError would look like the caller's task was cancelled.
                fut.set_exception(MediaSessionClosed("media session closed"))
        self._status_waiters.clear()
        self._events_q.push(CallEnded(info.reason, at_ms))
        self._events_q.close()
        self._frames_q.close()
        done = self._sink_done
        if done is not None and not done.done():
            done.set_result(None)
        if not self.closed.done():
            self.closed.set_result(info)
        log.info(
            "media session ended: %s",
            info.reason,
            extra={**self._log_extra, "close_code": info.code, "stats": self.stats.as_dict()},
        )
        recorder, path = self._recorder, self._recording_path
        if recorder is not None:
            recorder.agent_quiet_until(self._quiet_until - self._t0)
        if recorder is not None and path is not None:
            # Held on self: the loop keeps only a weak reference to tasks.
            self._recording_task = self._loop.create_task(
                self._write_recording(recorder, path), name=f"vr3ai-recording-{self.channel_id}"
            )
        elif not self.recording.done():
            self.recording.set_result(None)

    async def _write_recording(self, recorder: CallRecorder, path: Path) -> None:
        try:
            result: Path | None = await asyncio.to_thread(recorder.write_wav, path)
        except Exception:
            log.exception("writing the call recording failed", extra={**self._log_extra, "path": str(path)})
            result = None
        if not self.recording.done():
            self.recording.set_result(result)
