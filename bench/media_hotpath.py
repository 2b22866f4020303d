"""Python work of the media path per call-second, without sockets: the part of "plumbing" we write.

Usage: ~/.cache/vr3ai/venv/bin/python bench/media_hotpath.py [--calls 100] [--seconds 20] [--repeat 5]

Why this exists: ``bench/capacity.py`` measures the whole platform process through the real
Asterisk (the figure the issue's target is about), but on 2 cores shared with Asterisk and the
load generator its CPU figure moves by +-0.3 ms per call-second between runs, more than most single
changes to the hot path are worth. Here the exact code of a call's media path runs on simulated
time with no I/O, so the figure repeats within a few percent:

* inbound: the masked WebSocket frame chan_websocket sends goes through
  ``MediaWebSocketProtocol.data_received`` (our frame parser) -> ``DirectTransport`` ->
  ``MediaSession`` (recording, u-law decode) -> the agent, which measures each frame's RMS (the
  minimal agent's per-frame work);
* outbound: the shared ``MediaClock`` ticks every 20 ms -> each session's ``service`` (play-out
  model, recording, framing) -> ``DirectTransport.send_bytes`` -> a TCP transport whose ``write``
  only counts bytes;
* every call: an utterance of 1 s every 2 s with a mark (the marks are answered like Asterisk
  does), a GET_STATUS every 5 s answered with a STATUS.

Modes (same run): ``listen`` (the agent takes frames through ``PushedFrames.listen``, as our agents
do) and ``pull`` (it iterates ``frames()``: a task wake-up per frame): the baseline.
Figures: CPU ms per call-second of simulated time (the event loop's own I/O and the kernel are
not in it; see capacity.py for those), min and median of --repeat runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vr3ai.media.clock import MediaClock
from vr3ai.media.direct import DirectTransport, MediaWebSocketProtocol
from vr3ai.media.protocol import MediaStart
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
    def __init__(self) -> None:
        self.written = 0
        self.texts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if data[:1] == b"\x81":  # a text frame: MARK_MEDIA / GET_STATUS to answer
            self.texts.append(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def _protocol(loop: asyncio.AbstractEventLoop) -> Any:
    """A MediaWebSocketProtocol as ``handle_connect`` leaves it, minus uvicorn's server state."""
    proto: Any = object.__new__(MediaWebSocketProtocol)
    proto.transport = _CountingTcp()
    proto.loop = loop
    proto.writable = asyncio.Event()
    proto.writable.set()
    proto._direct = DirectTransport(proto)
    return proto


async def run_once(calls: int, seconds: float, pull: bool) -> tuple[float, float, float]:
    """CPU ms per call-second, and of it: inbound us per frame, outbound us per session tick."""
    loop = asyncio.get_running_loop()
    now = [1000.0]
    clock = MediaClock(time_fn=lambda: now[0], autostart=False)
    config = MediaConfig()
    tmp = Path(tempfile.mkdtemp(prefix="vr3ai-hotpath-"))
    protos = [_protocol(loop) for _ in range(calls)]
    sessions = [
        MediaSession(
            p._direct,
            MediaStart("hot", f"WebSocket/hot/{i}", f"hot-{i}", "ulaw", 160, 20),
            config=config,
            clock=clock,
            recording_path=tmp / f"{i}.wav",
        )
        for i, p in enumerate(protos)
    ]
    readers = [asyncio.ensure_future(s.run()) for s in sessions]
    loud = [0]

    def on_frame(frame: bytes) -> None:
        if audioop.rms(frame, 2) > 500:
            loud[0] += 1

    async def pull_agent(s: MediaSession) -> None:
        async for frame in s.frames():
            on_frame(frame)

    agents = [asyncio.ensure_future(pull_agent(s) if pull else s.listen(on_frame)) for s in sessions]
    await asyncio.sleep(0)
    # Caller speech half of the time (a loud frame), silence otherwise: u-law of the utterance.
    speech = _masked(2, audioop.lin2ulaw(UTTERANCE[:320], 2))
    quiet = _masked(2, b"\xff" * 160)
    ticks = int(seconds / TICK_S)
    cpu_in = cpu_out = 0.0
    for k in range(ticks):
        t0 = time.process_time()
        now[0] += TICK_S
        frame = speech if (k // 50) % 2 else quiet
        for i, p in enumerate(protos):
            if (k + i) % 100 == 0:  # each call starts an utterance every 2 s, staggered
                sessions[i].play(UTTERANCE, mark=f"u{k}")
            p.data_received(frame)
        if pull:
            await asyncio.sleep(0)  # the agents' frames() wake-ups
        t1 = time.process_time()
        clock.tick(now[0], due=now[0])
        t2 = time.process_time()
        cpu_in += t1 - t0
        cpu_out += t2 - t1
        # Asterisk's answers (not our cost): MEDIA_MARK_PROCESSED per mark, STATUS per GET_STATUS.
        for p in protos:
            texts = p.transport.texts
            if texts:
                for raw in texts:
                    body = raw[2:].decode()
                    if body.startswith("MARK_MEDIA"):
                        cid = body.split(" ", 1)[1]
                        p.data_received(_masked(1, f"MEDIA_MARK_PROCESSED {cid}".encode()))
                    elif body.startswith("GET_STATUS"):
                        p.data_received(
                            _masked(
                                1,
                                b"STATUS queue_length:2 xon_level:800 xoff_level:900 queue_full:false "
                                b"bulk_media:false media_paused:false",
                            )
                        )
                texts.clear()
    for p in protos:
        p._direct.peer_closed(1000)
    await asyncio.gather(*readers, return_exceptions=True)
    await asyncio.gather(*agents, return_exceptions=True)
    for s in sessions:
        await s.recording
    await asyncio.to_thread(shutil.rmtree, tmp)
    n = calls * ticks
    return (cpu_in + cpu_out) * 1000 / (calls * seconds), cpu_in * 1e6 / n, cpu_out * 1e6 / n


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20.0, help="simulated seconds per run")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    res: dict[str, list[tuple[float, float, float]]] = {"pull": [], "listen": []}
    for _ in range(args.repeat):
        for mode in res:
            res[mode].append(await run_once(args.calls, args.seconds, pull=mode == "pull"))
    print(
        f"{args.calls} calls x {args.seconds:.0f} simulated s, {args.repeat} runs, "
        f"loop={type(asyncio.get_running_loop()).__module__}, load {os.getloadavg()[0]:.1f}"
    )
    base = min(r[0] for r in res["pull"])
    for mode, runs in res.items():
        v = [r[0] for r in runs]
        best = min(runs)
        print(
            f"  {mode:7s} CPU ms per call-second: min {best[0]:.3f}  median {statistics.median(v):.3f}"
            f"  x baseline {best[0] / base:.2f}   (best run: inbound {best[1]:.1f} us per frame,"
            f" outbound {best[2]:.1f} us per session tick)"
        )
    print("(baseline = pull: the agent iterates frames(); listen: PushedFrames.listen)")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
