"""SendRing and SendBatch on real sockets (socketpairs, and TCP where buffer sizes matter): what
reaches the peer, in which order, and what happens when a socket does not take everything. The
path through uvicorn and a session is in test_media_server.py."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator

import pytest

from vr3ai.media.clock import MediaClock
from vr3ai.media.uring import SendBatch, SendRing

pytestmark = pytest.mark.skipif(SendRing.create(2) is None, reason="io_uring not available here")


@pytest.fixture
def ring() -> Iterator[SendRing]:
    r = SendRing.create(8)
    assert r is not None
    yield r
    r.close()


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made = [socket.socketpair() for _ in range(20)]
    for ours, peer in made:
        ours.setblocking(False)
        peer.setblocking(False)
    yield made
    for ours, peer in made:
        ours.close()
        peer.close()


def _drain(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_send_all_delivers_each_buffer_to_its_socket(ring: SendRing, pairs: list) -> None:
    fds = [ours.fileno() for ours, _ in pairs[:8]]
    datas = [bytes([i]) * (100 + i) for i in range(8)]
    assert ring.send_all(fds, datas) == [len(d) for d in datas]
    assert [_drain(peer) for _, peer in pairs[:8]] == datas


def test_more_submissions_than_ring_slots_wrap_around(ring: SendRing, pairs: list) -> None:
    """The rings' head and tail run past the ring size many times (and past 2**8 for the masks)."""
    ours, peer = pairs[0]
    sent = b""
    for k in range(300):
        data = k.to_bytes(2, "big") * (1 + k % 5)
        n = 1 + k % 8
        assert ring.send_all([ours.fileno()] * n, [data] * n) == [len(data)] * n
        sent += data * n
        if k % 10 == 0:
            assert _drain(peer) == sent
            sent = b""
    assert _drain(peer) == sent


def test_a_full_socket_reports_short_sends_and_eagain(ring: SendRing) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        results: list[int] = []
        for _ in range(1000):
            res = ring.send_all([a.fileno()], [b"x" * 1500])[0]
            results.append(res)
            if res < 0:
                break
        assert results[-1] == -errno.EAGAIN
        assert sum(r for r in results if r > 0) == len(_drain_blocking(b, sum(r for r in results if r > 0)))
    finally:
        a.close()
        b.close()


def _drain_blocking(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        out += sock.recv(n - len(out))
    return out


def test_errors_come_back_per_send(ring: SendRing, pairs: list) -> None:
    (ok, ok_peer), (broken, broken_peer) = pairs[0], pairs[1]
    broken_peer.close()
    res = ring.send_all([ok.fileno(), broken.fileno(), ok.fileno()], [b"a", b"b", b"c"])
    assert res[0] == 1 and res[2] == 1
    assert res[1] in (-errno.EPIPE, -errno.ECONNRESET)
    assert _drain(ok_peer) == b"ac"


def test_too_many_sends_for_the_ring_are_refused(ring: SendRing, pairs: list) -> None:
    with pytest.raises(ValueError):
        ring.send_all([pairs[0][0].fileno()] * 9, [b"x"] * 9)


class Sock:
    """A RingWritable over one end of a socketpair; write_direct stands for the loop's transport."""

    def __init__(self, ours: socket.socket) -> None:
        self.ours = ours
        self.ring_fd = ours.fileno()
        self.ring_slot = -1
        self.direct: list[bytes] = []

    def write_direct(self, data: bytes) -> None:
        self.direct.append(data)

    def ring_lost(self) -> None:
        raise AssertionError("no send of these tests stays in flight")


def test_batch_sends_everything_collected_in_one_submission(pairs: list) -> None:
    clock = MediaClock(time_fn=lambda: 0.0, autostart=False)
    batch = SendBatch.create(clock)
    assert batch is not None
    socks = [Sock(ours) for ours, _ in pairs]
    for i, s in enumerate(socks):
        batch.add(s, b"audio%d;" % i)
    batch.add(socks[3], b"MARK")  # a second message of one socket in the same tick
    submits = batch._ring.submits
    batch.flush()
    assert batch._ring.submits == submits + 1
    assert [_drain(peer) for _, peer in pairs] == [
        b"audio%d;" % i + (b"MARK" if i == 3 else b"") for i in range(len(pairs))
    ]
    assert all(s.ring_slot == -1 and not s.direct for s in socks)
    batch.flush()  # nothing collected: nothing sent
    assert batch._ring.submits == submits + 1
    batch.close()


def test_batch_larger_than_the_ring_goes_in_chunks() -> None:
    clock = MediaClock(time_fn=lambda: 0.0, autostart=False)
    batch = SendBatch.create(clock)
    assert batch is not None
    made = [socket.socketpair() for _ in range(batch._ring.entries + 40)]
    try:
        socks = [Sock(ours) for ours, _ in made]
        for i, s in enumerate(socks):
            batch.add(s, i.to_bytes(4, "big"))
        batch.flush()
        assert [peer.recv(16) for _, peer in made] == [i.to_bytes(4, "big") for i in range(len(made))]
        assert batch.ring_sends == len(made)
    finally:
        batch.close()
        for ours, peer in made:
            ours.close()
            peer.close()


def test_what_a_full_socket_did_not_take_goes_to_the_transport_in_order() -> None:
    clock = MediaClock(time_fn=lambda: 0.0, autostart=False)
    batch = SendBatch.create(clock)
    assert batch is not None
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        s = Sock(ours)
        sent = b""
        while not s.direct:
            data = os.urandom(700)
            batch.add(s, data)
            batch.flush()
            sent += data
        # Everything the ring took, then what went to the transport: the stream the peer gets.
        took = len(sent) - len(s.direct[0])
        assert _drain_blocking(peer, took) == sent[:took]
        assert s.direct[0] == sent[took:]
        assert batch.short_sends == 1
    finally:
        batch.close()
        ours.close()
        peer.close()


def test_an_engine_that_is_gone_takes_its_ring_and_reader_with_it() -> None:
    """Tests make hundreds of media engines: an engine's ring, tick reader and their file
    descriptors must not outlive it."""
    import gc

    from vr3ai.media.engine import MediaEngine
    from vr3ai.media.tickread import TickReader

    gc.collect()  # what earlier tests left for the collector
    open_fds = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        engine = MediaEngine(clock=MediaClock(time_fn=lambda: 0.0, autostart=False))
        engine.send_batch = SendBatch.create(engine.clock)
        engine.tick_reader = TickReader.create(engine.clock, 1)
        assert engine.send_batch is not None and engine.tick_reader is not None
        del engine
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == open_fds


class _StuckRing:
    """A ring whose first send never completes (what a kernel must not do with MSG_DONTWAIT)."""

    entries = 8

    def send_all(self, fds: list[int], datas: list[bytes]) -> list[int]:
        return [-errno.EINPROGRESS] + [len(d) for d in datas[1:]]

    def close(self) -> None:
        pass


def test_a_send_that_never_completes_ends_its_call_and_retires_the_ring(pairs: list) -> None:
    class Lost(Sock):
        lost = False

        def ring_lost(self) -> None:
            self.lost = True

    clock = MediaClock(time_fn=lambda: 0.0, autostart=False)
    batch = SendBatch(clock, _StuckRing())  # type: ignore[arg-type]
    a, b = Lost(pairs[0][0]), Lost(pairs[1][0])
    batch.add(a, b"first")
    batch.add(b, b"second")
    batch.flush()
    assert a.lost and not b.lost and not a.direct and not b.direct
    assert not batch.enabled  # sockets write frame by frame from now on
    assert batch._stuck == [[b"first", b"second"]]  # the kernel may still read these
