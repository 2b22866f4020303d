"""Send every media socket's frame of a clock tick with one system call (Linux io_uring).

Why: at 100 calls the clock writes 100 frames per 20 ms tick, one ``write`` each. Each write to a
loopback (or any) TCP socket wakes the Asterisk thread that reads it, and the kernel, told by the
socket that the writer will sleep soon (a "sync" wake-up), puts that thread on our CPU; it runs as
soon as our write returns to user space: most writes cost us a switch out, a switch back and
cold caches. Submitting the tick's writes as one batch of io_uring ``SEND`` operations does the
same TCP work in one ``io_uring_enter``: the woken threads wait until it returns, once per tick.
Less CPU per call-second, fewer preemptions, less late ticks and fewer holes in the agent's audio
(``python -m bench.capacity --ab ring``; the figures are in bench/README.md, "Why the media path
is built this way").

How: a ring of our own, set up with two ``mmap``s and two system calls through ``ctypes`` (no
library: liburing bindings are not on every system, and we need four operations). Sends carry
``MSG_DONTWAIT`` so each completes (fully, partly, or with ``EAGAIN``) inside the submitting call;
whatever a send did not take goes to the event loop's transport, which buffers it and keeps the
order. Buffers are the ``bytes`` objects themselves (their address is pinned while we hold them).
A send still in flight when the call returns (a kernel must not do that with ``MSG_DONTWAIT``;
the wait is bounded to 50 ms) retires the ring for good and ends the calls concerned: their
stream's order would be unknown.

Where the kernel refuses rings (``io_uring_disabled``, seccomp, not Linux) :meth:`SendRing.create`
returns None and frames are written one by one as before.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import platform
import socket
import struct
import sys
import weakref
from typing import Protocol

from vr3ai.media.clock import MediaClock

log = logging.getLogger("vr3ai.media.uring")

_SYS_SETUP = {"x86_64": 425, "aarch64": 425}
_SYS_ENTER = {"x86_64": 426, "aarch64": 426}
_OFF_SQ_RING = 0
_OFF_CQ_RING = 0x8000000
_OFF_SQES = 0x10000000
_FEAT_SINGLE_MMAP = 1
_FEAT_EXT_ARG = 1 << 8
_ENTER_GETEVENTS = 1
_ENTER_EXT_ARG = 1 << 3
_WAIT_NS = 50_000_000
"""How long :meth:`SendRing.send_all` waits for its sends (they complete inside the call: this
only bounds a kernel that does something else)."""
_SETUP_SUBMIT_ALL = 1 << 7
_SETUP_COOP_TASKRUN = 1 << 8
_OP_SEND = 26
_SEND_FLAGS = socket.MSG_DONTWAIT | getattr(socket, "MSG_NOSIGNAL", 0)

_PARAMS = struct.Struct("<10I8IQ8IQ")  # io_uring_params: 10 u32, sq_off, cq_off (120 bytes)
_SQE = struct.Struct("<BBHiQQIIQ24x")  # opcode, flags, ioprio, fd, off, addr, len, msg_flags, user_data
_CQE = struct.Struct("<QiI")
_GETEVENTS_ARG = struct.Struct("<QIIQ")  # sigmask, sigmask_sz, min_wait_usec, ts
_U32 = struct.Struct("<I")

_BYTES_DATA = bytes.__basicsize__ - 1
"""Offset of a ``bytes`` object's data from its address (CPython; checked in :func:`_bytes_ok`)."""


def _bytes_ok() -> bool:
    if sys.implementation.name != "cpython":
        return False
    probe = b"vr3ai-uring-probe"
    return ctypes.string_at(id(probe) + _BYTES_DATA, len(probe)) == probe


class SendRing:
    """One io_uring for sends. Not thread-safe: the event loop's thread only."""

    def __init__(
        self, fd: int, entries: int, sq: mmap.mmap, cq: mmap.mmap, sqes: mmap.mmap, offs: tuple[int, ...]
    ) -> None:
        self._fd = fd
        self.entries = entries
        self._sq, self._cq, self._sqes = sq, cq, sqes
        (
            self._sq_tail_off,
            self._sq_mask,
            self._sq_array_off,
            self._cq_head_off,
            self._cq_tail_off,
            self._cq_mask,
            self._cqes_off,
        ) = offs
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._enter_nr = _SYS_ENTER[platform.machine()]
        # The fd and mappings are released with the ring, also when it is only garbage collected.
        self._release = weakref.finalize(self, _release, fd, [sq, cq, sqes])
        self._tail = _U32.unpack_from(sq, self._sq_tail_off)[0]
        self._seq = 0
        """user_data of the next send: unique across calls, so a late completion is never taken
        for one of a later call."""
        self._ts = ctypes.create_string_buffer(struct.pack("<qq", 0, _WAIT_NS), 16)
        self._arg = ctypes.create_string_buffer(
            _GETEVENTS_ARG.pack(0, 0, 0, ctypes.addressof(self._ts)), _GETEVENTS_ARG.size
        )
        self.submits = 0
        self.sends = 0
        self.fallbacks = 0

    @classmethod
    def create(cls, entries: int = 256) -> SendRing | None:
        """A ring for up to ``entries`` sends per :meth:`send_all` call; None where io_uring cannot
        be used (the caller then writes as usual)."""
        machine = platform.machine()
        if sys.platform != "linux" or machine not in _SYS_SETUP or not _bytes_ok():
            return None
        libc = ctypes.CDLL(None, use_errno=True)
        params = ctypes.create_string_buffer(_PARAMS.size)
        fd = -1
        for flags in (_SETUP_SUBMIT_ALL | _SETUP_COOP_TASKRUN, 0):
            _PARAMS.pack_into(params, 0, 0, 0, flags, *([0] * 7), *([0] * 8), 0, *([0] * 8), 0)
            fd = libc.syscall(_SYS_SETUP[machine], ctypes.c_uint(entries), params)
            if fd >= 0:
                break
        if fd < 0:
            err = ctypes.get_errno()
            log.info("io_uring not available (%s): media frames are written one by one", errno.errorcode.get(err, err))
            return None
        try:
            v = _PARAMS.unpack_from(params, 0)
            sq_entries, cq_entries, _flags, _cpu, _idle, features = v[0:6]
            if not features & _FEAT_EXT_ARG:  # Linux < 5.11: no bounded wait
                raise OSError(errno.ENOSYS, "io_uring without IORING_FEAT_EXT_ARG")
            sq_off = v[10:18]  # head, tail, ring_mask, ring_entries, flags, dropped, array, resv1
            cq_off = v[19:27]  # head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1
            sq_size = sq_off[6] + sq_entries * 4
            cq_size = cq_off[5] + cq_entries * _CQE.size
            prot = mmap.PROT_READ | mmap.PROT_WRITE
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            if features & _FEAT_SINGLE_MMAP:
                sq = mmap.mmap(fd, max(sq_size, cq_size), flags, prot, offset=_OFF_SQ_RING)
                cq = sq
            else:
                sq = mmap.mmap(fd, sq_size, flags, prot, offset=_OFF_SQ_RING)
                cq = mmap.mmap(fd, cq_size, flags, prot, offset=_OFF_CQ_RING)
            sqes = mmap.mmap(fd, sq_entries * _SQE.size, flags, prot, offset=_OFF_SQES)
        except OSError as exc:
            os.close(fd)
            log.info("io_uring rings could not be mapped (%s): media frames are written one by one", exc)
            return None
        sq_mask = _U32.unpack_from(sq, sq_off[2])[0]
        cq_mask = _U32.unpack_from(cq, cq_off[2])[0]
        # The SQ array maps ring slots to SQE indices; identity, once.
        for i in range(sq_entries):
            _U32.pack_into(sq, sq_off[6] + 4 * i, i)
        offs = (sq_off[1], sq_mask, sq_off[6], cq_off[0], cq_off[1], cq_mask, cq_off[5])
        return cls(fd, sq_entries, sq, cq, sqes, offs)

    def send_all(self, fds: list[int], datas: list[bytes]) -> list[int]:
        """Send ``datas[i]`` to ``fds[i]`` without blocking, for every i; returns per item the bytes
        sent or -errno. At most :attr:`entries` items; the caller keeps ``datas`` alive.

        -EINPROGRESS: the kernel did not complete that send within 50 ms (it should complete
        inside the call); it may still write ``datas[i]`` later, so the caller must keep it alive
        and stop using the ring and the socket's stream (its order is unknown)."""
        n = len(datas)
        if n == 0:
            return []
        if n > self.entries:
            raise ValueError(f"{n} sends for a ring of {self.entries}")
        sqes, pack, tail, mask = self._sqes, _SQE.pack_into, self._tail, self._sq_mask
        flags, off, seq = _SEND_FLAGS, _BYTES_DATA, self._seq
        self._seq = seq + n
        for i in range(n):
            data = datas[i]
            pack(sqes, ((tail + i) & mask) * 64, _OP_SEND, 0, 0, fds[i], 0, id(data) + off, len(data), flags, seq + i)
        tail = (tail + n) & 0xFFFFFFFF
        _U32.pack_into(self._sq, self._sq_tail_off, tail)
        self._tail = tail
        results = [-errno.EINPROGRESS] * n
        got = submitted = 0
        while got < n:
            r = self._libc.syscall(
                self._enter_nr,
                self._fd,
                ctypes.c_uint(n - submitted),
                ctypes.c_uint(n - got),
                ctypes.c_uint(_ENTER_GETEVENTS | _ENTER_EXT_ARG),
                self._arg,
                ctypes.c_size_t(_GETEVENTS_ARG.size),
            )
            if r >= 0:
                submitted += r
            got += self._reap(results, seq)
            if r < 0:
                err = ctypes.get_errno()
                if err == errno.ETIME:
                    if submitted < n:
                        raise OSError(err, "io_uring_enter: submissions not taken")
                    break  # what is still -EINPROGRESS is the caller's to handle
                if err not in (errno.EINTR, errno.EAGAIN, errno.EBUSY):
                    raise OSError(err, f"io_uring_enter: {os.strerror(err)}")
        self.submits += 1
        self.sends += n
        return results

    def _reap(self, results: list[int], seq: int) -> int:
        """Takes every completion waiting; returns how many were this call's (``seq``...)."""
        cq = self._cq
        head = _U32.unpack_from(cq, self._cq_head_off)[0]
        tail = _U32.unpack_from(cq, self._cq_tail_off)[0]
        count = (tail - head) & 0xFFFFFFFF
        base, mask, n, ours = self._cqes_off, self._cq_mask, len(results), 0
        first = head & mask
        if first + count <= mask + 1:  # no wrap: one C-level pass over the CQEs
            view = memoryview(cq)[base + first * 16 : base + (first + count) * 16]
            cqes = list(_CQE.iter_unpack(view))
            view.release()
        else:
            cqes = [_CQE.unpack_from(cq, base + ((head + k) & mask) * 16) for k in range(count)]
        for user_data, res, _flags in cqes:
            i = user_data - seq
            if 0 <= i < n:
                results[i] = res
                ours += 1
        _U32.pack_into(cq, self._cq_head_off, (head + count) & 0xFFFFFFFF)
        return ours

    def close(self) -> None:
        self._release()


def _release(fd: int, maps: list[mmap.mmap]) -> None:
    for m in maps:
        if not m.closed:
            m.close()
    os.close(fd)


class RingWritable(Protocol):
    """A media socket whose writes a :class:`SendBatch` can collect: what it needs of it."""

    ring_fd: int
    """Its file descriptor (valid until the event loop's transport reports the connection lost,
    which happens on a later loop iteration than any tick)."""
    ring_slot: int
    """Its place in the current batch; -1 when it has none."""

    def write_direct(self, data: bytes) -> None:
        """Write through the event loop's transport (it buffers what the socket does not take, or
        meets the socket's error and closes as usual)."""
        ...

    def ring_lost(self) -> None:
        """A send of ours never completed: the stream's order is unknown, end the connection."""
        ...


class SendBatch:
    """Collects the media frames sessions send while the clock services them and sends them with
    one :meth:`SendRing.send_all` right after (see module doc). Use :meth:`create`; the process's
    one batch belongs to its :class:`~vr3ai.media.engine.MediaEngine`.

    A socket joins a batch only while the event loop's transport has nothing buffered for it
    (the caller checks), so the batch's bytes go out in order behind everything written before."""

    def __init__(self, clock: MediaClock, ring: SendRing) -> None:
        self._clock = clock
        self._ring = ring
        self._socks: list[RingWritable] = []
        self._datas: list[bytes] = []
        self.enabled = True
        """False: sockets write frame by frame (``MediaEngine.retune`` switches this at run time)."""
        self.trusted = True
        """False once a send never completed: the ring is not used again."""
        self.flushes = 0
        self.ring_sends = 0
        self.short_sends = 0
        self._stuck: list[list[bytes]] = []
        """Buffers of sends the kernel never completed: it may still read them."""

    @classmethod
    def create(cls, clock: MediaClock) -> SendBatch | None:
        """A batch sent right after each of ``clock``'s ticks (before the other hooks); None where
        io_uring cannot be used."""
        ring = SendRing.create()
        if ring is None:
            return None
        batch = cls(clock, ring)
        clock.add_hook(batch.flush, first=True)
        return batch

    def add(self, sock: RingWritable, data: bytes) -> None:
        slot = sock.ring_slot
        if slot < 0:
            sock.ring_slot = len(self._datas)
            self._datas.append(data)
            self._socks.append(sock)
        else:  # a second message in the same tick (a mark after its audio): one send, in order
            self._datas[slot] += data

    def flush(self, now: float = 0.0) -> None:
        """Send everything collected (the clock calls this after servicing the sessions)."""
        datas = self._datas
        if not datas:
            return
        socks = self._socks
        self._datas, self._socks = [], []
        fds = []
        for sock in socks:
            sock.ring_slot = -1
            fds.append(sock.ring_fd)
        self.flushes += 1
        size = self._ring.entries
        for lo in range(0, len(datas), size):
            chunk = datas[lo : lo + size]
            try:
                results = self._ring.send_all(fds[lo : lo + size], chunk)
            except OSError:
                log.exception("io_uring send failed: writing this tick's frames one by one")
                results = [-errno.EIO] * len(chunk)
            lens = [len(d) for d in chunk]
            self.ring_sends += len(chunk)
            if results == lens:
                continue
            stuck = results.count(-errno.EINPROGRESS)
            if stuck:
                # Never seen: sends with MSG_DONTWAIT complete inside io_uring_enter. If one does
                # not, the ring is not trusted again, and the calls whose sends are in doubt end.
                self._stuck.append(chunk)  # the kernel may still read these buffers
                self.enabled = self.trusted = False
                log.error(
                    "io_uring sends did not complete: media frames are written one by one from now "
                    "on; ending the calls whose stream order is unknown",
                    extra={"media_sockets": stuck},
                )
            for sock, data, res in zip(socks[lo : lo + size], chunk, results, strict=True):
                if res == -errno.EINPROGRESS:
                    sock.ring_lost()
                elif res != len(data):
                    # Short, EAGAIN or an error: the transport buffers the rest, or meets the
                    # error itself and runs its usual close path.
                    self.short_sends += 1
                    sock.write_direct(data[res:] if res > 0 else data)

    def close(self) -> None:
        self.flush()
        self._clock.remove_hook(self.flush)
        self._ring.close()
