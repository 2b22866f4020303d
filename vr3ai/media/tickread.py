"""Read every media socket once per clock tick instead of waking the event loop per frame.

Why: chan_websocket sends each call's caller audio as one 20 ms frame on that call's own timer, so
at 100 calls the event loop wakes about 5,000 times a second, each time for one 166-byte frame:
a context switch, an ``epoll_wait``, a loop iteration and cold caches, per frame. Through the
real Asterisk at 100 calls those wake-ups were most of our process's CPU, and Asterisk's own CPU
falls too when fewer of its writes wake a sleeping reader (figures: bench/README.md, "Why the
media path is built this way").

How: once a process carries ``threshold`` or more media sockets, the shared
:class:`~vr3ai.media.clock.MediaClock` reads them itself at the end of each tick, after every
session has sent its frame: the sockets leave the event loop's reading (``pause_reading``) and join
one ``epoll`` of ours, polled without waiting, and each readable one gets one non-blocking
``read`` whose bytes go to the protocol's ``data_received`` exactly as the loop would have
delivered them. Below half the threshold they go back to the loop. End of stream and socket errors
are never handled here: the socket is handed back to the loop, which reads the same EOF or error
and runs its usual close path.

The price is latency: a frame waits for the next tick, 10 ms on average (at most one tick), which
is why it only starts where CPU becomes the limit. Arrival times are then known only to within the
time since the previous read (a tick, more after a late one): each read's bytes are handed over
with the middle of it as their arrival time, explicitly (the play-out model re-anchors on
MEDIA_MARK_PROCESSED and STATUS arrival times).

The process's one reader belongs to its :class:`~vr3ai.media.engine.MediaEngine`, which sets the
threshold (``MediaTuning.tick_reads_from``) and enrolls each media socket at its handshake.

Only plain TCP sockets on Linux take part (TLS needs the loop's decryption; other systems have no
``select.epoll``).
"""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Callable
from typing import Protocol

from vr3ai.media.clock import MediaClock

log = logging.getLogger("vr3ai.media.tickread")

_MAX_READ_INTERVAL_S = 0.5
"""Longer since the last read (a stall): the estimate is worthless anyway; keep it bounded."""
_READ_SIZE = 16 * 1024
"""Per read: a tick normally finds one 166-byte frame per socket. Not larger: os.read allocates the
whole size first, and above glibc's mmap threshold (128 kB) that is an mmap/munmap per read."""


class TickReadable(Protocol):
    """A media socket that can be read by the tick: what :class:`TickReader` needs of it."""

    def tick_fd(self) -> int | None:
        """The socket's file descriptor, or None if it cannot be read directly (TLS, closing)."""
        ...

    def pause_loop_reading(self) -> None: ...

    def resume_loop_reading(self) -> None: ...

    def tick_sink(self) -> Callable[[bytes, float], None]:
        """Where bytes read by the tick go, with their estimated arrival time on the clock's time
        base: handled as the loop's ``data_received`` would."""
        ...


class TickReader:
    """The tick-driven reader of one clock (see module doc). Use :meth:`create`."""

    def __init__(self, clock: MediaClock, threshold: int = 16) -> None:
        self._clock = clock
        self.threshold = threshold
        """From this many enrolled sockets on, the tick reads them (below half, the loop again)."""
        self._members: dict[int, TickReadable] = {}
        """Enrolled sockets by id(); read by the tick only while :attr:`active`."""
        self._fds: dict[int, tuple[TickReadable, Callable[[bytes, float], None]]] = {}
        """Sockets in our epoll and their :meth:`~TickReadable.tick_sink`, by fd."""
        self._fd_of: dict[int, int] = {}
        """id() of a socket in our epoll -> its fd."""
        self._ep: select.epoll | None = None
        self.active = False
        self._last_poll: float | None = None
        self.reads = 0
        self.switches = 0
        self._hooked = False

    @classmethod
    def create(cls, clock: MediaClock, threshold: int) -> TickReader | None:
        """A reader for ``clock``; None where tick reads are not possible (no epoll)."""
        if not hasattr(select, "epoll"):
            return None
        return cls(clock, threshold)

    def __len__(self) -> int:
        return len(self._members)

    def enroll(self, sock: TickReadable) -> None:
        """``sock`` carries a live media session; from :attr:`threshold` sockets on, ticks read them."""
        self._members[id(sock)] = sock
        if not self._hooked:
            self._clock.add_hook(self._after_tick)
            self._hooked = True
        if self.active:
            self._start(sock)

    def release(self, sock: TickReadable) -> None:
        """``sock`` is closing or its session ended: the loop reads it again (idempotent)."""
        if self._members.pop(id(sock), None) is None:
            return
        self._stop(sock)
        if not self._members and self._hooked:
            self._clock.remove_hook(self._after_tick)
            self._hooked = False
            self._set_active(False)

    # ---------------------------------------------------------------- the tick
    def _after_tick(self, now: float) -> None:
        n = len(self._members)
        if not self.active and n >= self.threshold:
            self._set_active(True)
        elif self.active and n < max(1, self.threshold // 2):
            self._set_active(False)
        if self.active and self._fds:
            self.poll()

    def poll(self) -> None:
        """Read every readable enrolled socket once (the clock's tick calls this while active)."""
        ep = self._ep
        clock = self._clock
        if ep is None:
            return  # not active: the loop reads the sockets
        # What is read now arrived since the last read, on average half that time ago: a tick
        # normally, more after a late one. (A fixed half tick made a late tick's events look up to
        # a tick later than they were: the play-out model then re-anchored later and let
        # Asterisk's queue run dry.)
        now = clock.time()
        last, self._last_poll = self._last_poll, now
        since = clock.tick_s if last is None else min(max(now - last, 0.0), _MAX_READ_INTERVAL_S)
        arrived_at = now - since / 2
        fds = self._fds
        for fd, _events in ep.poll(0):
            member = fds.get(fd)
            if member is None:
                continue
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                # EOF or an error: the loop reads it again and runs its close path.
                self._stop(member[0])
                continue
            self.reads += 1
            try:
                member[1](data, arrived_at)
            except Exception:
                log.exception("media socket failed on data read by the clock")
            # A full read may have left more: epoll reports the socket again on the next tick.

    # ---------------------------------------------------------------- membership
    def _set_active(self, on: bool) -> None:
        if on == self.active:
            return
        self.active = on
        self.switches += 1
        self._last_poll = None
        if on:
            if self._ep is None:
                self._ep = select.epoll()
            for sock in list(self._members.values()):
                self._start(sock)
        else:
            for sock, _sink in list(self._fds.values()):
                self._stop(sock)
            if self._ep is not None:
                self._ep.close()
                self._ep = None
        log.info(
            "media sockets are read %s",
            "by the clock, once per tick" if on else "by the event loop again",
            extra={"media_sockets": len(self._members), "threshold": self.threshold},
        )

    def _start(self, sock: TickReadable) -> None:
        fd = sock.tick_fd()
        if fd is None or self._ep is None:
            return
        try:
            self._ep.register(fd, select.EPOLLIN)
        except OSError:
            return  # closed meanwhile: the loop keeps it
        # A stale entry for a reused fd number belonged to a socket that is already closed.
        self._fds[fd] = (sock, sock.tick_sink())
        self._fd_of[id(sock)] = fd
        sock.pause_loop_reading()

    def _stop(self, sock: TickReadable) -> None:
        fd = self._fd_of.pop(id(sock), None)
        if fd is None:
            return
        member = self._fds.get(fd)
        if member is not None and member[0] is sock:
            del self._fds[fd]
            if self._ep is not None:
                try:
                    self._ep.unregister(fd)
                except (OSError, ValueError):
                    pass  # already closed: epoll dropped it with the socket
        sock.resume_loop_reading()

    def close(self) -> None:
        """Hand every socket back to the loop and stop reading (the engine is closing)."""
        for sock in list(self._members.values()):
            self.release(sock)
