"""Media pacing cost and timing: CPU per call-second and send-gap percentiles.

Usage: python -m bench.media_pacing [--seconds 5] [--sizes 1,50,150] [--no-real]

Scenarios, each at 1 / 50 / 150 concurrent sessions:

* ``baseline``  the naive design, a task per call that sleeps 20 ms and sends one frame (what the
  shared clock replaces). Pacing only, no session logic: a lower bound for that design.
* ``pace``      MediaSession + shared MediaClock with a fake transport: the agent speaks 1 s out of
  every 2 s (silence otherwise), marks each utterance; no caller audio.
* ``pertask``   ``pace`` with one clock task per call instead of the shared one: what sharing saves.
* ``full``      ``pace`` plus caller audio: a feeder delivers a 160-byte frame to every session every
  20 ms through the transport's receive(), and an agent task per call drains ``frames()``.
* ``real``      the ``full`` shape through the production listener on 127.0.0.1 (uvicorn with
  ``vr3ai.media.direct``'s protocol, ``--asgi`` for the ASGI endpoint instead), every call
  recorded, each caller frame measured (RMS) as the minimal agent does, with a child process
  playing N Asterisk channels (its CPU is not counted). No Asterisk and all inbound frames in one
  burst per 20 ms, so kernel costs are below a real run (bench/capacity.py); it isolates ours.

Figures: CPU ms per call-second (process CPU / (calls x seconds)), % of one core, send-gap p50/p99/max
per call (time between our consecutive sends to one call; 20 ms is perfect), clock tick lateness.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vr3ai.media.clock import MediaClock
from vr3ai.media.protocol import MediaStart
from vr3ai.media.session import MediaConfig, MediaSession
from vr3ai.media.transport import Deliver, pump

with warnings.catch_warnings():
    # audioop is C and per-frame RMS is what the minimal agent does; it leaves the stdlib in 3.13.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FRAME = b"\xff" * 160
UTTERANCE = (np.sin(np.arange(8000) * 0.2) * 8000).astype("<i2").tobytes()  # 1 s


@dataclass
class BenchTransport:
    sends: list[float] = field(default_factory=list)
    inbox: asyncio.Queue[str | bytes | None] = field(default_factory=asyncio.Queue)
    close_code: int | None = None

    def send_text(self, text: str) -> None:
        pass

    def send_bytes(self, data: bytes) -> None:
        self.sends.append(time.monotonic())

    async def receive(self) -> str | bytes | None:
        return await self.inbox.get()

    async def attach(self, deliver: Deliver, time: Callable[[], float]) -> None:
        await pump(self.receive, deliver, time)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_code = code
        self.inbox.put_nowait(None)


@dataclass
class Result:
    scenario: str
    calls: int
    seconds: float
    cpu_s: float
    gaps_ms: list[float]
    lateness_ms: list[float] = field(default_factory=list)
    extra: str = ""

    def row(self) -> str:
        per_call_s = self.cpu_s * 1000 / (self.calls * self.seconds)
        core = 100 * self.cpu_s / self.seconds
        g = sorted(self.gaps_ms) or [0.0]
        late = sorted(self.lateness_ms) or [0.0]
        return (
            f"{self.scenario:9s} {self.calls:5d} {per_call_s:10.3f} {core:7.1f}% "
            f"{_pct(g, 50):7.2f} {_pct(g, 99):7.2f} {g[-1]:7.2f} "
            f"{_pct(late, 99):7.2f} {late[-1]:7.2f}  {self.extra}"
        )


def _pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def _gaps(sends: list[float]) -> list[float]:
    """Gaps between ticks that sent something (several frames in one tick count as one send)."""
    ticks = sorted(set(sends))
    return [(b - a) * 1000 for a, b in itertools.pairwise(ticks)]


def _start(i: int) -> MediaStart:
    return MediaStart("bench", f"WebSocket/bench/{i}", f"bench-{i}", "ulaw", 160, 20)


async def bench_baseline(n: int, seconds: float) -> Result:
    transports = [BenchTransport() for _ in range(n)]

    async def pacer(tr: BenchTransport) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            tr.send_bytes(FRAME)
            due += 0.02
            await asyncio.sleep(max(0.0, due - loop.time()))

    tasks = [asyncio.ensure_future(pacer(t)) for t in transports]
    await asyncio.sleep(0.2)
    for t in transports:
        t.sends.clear()
    cpu0 = time.process_time()
    await asyncio.sleep(seconds)
    cpu = time.process_time() - cpu0
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return Result("baseline", n, seconds, cpu, [g for t in transports for g in _gaps(t.sends)])


TICK_MS = 20.0
LEAD_MS = 60.0


async def bench_sessions(n: int, seconds: float, inbound: bool, per_task: bool = False) -> Result:
    clock = MediaClock(tick_ms=TICK_MS)
    clock.lateness_ms = []
    config = MediaConfig(status_interval_s=5.0, target_lead_ms=LEAD_MS)
    transports = [BenchTransport() for _ in range(n)]
    # per_task: the same session logic, but each call gets its own clock task (task + sleep per call).
    clocks = [MediaClock(tick_ms=TICK_MS) for _ in range(n)] if per_task else [clock] * n
    sessions = [MediaSession(t, _start(i), config=config, clock=clocks[i]) for i, t in enumerate(transports)]
    readers = [asyncio.ensure_future(s.run()) for s in sessions]
    stop = asyncio.Event()

    async def agent(i: int, s: MediaSession) -> None:
        # Staggered: each call speaks 1 s in every 2 s.
        await asyncio.sleep((i % 50) * 0.04)
        k = 0
        while not stop.is_set():
            k += 1
            s.play(UTTERANCE, mark=f"u{k}")
            await asyncio.sleep(2.0)

    async def consume(s: MediaSession) -> None:
        async for _ in s.frames():
            pass

    async def feeder() -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not stop.is_set():
            for t in transports:
                t.inbox.put_nowait(FRAME)
            due += 0.02
            await asyncio.sleep(max(0.0, due - loop.time()))

    tasks = [asyncio.ensure_future(agent(i, s)) for i, s in enumerate(sessions)]
    if inbound:
        tasks += [asyncio.ensure_future(consume(s)) for s in sessions]
        tasks.append(asyncio.ensure_future(feeder()))
    await asyncio.sleep(0.3)
    for t in transports:
        t.sends.clear()
    clock.lateness_ms.clear()
    cpu0 = time.process_time()
    await asyncio.sleep(seconds)
    cpu = time.process_time() - cpu0
    stop.set()
    skipped = sum(s.stats.skipped_ms for s in sessions)
    for s in sessions:
        await s.close()
    await asyncio.gather(*readers, return_exceptions=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in {id(c): c for c in [clock, *clocks]}.values():
        await c.aclose()
    rate = statistics.mean(len(t.sends) for t in transports) / seconds
    extra = f"frames/s/call={rate:.1f} skipped_ms/call={skipped / n:.0f}"
    return Result(
        "pertask" if per_task else "full" if inbound else "pace",
        n,
        seconds,
        cpu,
        [g for t in transports for g in _gaps(t.sends)],
        list(clock.lateness_ms),
        extra,
    )


# ------------------------------------------------------------------------------------------------ real


_CHILD = r"""
# A deliberately cheap Asterisk imitation (raw protocol, pre-masked frames, no parsing of what the
# server sends beyond counting bytes), so that on a small box the client does not starve the server.
import asyncio, base64, json, os, struct, sys, time
try:
    import uvloop
except ImportError:
    uvloop = None
host, port, path, n, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])

def masked(opcode, payload):
    key = b"\x01\x02\x03\x04"
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    ln = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | ln]) if ln < 126 else bytes([0x80 | 126]) + struct.pack("!H", ln))
    return head + key + body

FRAME = masked(2, b"\xff" * 160)

class Chan(asyncio.Protocol):
    def __init__(self, i):
        self.i, self.buf, self.up, self.bytes_in = i, b"", asyncio.get_running_loop().create_future(), 0
    def connection_made(self, tr):
        self.tr = tr
        key = base64.b64encode(os.urandom(16)).decode()
        tr.write((f"GET {path} HTTP/1.1\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nHost: {host}:{port}\r\nSec-WebSocket-Protocol: media\r\n"
                  f"Sec-WebSocket-Key: {key}\r\n\r\n").encode())
    def data_received(self, data):
        if not self.up.done():
            self.buf += data
            if b"\r\n\r\n" in self.buf:
                head, _, rest = self.buf.partition(b"\r\n\r\n")
                self.bytes_in += len(rest)
                self.up.set_result(head.startswith(b"HTTP/1.1 101"))
        else:
            self.bytes_in += len(data)

async def main():
    loop = asyncio.get_running_loop()
    chans = []
    for i in range(n):
        _, ch = await loop.create_connection(lambda i=i: Chan(i), host, port)
        assert await ch.up
        ch.tr.write(masked(1, (f"MEDIA_START connection_id:bench channel:WebSocket/bench/{i} channel_id:real-{i} "
                               "format:ulaw optimal_frame_size:160 ptime:20").encode()))
        chans.append(ch)
    print("READY", flush=True)
    due = loop.time(); end = due + seconds + 1.0
    t0 = time.monotonic(); start_bytes = [c.bytes_in for c in chans]
    while loop.time() < end:
        for c in chans:
            c.tr.write(FRAME)
        due += 0.02
        await asyncio.sleep(max(0.0, due - loop.time()))
    elapsed = time.monotonic() - t0
    rates = [(c.bytes_in - b) / 162 / elapsed for c, b in zip(chans, start_bytes)]
    for c in chans:
        c.tr.close()
    print(json.dumps({"rates": rates}), flush=True)
(uvloop.run if uvloop else asyncio.run)(main())
"""


async def bench_real(n: int, seconds: float, asgi: bool = False) -> Result:
    import tempfile

    import uvicorn
    from fastapi import FastAPI

    from vr3ai.media.direct import media_ws_protocol
    from vr3ai.media.engine import MediaEngine
    from vr3ai.media.server import MEDIA_WS_PATH, MediaRegistry, media_router

    clock = MediaClock(tick_ms=TICK_MS)
    clock.lateness_ms = []
    registry = MediaRegistry(MediaConfig(target_lead_ms=LEAD_MS), engine=MediaEngine(clock=clock))
    app = FastAPI()
    app.include_router(media_router(registry))
    ws: Any = "websockets-sansio" if asgi else media_ws_protocol(registry)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="error", ws=ws))
    serve_task = asyncio.ensure_future(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    rec_dir = tempfile.TemporaryDirectory(prefix="vr3ai-pacing-")
    futures = [registry.expect(f"real-{i}", recording_path=f"{rec_dir.name}/{i}.wav") for i in range(n)]
    stop = asyncio.Event()

    drains: list[asyncio.Future[None]] = []

    async def agent(i: int, fut: asyncio.Future[MediaSession]) -> None:
        s = await fut
        drains.append(asyncio.ensure_future(_drain(s)))
        await asyncio.sleep((i % 50) * 0.04)
        k = 0
        while not stop.is_set():
            k += 1
            s.play(UTTERANCE, mark=f"u{k}")
            await asyncio.sleep(2.0)

    agents = [asyncio.ensure_future(agent(i, f)) for i, f in enumerate(futures)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        "127.0.0.1",
        str(port),
        MEDIA_WS_PATH,
        str(n),
        str(seconds + 0.5),
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    assert line.strip() == b"READY", line
    sessions = await asyncio.gather(*futures)
    server_sends: list[list[float]] = []
    for s in sessions:
        sends: list[float] = []
        server_sends.append(sends)
        s.transport.send_bytes = _recording_send(s.transport.send_bytes, sends)  # type: ignore[method-assign]
    await asyncio.sleep(0.5)
    for sends in server_sends:
        sends.clear()
    clock.lateness_ms.clear()
    cpu0 = time.process_time()
    await asyncio.sleep(seconds)
    cpu = time.process_time() - cpu0
    skipped = sum(s.stats.skipped_ms for s in sessions) / n
    stop.set()
    out = json.loads((await proc.stdout.readline()).decode())
    await proc.wait()
    for a in agents:
        a.cancel()
    await asyncio.wait([asyncio.ensure_future(asyncio.shield(s.recording)) for s in sessions], timeout=10)
    server.should_exit = True
    await serve_task
    rec_dir.cleanup()
    rate = statistics.mean(out["rates"])
    gaps = [g for sends in server_sends for g in _gaps(sends)]
    extra = f"frames/s/call~{rate:.1f} (client) skipped_ms/call={skipped:.0f}"
    return Result("real-asgi" if asgi else "real", n, seconds, cpu, gaps, list(clock.lateness_ms), extra)


def _recording_send(send: Callable[[bytes], None], sends: list[float]) -> Callable[[bytes], None]:
    def wrapped(data: bytes) -> None:
        sends.append(time.monotonic())
        send(data)

    return wrapped


PULL = False
"""--pull: the agent iterates frames() instead of listen()ing (what listen() saves)."""


async def _drain(s: MediaSession) -> None:
    loud = 0

    def on_frame(frame: bytes) -> None:
        nonlocal loud
        if audioop.rms(frame, 2) > 500:  # what the minimal agent does with every frame
            loud += 1

    if not PULL:
        await s.listen(on_frame)
        return
    async for frame in s.frames():
        on_frame(frame)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--sizes", default="1,50,150")
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--tick-ms", type=float, default=20.0, help="shared clock period (default 20)")
    ap.add_argument("--lead-ms", type=float, default=60.0, help="target lead (default 60)")
    ap.add_argument("--scenarios", default="baseline,pace,pertask,full,real")
    ap.add_argument("--asgi", action="store_true", help="real: the ASGI media endpoint instead of the direct one")
    ap.add_argument("--pull", action="store_true", help="real: the agent iterates frames() instead of listen()")
    ap.add_argument("--uvloop", action="store_true", help="(set by the launcher)")
    args = ap.parse_args()
    # Overload shows up in the figures; the per-call drop warnings would only bury them.
    logging.getLogger("vr3ai.media").setLevel(logging.ERROR)
    sizes = [int(x) for x in args.sizes.split(",")]
    global TICK_MS, LEAD_MS, PULL
    TICK_MS, LEAD_MS, PULL = args.tick_ms, args.lead_ms, args.pull
    wanted = set(args.scenarios.split(","))
    print(
        f"python {sys.version.split()[0]}, loop={type(asyncio.get_running_loop()).__module__}, "
        f"cpus={os.cpu_count()}, {args.seconds:.0f} s per run, tick {TICK_MS:.0f} ms, lead {LEAD_MS:.0f} ms, "
        f"load avg at start {os.getloadavg()[0]:.1f} (other processes distort gaps, not CPU per call)"
    )
    print(
        f"{'scenario':9s} {'calls':>5s} {'cpu ms/cs':>10s} {'core':>8s} "
        f"{'gap p50':>7s} {'gap p99':>7s} {'gap max':>7s} {'late99':>7s} {'lateMx':>7s}"
    )
    for n in sizes:
        if "baseline" in wanted:
            print((await bench_baseline(n, args.seconds)).row(), flush=True)
        if "pace" in wanted:
            print((await bench_sessions(n, args.seconds, inbound=False)).row(), flush=True)
        if "pertask" in wanted:
            print((await bench_sessions(n, args.seconds, inbound=False, per_task=True)).row(), flush=True)
        if "full" in wanted:
            print((await bench_sessions(n, args.seconds, inbound=True)).row(), flush=True)
        if "real" in wanted and not args.no_real:
            print((await bench_real(n, args.seconds, asgi=args.asgi)).row(), flush=True)
    print("cpu ms/cs = CPU milliseconds per call-second; core = % of one core; gaps and lateness in ms")


if __name__ == "__main__":
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
