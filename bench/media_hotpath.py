"""Python work of the media path per call-second, without sockets: the part of "plumbing" we write.

Usage: ~/.cache/vr3ai/venv/bin/python -m bench.media_hotpath [--calls 100] [--seconds 20] [--repeat 5]

Why this exists: ``bench/capacity.py`` measures the whole platform process through the real
Asterisk (the figure the issue's target is about), but on 2 cores shared with Asterisk and the
load generator its CPU figure moves between runs by more than most single changes to the hot path
are worth (bench/README.md). Here the exact code of a call's media path runs on simulated
time with no I/O, so the figure repeats within a few percent:

* each call is set up as in production, through public APIs: ``MediaWebSocketProtocol`` gets a
  TCP transport (``connection_made``), the upgrade request and MEDIA_START (``data_received``),
  and the registry hands over the session;
* inbound: the masked WebSocket frame chan_websocket sends goes through
  ``MediaWebSocketProtocol.data_received`` (our frame parser) -> its transport ->
  ``MediaSession`` (recording, u-law decode) -> the agent, which measures each frame's RMS (the
  minimal agent's per-frame work);
* outbound: the engine's ``MediaClock`` ticks every 20 ms -> each session's play-out service
  (play-out model, recording, framing) -> the transport's ``send_bytes`` -> a TCP transport whose
  ``write`` only counts bytes;
* every call: an utterance of 1 s every 2 s with a mark (the marks are answered like Asterisk
  does), a GET_STATUS every 5 s answered with a STATUS.

Modes (same run): ``listen`` (the agent takes frames through ``PushedFrames.listen``, as our agents
do), ``pull`` (it iterates ``frames()``: a task wake-up per frame): the baseline, and ``tick``
(listen, and the clock reads each call's socket once per tick, :mod:`vr3ai.media.tickread`, as
production does from 16 calls: real socketpairs, one ``os.read`` per call per tick, the peer's
writes outside the timing).
Figures: CPU ms per call-second of simulated time (the event loop's own I/O and the kernel are
not in it; see capacity.py for those), min and median of --repeat runs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import socket
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vr3ai.media.clock import MediaClock
from vr3ai.media.direct import media_ws_protocol
from vr3ai.media.engine import MediaEngine, MediaTuning
from vr3ai.media.protocol import MediaStart, format_event
from vr3ai.media.server import MEDIA_WS_PATH, MediaRegistry
from vr3ai.media.session import MediaConfig, MediaSession

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

UTTERANCE = (np.sin(np.arange(8000) * 0.2) * 8000).astype("<i2").tobytes()  # 1 s
TICK_S = 0.02


def _masked(opcode: int, payload: bytes) -> bytes:
    key = b"\x11\x22\x33\x44"
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + key + body


class _CountingTcp:
    """The server side of the TCP connection: writes are counted, not sent (the kernel's send is
    not our Python); in ``tick`` mode it has a real socket for the clock to read."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.written = 0
        self.texts: list[bytes] = []
        self.sock = sock

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if data[:1] == b"\x81":  # a text frame: MARK_MEDIA / GET_STATUS to answer
            self.texts.append(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> Any:
        if name == "peername":
            return ("127.0.0.1", 40000)
        return self.sock if name == "socket" else None

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


_UPGRADE = (
    f"GET {MEDIA_WS_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {base64.b64encode(b'0123456789abcdef').decode()}\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: media\r\n\r\n"
).encode()


async def _connect(
    registry: MediaRegistry, i: int, recording: Path, sock: socket.socket | None
) -> tuple[Any, MediaSession]:
    """A media socket as Asterisk opens it: the upgrade, then MEDIA_START; its session."""
    cid = f"hot-{i}"
    fut = registry.expect(cid, recording_path=recording)
    proto = media_ws_protocol(registry)()
    proto.connection_made(_CountingTcp(sock))
    proto.data_received(_UPGRADE)
    start = MediaStart("hot", f"WebSocket/hot/{i}", cid, "ulaw", 160, 20)
    proto.data_received(_masked(1, format_event(start).encode()))
    return proto, await fut


async def run_once(calls: int, seconds: float, mode: str) -> tuple[float, float, float]:
    """CPU ms per call-second, and of it: inbound us per frame, outbound us per session tick
    (``tick`` mode: inbound is read inside the tick, so both are in the second figure)."""
    now = [1000.0]
    clock = MediaClock(time_fn=lambda: now[0], autostart=False)
    ticked = mode == "tick"
    # No ring sends: the socketpairs' peers are never read, and the figure is our Python.
    engine = MediaEngine(MediaTuning(tick_reads_from=1 if ticked else 0, ring_sends=False), clock=clock)
    registry = MediaRegistry(MediaConfig(), engine=engine)
    tmp = Path(tempfile.mkdtemp(prefix="vr3ai-hotpath-"))
    pairs = [socket.socketpair() for _ in range(calls)] if ticked else []
    for ours, _peer in pairs:
        ours.setblocking(False)
    conns = [await _connect(registry, i, tmp / f"{i}.wav", pairs[i][0] if ticked else None) for i in range(calls)]
    protos = [p for p, _s in conns]
    sessions = [s for _p, s in conns]
    peers = [peer for _ours, peer in pairs]
    loud = [0]

    def on_frame(frame: bytes) -> None:
        if audioop.rms(frame, 2) > 500:
            loud[0] += 1

    async def pull_agent(s: MediaSession) -> None:
        async for frame in s.frames():
            on_frame(frame)

    agents = [asyncio.ensure_future(pull_agent(s) if mode == "pull" else s.listen(on_frame)) for s in sessions]
    await asyncio.sleep(0)
    # Caller speech half of the time (a loud frame), silence otherwise: u-law of the utterance.
    speech = _masked(2, audioop.lin2ulaw(UTTERANCE[:320], 2))
    quiet = _masked(2, b"\xff" * 160)
    ticks = int(seconds / TICK_S)
    cpu_in = cpu_out = 0.0

    def answer(i: int, data: bytes) -> None:
        # What chan_websocket sends: not our cost, so it is written (tick) or fed outside the timing
        # except for our parser's share, which the loop's read would run too.
        if ticked:
            peers[i].sendall(data)
        else:
            protos[i].data_received(data)

    for k in range(ticks):
        now[0] += TICK_S
        frame = speech if (k // 50) % 2 else quiet
        if ticked:
            for peer in peers:
                peer.sendall(frame)
        t0 = time.process_time()
        for i, p in enumerate(protos):
            if (k + i) % 100 == 0:  # each call starts an utterance every 2 s, staggered
                sessions[i].play(UTTERANCE, mark=f"u{k}")
            if not ticked:
                p.data_received(frame)
        if mode == "pull":
            await asyncio.sleep(0)  # the agents' frames() wake-ups
        t1 = time.process_time()
        clock.tick(now[0], due=now[0])
        t2 = time.process_time()
        cpu_in += t1 - t0
        cpu_out += t2 - t1
        # Asterisk's answers: MEDIA_MARK_PROCESSED per mark, STATUS per GET_STATUS.
        for i, p in enumerate(protos):
            texts = p.transport.texts
            if texts:
                for raw in texts:
                    body = raw[2:].decode()
                    if body.startswith("MARK_MEDIA"):
                        cid = body.split(" ", 1)[1]
                        answer(i, _masked(1, f"MEDIA_MARK_PROCESSED {cid}".encode()))
                    elif body.startswith("GET_STATUS"):
                        answer(
                            i,
                            _masked(
                                1,
                                b"STATUS queue_length:2 xon_level:800 xoff_level:900 queue_full:false "
                                b"bulk_media:false media_paused:false",
                            ),
                        )
                texts.clear()
    for p in protos:
        p.connection_lost(None)
    await asyncio.gather(*(s.closed for s in sessions), return_exceptions=True)
    await asyncio.gather(*agents, return_exceptions=True)
    for s in sessions:
        await s.recording
    for pair in pairs:
        for sock in pair:
            sock.close()
    await asyncio.to_thread(shutil.rmtree, tmp)
    if loud[0] == 0 or clock.service_errors:
        raise SystemExit(f"{mode}: the agent heard no speech or the clock failed: the run measured nothing")
    n = calls * ticks
    return (cpu_in + cpu_out) * 1000 / (calls * seconds), cpu_in * 1e6 / n, cpu_out * 1e6 / n


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20.0, help="simulated seconds per run")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--modes", default="pull,listen,tick", help="comma-separated; the first is the baseline")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - {"pull", "listen", "tick"}:
        ap.error("--modes: pull, listen and/or tick")
    res: dict[str, list[tuple[float, float, float]]] = {m: [] for m in modes}
    for _ in range(args.repeat):
        for mode in res:
            res[mode].append(await run_once(args.calls, args.seconds, mode))
    print(
        f"{args.calls} calls x {args.seconds:.0f} simulated s, {args.repeat} runs, "
        f"loop={type(asyncio.get_running_loop()).__module__}, load {os.getloadavg()[0]:.1f}"
    )
    base = min(r[0] for r in res[modes[0]])
    for mode, runs in res.items():
        v = [r[0] for r in runs]
        best = min(runs)
        print(
            f"  {mode:7s} CPU ms per call-second: min {best[0]:.3f}  median {statistics.median(v):.3f}"
            f"  x baseline {best[0] / base:.2f}   (best run: inbound {best[1]:.1f} us per frame,"
            f" outbound {best[2]:.1f} us per session tick)"
        )
    print(
        f"(baseline = {modes[0]}; pull: the agent iterates frames(); listen: PushedFrames.listen; tick: listen, and"
        " the clock reads the sockets (real socketpairs, os.read per frame: the production path from"
        " VR3AI_MEDIA_TICK_READS_FROM calls) - its inbound is inside the session tick figure)"
    )


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
