"""TickReader on real sockets (socketpairs) and a hand-driven clock: when it reads, what it hands
back to the event loop. The end-to-end path through uvicorn is in test_media_server.py."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator

import pytest

from vr3ai.media.clock import MediaClock
from vr3ai.media.tickread import TickReader


class Sock:
    """A TickReadable over one end of a socketpair, recording what the reader does with it."""

    def __init__(self, clock: MediaClock) -> None:
        self.ours, self.peer = socket.socketpair()
        self.ours.setblocking(False)
        self.clock = clock
        self.got: list[tuple[bytes, float]] = []
        self.loop_reading = True
        self.pauses = 0

    def tick_fd(self) -> int | None:
        return None if self.ours.fileno() < 0 else self.ours.fileno()

    def pause_loop_reading(self) -> None:
        self.loop_reading = False
        self.pauses += 1

    def resume_loop_reading(self) -> None:
        self.loop_reading = True

    def tick_sink(self) -> Callable[[bytes, float], None]:
        return self.on_data

    def on_data(self, data: bytes, arrived_at: float) -> None:
        # Recorded as how long before the read it arrived (the offset the estimate applies).
        self.got.append((data, self.clock.time() - arrived_at))

    def close(self) -> None:
        self.ours.close()
        self.peer.close()


@pytest.fixture
def clock() -> MediaClock:
    return MediaClock(time_fn=lambda: 0.0, autostart=False)


@pytest.fixture
def socks(clock: MediaClock) -> Iterator[list[Sock]]:
    made = [Sock(clock) for _ in range(4)]
    yield made
    for s in made:
        s.close()


async def test_reads_once_after_each_tick(clock: MediaClock, socks: list[Sock]) -> None:
    reader = TickReader.create(clock, 1)
    assert reader is not None
    a = socks[0]
    reader.enroll(a)
    assert not reader.active and a.loop_reading  # nothing changes until the clock ticks
    a.peer.send(b"one")
    clock.tick()
    assert reader.active and not a.loop_reading and a.pauses == 1
    assert a.got == [(b"one", clock.tick_s / 2)]  # arrival: the middle of the last tick
    a.peer.send(b"two")
    await asyncio.sleep(clock.tick_s * 2)
    assert len(a.got) == 1  # neither the loop nor a timer reads it: the next tick does
    clock.tick()
    assert [d for d, _ in a.got] == [b"one", b"two"]
    reader.release(a)
    assert a.loop_reading and not reader.active and len(reader) == 0
    reader.release(a)  # idempotent


async def test_arrival_is_estimated_from_the_time_since_the_last_read() -> None:
    """What a read finds arrived since the previous read: half a tick ago after an on-time tick,
    more after a late one (a fixed half tick made late events look later than they were, and the
    play-out model then re-anchored later and let Asterisk's queue run dry)."""
    t = [100.0]
    clock = MediaClock(time_fn=lambda: t[0], autostart=False)
    reader = TickReader(clock, 1)
    a = Sock(clock)
    reader.enroll(a)
    offsets = []
    for step in (0.0, 0.020, 0.020, 0.050, 0.020, 3.0):
        t[0] += step
        a.peer.send(b"x")
        clock.tick()
        offsets.append(a.got[-1][1])
    assert offsets == pytest.approx([0.010, 0.010, 0.010, 0.025, 0.010, 0.25])  # the last: bounded
    reader.release(a)  # below the threshold: the loop reads again...
    reader.enroll(a)
    t[0] += 0.020
    a.peer.send(b"y")
    clock.tick()  # ...and the first read after that has no previous read to go by
    assert a.got[-1] == (b"y", pytest.approx(0.010))
    reader.release(a)
    a.close()


async def test_threshold_and_hysteresis(clock: MediaClock, socks: list[Sock]) -> None:
    reader = TickReader(clock, 4)
    a, b, c, d = socks
    for s in (a, b, c):
        reader.enroll(s)
    clock.tick()
    assert not reader.active and a.loop_reading
    reader.enroll(d)
    clock.tick()
    assert reader.active and not any(s.loop_reading for s in socks)
    reader.release(d)
    reader.release(c)
    clock.tick()
    assert reader.active  # 2 = 4 // 2: stays (no flapping around the threshold)
    reader.release(b)
    clock.tick()
    assert not reader.active and a.loop_reading  # 1 < 4 // 2: back to the loop
    assert reader.switches == 2
    reader.release(a)


async def test_end_of_stream_goes_back_to_the_loop(clock: MediaClock, socks: list[Sock]) -> None:
    reader = TickReader(clock, 1)
    a, b = socks[:2]
    reader.enroll(a)
    reader.enroll(b)
    clock.tick()
    a.peer.send(b"last words")
    a.peer.close()
    b.peer.send(b"still here")
    clock.tick()
    assert [d for d, _ in a.got] == [b"last words"] and not a.loop_reading  # one read per socket per poll
    clock.tick()
    # Then EOF: handed back to the loop (which reads the EOF itself and runs its close path).
    assert [d for d, _ in a.got] == [b"last words"]
    assert a.loop_reading and not b.loop_reading
    assert [d for d, _ in b.got] == [b"still here"]
    reader.release(a)
    reader.release(b)


async def test_a_closed_socket_is_skipped(clock: MediaClock, socks: list[Sock]) -> None:
    reader = TickReader(clock, 1)
    a = socks[0]
    a.ours.close()  # tick_fd() is None: e.g. a transport that is already closing
    reader.enroll(a)
    clock.tick()
    assert reader.active and a.loop_reading and a.pauses == 0
    reader.release(a)
