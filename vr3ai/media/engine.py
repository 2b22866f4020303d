"""The process's media engine: one pacing clock, one tick reader, one send batch, one tuning.

Why one object, made once in :func:`vr3ai.app.create_app`: the fast media path shares three
things between all calls of a process (the :class:`~vr3ai.media.clock.MediaClock` that services
every session per tick, the :class:`~vr3ai.media.tickread.TickReader` that reads every media
socket on that tick, the :class:`~vr3ai.media.uring.SendBatch` that sends the tick's frames in one
submission) and a few process-wide I/O settings (:class:`MediaTuning`). Held by one owner they
need no module-level registries keyed by loop or clock, a test or a benchmark makes as many
engines as it likes, and closing one releases its ring and epoll.

Who talks to it: a media transport enrolls at its WebSocket handshake (:meth:`MediaEngine.enroll`:
its sends may join the batch), is read by the tick from ``tick_reads_from`` live sessions on
(:meth:`MediaEngine.carries_session`) and leaves when its session or connection ends
(:meth:`MediaEngine.release`); a session gets the engine from the registry and uses its clock.
The session never learns how its socket is read or written: it is handed each message with its
arrival time (``deliver(msg, arrived_at)``) and sends through its transport.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from vr3ai.media.clock import MediaClock
from vr3ai.media.tickread import TickReadable, TickReader
from vr3ai.media.uring import RingWritable, SendBatch
from vr3ai.settings import MediaSettings

log = logging.getLogger("vr3ai.media.engine")

_NEVER = 1 << 30
"""A tick-read threshold no process reaches: tick reads switched off."""


@dataclass(frozen=True)
class MediaTuning:
    """Process-wide I/O settings of the media path (``VR3AI_MEDIA_*``; per-call settings are in
    :class:`~vr3ai.media.session.MediaConfig`). The defaults are :class:`vr3ai.settings.MediaSettings`'s,
    written there once."""

    @classmethod
    def from_settings(cls, media: MediaSettings) -> MediaTuning:
        return cls(
            tick_reads_from=media.tick_reads_from,
            paired_sends_from=media.paired_sends_from,
            ring_sends=media.ring_sends,
        )

    tick_reads_from: int = MediaSettings.model_fields["tick_reads_from"].default
    """From this many media sockets in the process, the media clock reads them once per tick
    instead of the event loop waking for every frame (:mod:`vr3ai.media.tickread`): a fifth to a
    third less CPU per call at 100 calls, for 10 ms more latency on average; 0 never."""
    paired_sends_from: int = MediaSettings.model_fields["paired_sends_from"].default
    """From this many sessions on the clock, refill Asterisk's queue two frames at a time, every
    other tick: half the messages (each one a write and a wake-up of an Asterisk thread), the
    same lowest lead before a refill (``target_lead_ms`` less a frame), one frame more queued
    at the top. Speech start is not delayed by it (fast start sends a whole lead at once).
    0: never."""
    ring_sends: bool = MediaSettings.model_fields["ring_sends"].default
    """Send what sessions send during a clock tick with one io_uring submission (Linux; elsewhere
    frame by frame): :mod:`vr3ai.media.uring`."""
    resync: bool = True
    """Sessions re-anchor their play-out model on MEDIA_MARK_PROCESSED and STATUS. False only for
    experiments (``bench/capacity.py --no-resync``: the would-be re-anchorings are still observed)."""


class MediaObserver(Protocol):
    """What benchmarks watch inside the media path (:attr:`MediaEngine.observer`)."""

    def resynced(self, source: Literal["mark", "status"], delta_ms: float, applied: bool) -> None:
        """A session's play-out model was off by ``delta_ms`` (> its threshold) by ``source``;
        positive: Asterisk's queue reaches further ahead than the model said."""
        ...


class EngineSocket(TickReadable, RingWritable, Protocol):
    """A media socket as the engine reads and batches it (:mod:`vr3ai.media.direct`)."""

    def shutdown(self) -> None:
        """The process is stopping: close the socket (1012, service restart)."""
        ...


class MediaEngine:
    """Owns the clock, the tick reader, the send batch and the tuning (see module doc)."""

    def __init__(self, tuning: MediaTuning | None = None, *, clock: MediaClock | None = None) -> None:
        self.clock = clock if clock is not None else MediaClock()
        self._tuning = tuning or MediaTuning()
        self.pairs_from = max(0, self._tuning.paired_sends_from)
        """``paired_sends_from`` of the current tuning (read-only for others), a plain attribute:
        sessions check ``len(engine.clock) >= pairs_from`` on every refill; 0 never."""
        self.tick_reader: TickReader | None = None
        """Made at the first enrollment; None before, and where epoll is missing."""
        self.send_batch: SendBatch | None = None
        """Made at the first enrollment with ``ring_sends``; None where io_uring is refused.
        Transports read it per send (a plain attribute: that is per call per tick)."""
        self._ring_tried = False
        self._sockets: dict[int, EngineSocket] = {}
        self.observer: MediaObserver | None = None
        """Set by benchmarks; None in production."""

    @property
    def tuning(self) -> MediaTuning:
        return self._tuning

    def retune(self, **changes: Any) -> MediaTuning:
        """Change the tuning at run time (``bench/capacity.py --ab`` switches one mechanism on and
        off while the same calls stay up). Applies to every socket and session from the next tick."""
        self._tuning = tuning = replace(self._tuning, **changes)
        self.pairs_from = max(0, tuning.paired_sends_from)
        reader = self.tick_reader
        if reader is not None:
            reader.threshold = tuning.tick_reads_from if tuning.tick_reads_from > 0 else _NEVER
        if tuning.ring_sends:
            self._make_batch()
        batch = self.send_batch
        if batch is not None:
            batch.enabled = tuning.ring_sends and batch.trusted
        return tuning

    # ---------------------------------------------------------------- transports
    def enroll(self, sock: EngineSocket) -> None:
        """A media socket whose handshake completed: its sends may join :attr:`send_batch` while
        the clock services sessions, and :meth:`aclose` closes it if it is still open then."""
        self._sockets[id(sock)] = sock
        if self._tuning.ring_sends:
            self._make_batch()

    def carries_session(self, sock: EngineSocket) -> None:
        """``sock``'s session is live: from ``tick_reads_from`` such sockets on, the tick reads
        them. Only from here on: the clock ticks only while sessions are registered, so a socket
        still waiting for its MEDIA_START is read by the loop."""
        reader = self.tick_reader
        if reader is None:
            t = self._tuning.tick_reads_from
            reader = self.tick_reader = TickReader.create(self.clock, t if t > 0 else _NEVER)
        if reader is not None:
            reader.enroll(sock)

    def release(self, sock: EngineSocket) -> None:
        """The socket's session ended or its connection is closing: the loop reads it again
        (idempotent)."""
        self._sockets.pop(id(sock), None)
        reader = self.tick_reader
        if reader is not None:
            reader.release(sock)

    def _make_batch(self) -> None:
        if self._ring_tried:
            return
        self._ring_tried = True
        self.send_batch = SendBatch.create(self.clock)
        if self.send_batch is None:
            log.info("io_uring is not available: media frames are written one by one")

    async def aclose(self) -> None:
        """Close the media sockets still open (1012), stop the clock, release the ring and the
        epoll. The media sockets are the engine's to close: the HTTP server does not know them."""
        for sock in list(self._sockets.values()):
            try:
                sock.shutdown()
            except Exception:
                log.exception("closing a media socket at shutdown failed")
        self._sockets.clear()
        await self.clock.aclose()
        if self.tick_reader is not None:
            self.tick_reader.close()
        if self.send_batch is not None:
            self.send_batch.close()
            self.send_batch = None
