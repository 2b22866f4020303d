"""Pacing one call's agent audio into Asterisk's queue: the play-out model (see
:mod:`vr3ai.media.session` for why it is paced this way).

:class:`Playout` predicts when each frame sent will play (``max(now, end_of_queue)``), sends on each
clock tick only while the predicted queue is shorter than the target lead, retires what has played
(for the recording and for what the caller heard), closes utterances with MARK_MEDIA and re-anchors
the model on MEDIA_MARK_PROCESSED and STATUS (:class:`StatusProbe`). It writes through the
session's transport and knows nothing of how that socket is written.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from vr3ai.media.engine import MediaEngine
from vr3ai.media.interface import MarkHeard
from vr3ai.media.protocol import (
    Command,
    ControlFormat,
    FlushMedia,
    GetStatus,
    MarkMedia,
    MediaMarkProcessed,
    Status,
    format_command,
)
from vr3ai.media.recording import CallRecorder
from vr3ai.media.stream import AgentStream, Segment

if TYPE_CHECKING:
    from vr3ai.media.config import MediaConfig, MediaStats
    from vr3ai.media.transport import MediaTransport

log = logging.getLogger("vr3ai.media.session")

_Sent = tuple[float, int, bytes]
"""A frame sent to Asterisk and not yet played out (per our model): (start, end_off, payload), where
``start`` is when it starts playing and ``end_off`` the stream offset after it, -1 for generated
silence. A tuple, not an object: one is made per call per 20 ms, and a class's ``__init__`` is a
Python call."""

EPS = 1e-6
"""Seconds; absorbs float rounding so a frame due "now" is not off by one."""


@dataclass(slots=True)
class _Mark:
    wire_id: str
    name: str
    offset: int
    segment: Segment
    expected_end: float = 0.0


class StatusProbe:
    """GET_STATUS requests and their STATUS replies: who waits for one, and what each measures."""

    def __init__(self, now: float) -> None:
        self.last: Status | None = None
        self.last_request = now
        self._requests: deque[tuple[int, int]] = deque()
        """(frames sent before, flush generation) per request not yet answered, in order."""
        self._waiters: list[asyncio.Future[Status]] = []

    def requested(self, now: float, frames_sent: int, flush_gen: int) -> None:
        # Replies come back in order; a lost one must not poison the pairing forever.
        if len(self._requests) > 4:
            self._requests.clear()
        self._requests.append((frames_sent, flush_gen))
        self.last_request = now

    def wait(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Status]:
        fut: asyncio.Future[Status] = loop.create_future()
        self._waiters.append(fut)
        return fut

    def answered(self, status: Status, now: float, frames_sent: int, flush_gen: int, frame_s: float) -> float | None:
        """Resolve the waiters; when Asterisk's queue ends by this STATUS, None if it answers none
        of our requests or one from before a flush, or the queue is paused."""
        self.last = status
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(status)
        if not self._requests:
            return None
        sent_before, gen = self._requests.popleft()
        if gen != flush_gen or status.media_paused:
            return None
        # queue_length counts audio frames queued when GET_STATUS was handled; frames we sent after
        # it are queued now too. The frame being played has on average half a frame left.
        frames = status.queue_length + (frames_sent - sent_before)
        return now + frames * frame_s + frame_s / 2

    def fail(self, exc: BaseException) -> None:
        for fut in self._waiters:
            if not fut.done():
                # Not cancel(): a CancelledError would look like the caller's task was cancelled.
                fut.set_exception(exc)
        self._waiters.clear()


class Sender:
    """What one call writes: the frames of one service as one message (one syscall instead of
    several), commands in order behind them."""

    __slots__ = ("_control_format", "_log_extra", "_stats", "_transport", "batch")

    def __init__(
        self, transport: MediaTransport, control_format: ControlFormat, stats: MediaStats, log_extra: dict[str, str]
    ) -> None:
        self._transport = transport
        self._control_format = control_format
        self._stats = stats
        self._log_extra = log_extra
        self.batch: list[bytes] = []

    def flush(self) -> None:
        batch = self.batch
        if batch:
            self._transport.send_bytes(batch[0] if len(batch) == 1 else b"".join(batch))
            batch.clear()
            self._stats.messages_out += 1

    def command(self, command: Command) -> None:
        # Text must not overtake audio batched before it (MARK_MEDIA follows its last frame).
        self.flush()
        try:
            self._transport.send_text(format_command(command, self._control_format))
        except Exception:
            log.exception("could not send %s", type(command).__name__, extra=self._log_extra)


class Playout:
    """The play-out model and pacing of one call (see module doc). Serviced by the clock."""

    def __init__(
        self,
        *,
        engine: MediaEngine,
        transport: MediaTransport,
        control_format: ControlFormat,
        config: MediaConfig,
        stats: MediaStats,
        stream: AgentStream,
        silence_frame: bytes,
        frame_s: float,
        recorder: CallRecorder | None,
        on_mark_heard: Callable[[MarkHeard], object],
        log_extra: dict[str, str],
    ) -> None:
        self._engine = engine
        self._clock = engine.clock
        self._sender = Sender(transport, control_format, stats, log_extra)
        self._batch = self._sender.batch
        self.send_command = self._sender.command
        self.config = config
        self.stats = stats
        self.stream = stream
        self._fb = stream.fb
        self._frame_s = self.frame_s = frame_s
        self._silence_frame = silence_frame
        self._send_silence = config.send_silence
        self._lead_s = config.target_lead_ms / 1000.0
        self._recorder = recorder
        self._on_mark_heard = on_mark_heard
        self._log_extra = log_extra
        self.t0 = self._clock.now()
        self._inflight: deque[_Sent] = deque()
        self._inflight_audio = 0
        self.quiet_until = self.t0
        """End of the last generated silence frame played (for the recording's agent track)."""
        self._play_end = self.t0
        self._heard_off = 0
        self._streaming = False
        self.xoff = False
        self.closing = False
        """Set by the session once it closes: nothing more is sent."""
        self._last_send: float | None = None
        self._last_service: float | None = None
        self._frames_sent_total = 0
        self._flush_gen = 0
        self._mark_seq = 0
        self._local_marks: deque[_Mark] = deque()
        self._pending_marks: dict[str, _Mark] = {}
        self.status = StatusProbe(self.t0)

    # ------------------------------------------------------------------ the agent's side
    def play(self, pcm: bytes, mark: str | None) -> None:
        now = self._clock.now()
        s = self.stream
        was_idle = s.end_off == s.sent_off
        s.write(pcm)
        if mark is not None:
            self._add_mark(mark)
        if (
            self.config.fast_start
            and was_idle
            and s.end_off > s.sent_off
            and not self.xoff
            and self._inflight_audio == 0
            and not self._pending_marks
            and any(x[0] > now + EPS for x in self._inflight)
        ):
            self._fast_start(now)
        self.fill(now)

    def flush(self) -> int:
        now = self._clock.now()
        self.retire(now)
        # The frame Asterisk is playing right now was dequeued at its last tick: FLUSH_MEDIA
        # cannot take it back, so it stays in the model.
        kept: deque[_Sent] = deque()
        dropped_any = False
        for sent in self._inflight:
            if sent[0] <= now + EPS:
                kept.append(sent)
            else:
                dropped_any = True
        final_heard = self._heard_off
        for _start, end_off, _payload in kept:
            if end_off >= 0:
                final_heard = max(final_heard, end_off)
        cancelled = len(self._pending_marks) + len(self._local_marks)
        if (dropped_any or self._pending_marks) and not self.closing:
            self.send_command(FlushMedia())
        self._pending_marks.clear()
        self._local_marks.clear()
        dropped_ms = self.stream.ms(self.stream.drop_unsent(final_heard))
        self._inflight = kept
        self._inflight_audio = sum(1 for x in kept if x[1] >= 0)
        self._play_end = max(now, kept[-1][0] + self._frame_s) if kept else now
        self._flush_gen += 1
        self.stats.flushes += 1
        self.stats.marks_cancelled += cancelled
        self.stats.flushed_ms += dropped_ms
        if not self.closing:
            self.fill(now)
        return round(dropped_ms)

    def heard_pos(self) -> int:
        """Stream offset up to which the caller has heard the agent's audio by now."""
        return self._heard_pos(self._clock.now())

    @property
    def lead_ms(self) -> float:
        return max(0.0, (self._play_end - self._clock.now()) * 1000.0)

    # ------------------------------------------------------------------ pacing
    def service(self, now: float) -> None:
        """Called by the shared clock every tick."""
        if self.closing:
            return
        last = self._last_service
        if last is not None and now - last > 1.5 * self._frame_s:
            self.stats.late_ticks += 1
        self._last_service = now
        self.retire(now)
        interval = self.config.status_interval_s
        if interval > 0 and now - self.status.last_request >= interval - EPS:
            self.request_status(now)
        self.fill(now)

    def fill(self, now: float) -> None:
        if self.closing:
            return
        if self._play_end < now:
            if self._streaming and not self.xoff:
                gap = now - self._play_end
                if gap > 0.001:
                    self.stats.skipped_ms += gap * 1000.0
            self._play_end = now
        if self.xoff:
            return
        # Threshold half a frame below the target: with the frame grid aligned to the tick grid the
        # lead at each tick sits half a frame away from it, so tick jitter < F/2 changes nothing.
        horizon = now + self._lead_s - self._frame_s / 2
        streaming = True
        if self._play_end < horizon:
            pairs = self._engine.pairs_from
            if pairs and len(self._clock) >= pairs:
                horizon += self._frame_s  # two frames now, none on the next tick
            while self._play_end < horizon:
                if not self._send_frame(now):
                    streaming = False
                    break
        if self._batch:
            self._sender.flush()
        if streaming and not self._send_silence:
            stream = self.stream
            streaming = stream.end_off > stream.sent_off
        self._streaming = streaming

    def _send_frame(self, now: float) -> bool:
        stream = self.stream
        stats = self.stats
        if stream.end_off > stream.sent_off:
            payload = stream.take_frame()
            end_off = stream.sent_off
            self._inflight_audio += 1
            stats.audio_frames_out += 1
        elif self._send_silence:
            payload = self._silence_frame
            end_off = -1
            stats.silence_frames_out += 1
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

    def retire(self, now: float) -> None:
        inflight = self._inflight
        frame_s = self._frame_s
        recorder = self._recorder
        limit = now + EPS
        while inflight and inflight[0][0] + frame_s <= limit:
            start, end_off, payload = inflight.popleft()
            if end_off >= 0:
                self._inflight_audio -= 1
                if end_off > self._heard_off:
                    self._heard_off = end_off
                if recorder is not None:
                    recorder.agent(start - self.t0, payload)
            else:
                # Generated silence is not handed to the recorder (it fills gaps with silence).
                self.quiet_until = start + frame_s
        holes = self.stream.holes
        while holes and holes[0][1] <= self._heard_off:
            holes.popleft()

    def _heard_pos(self, now: float) -> int:
        self.retire(now)
        pos = self._heard_off
        if self._inflight:
            start, end_off, _payload = self._inflight[0]
            if end_off >= 0 and start <= now:
                partial = int((now - start) / self._frame_s * self._fb)
                pos = max(pos, end_off - self._fb + partial)
        return pos

    def _fast_start(self, now: float) -> None:
        self.send_command(FlushMedia())
        kept = deque(x for x in self._inflight if x[0] <= now + EPS)
        self._inflight = kept
        self._play_end = max(now, kept[-1][0] + self._frame_s) if kept else now
        self._flush_gen += 1
        self.stats.fast_starts += 1

    def _resync(self, delta_s: float, source: Literal["mark", "status"]) -> None:
        if abs(delta_s) * 1000.0 <= self.config.resync_threshold_ms:
            return
        engine = self._engine
        apply = engine.tuning.resync
        if engine.observer is not None:
            engine.observer.resynced(source, delta_s * 1000.0, apply)
        if not apply:
            return
        # Whole frames: the measurement is only good to about a frame, and keeping the grid phase
        # keeps the per-tick sends steady.
        delta_s = round(delta_s / self._frame_s) * self._frame_s
        self._inflight = deque((start + delta_s, end_off, payload) for start, end_off, payload in self._inflight)
        self._play_end += delta_s
        self.stats.resyncs += 1
        log.debug("re-anchored play-out model by %.1f ms", delta_s * 1000.0, extra=self._log_extra)

    # ------------------------------------------------------------------ what Asterisk tells us
    def on_mark_processed(self, event: MediaMarkProcessed, now: float) -> None:
        mark = self._pending_marks.pop(event.correlation_id or "", None)
        if mark is None:
            # A mark cancelled by flush whose event was already on the wire, or not ours.
            log.debug("ignoring MEDIA_MARK_PROCESSED %s", event.correlation_id, extra=self._log_extra)
            return
        seg = mark.segment
        seg.frozen_ms = self.stream.ms(seg.end - seg.start)
        if mark.offset > self._heard_off:
            self._heard_off = mark.offset
        self.stats.marks_heard += 1
        self._on_mark_heard(MarkHeard(mark.name, int((now - self.t0) * 1000)))
        # The marker is emitted on the timer tick that ends the previous frame: an exact anchor.
        self._resync(now - mark.expected_end, "mark")

    def on_status(self, status: Status, now: float) -> None:
        end = self.status.answered(status, now, self._frames_sent_total, self._flush_gen, self._frame_s)
        if end is not None and not self.xoff:
            self._resync(end - max(self._play_end, now), "status")

    def on_xon(self) -> None:
        if self.xoff:
            self.xoff = False
            # The event's time may be the estimated arrival (tick reads); sending goes by the clock.
            now = self._clock.now()
            self.request_status(now)
            self.fill(now)

    def request_status(self, now: float) -> None:
        if self.closing:
            return
        self.status.requested(now, self._frames_sent_total, self._flush_gen)
        self.send_command(GetStatus())

    # ------------------------------------------------------------------ marks and sends
    def _add_mark(self, name: str) -> None:
        seg = self.stream.close_segment(name)
        self._mark_seq += 1
        mark = _Mark(f"m{self._mark_seq}", name, self.stream.end_off, seg)
        if mark.offset <= self.stream.sent_off:
            self._send_mark(mark)
        else:
            self._local_marks.append(mark)

    def _send_mark(self, mark: _Mark) -> None:
        mark.expected_end = self._play_end
        self._pending_marks[mark.wire_id] = mark
        self.stats.marks_sent += 1
        self.send_command(MarkMedia(mark.wire_id))
