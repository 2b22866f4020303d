"""Voice-to-voice through a real SIP caller leg, against the Local-channel caller of the same run.

Usage (root; takes the Asterisk harness lock):

    ~/.cache/vr3ai/venv/bin/python -m bench.sip_path_latency            # ~1.5 min: 4 calls x 8 bursts per path
    ~/.cache/vr3ai/venv/bin/python -m bench.sip_path_latency --calls 2  # quicker

What it measures: the part of voice-to-voice latency that the *caller's path* adds. The agent (in
the platform, on the real media socket) plays a 200 ms 1 kHz burst; the caller runs Echo(), so the
burst comes back over the same path; the figure is agent play() -> first loud frame heard back by the
agent. That is the caller-side path twice (caller speech -> agent, and agent speech -> caller) plus
the platform's media clock and chan_websocket's 20 ms dequeue timer; whatever the agent itself spends
thinking is the same on every path and is not part of it.

Paths, placed in turn so the load is shared alike:

  local     Local/8000@from-external (what every call-flow test uses): no SIP, no RTP, no jitter buffer
  sip-ulaw  the lab's SIP phone (a second Asterisk, tests/harness SecondAsterisk) registered as 7001,
            calling over SIP/RTP on loopback with G.711 u-law
  sip-alaw  the same with A-law: the PBX transcodes to VR3 AI's u-law media channel both ways

Prints figures; asserts nothing. The machine is shared: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.harness import AsteriskLab, SecondAsterisk
from tests.integration.agents import tone_pcm
from tests.integration.conftest import SIMPLE_WORKFLOW
from tests.integration.platform import running_platform
from vr3ai.agent.base import CallContext, RunReport
from vr3ai.media.interface import CallAudio

LOUD_RMS = 1500.0  # the burst's RMS is ~5600; echo of silence is ~0


class EchoProbe:
    """Agent: after the path settles, plays bursts and times each one's echo."""

    def __init__(self, bursts: int, out: list[float]) -> None:
        self.bursts = bursts
        self.out = out

    async def run(self, audio: CallAudio, ctx: CallContext, report: RunReport) -> None:
        loud_at: list[float] = []
        loud = asyncio.Event()

        async def read() -> None:
            async for frame in audio.frames():
                pcm = np.frombuffer(bytes(frame), dtype="<i2").astype(np.float64)
                if pcm.size and float(np.sqrt(np.mean(pcm * pcm))) > LOUD_RMS:
                    loud_at.append(time.monotonic())
                    loud.set()

        reader = asyncio.create_task(read())
        try:
            await asyncio.sleep(1.0)
            for _ in range(self.bursts):
                loud_at.clear()
                loud.clear()
                t0 = time.monotonic()
                audio.play(tone_pcm(1000, 0.2))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(loud.wait(), 1.5)
                if loud_at:
                    self.out.append((loud_at[0] - t0) * 1000)
                await asyncio.sleep(0.6 + (time.monotonic() % 0.1))  # no fixed phase against the 20 ms timers
            report.end_reason = "bench done"
            await audio.hangup("bench done")
        finally:
            reader.cancel()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=4, help="calls per path")
    ap.add_argument("--bursts", type=int, default=8, help="bursts per call")
    args = ap.parse_args()

    results: dict[str, list[float]] = {"local": [], "sip-ulaw": [], "sip-alaw": []}
    current: list[list[float]] = [[]]

    def factory(ctx: CallContext) -> EchoProbe:
        return EchoProbe(args.bursts, current[0])

    lab = AsteriskLab(
        ari_port=int(os.environ.get("VR3AI_TEST_ARI_PORT", "8088")),
        sip_port=int(os.environ.get("VR3AI_TEST_SIP_PORT", "5060")),
        media_port=int(os.environ.get("VR3AI_TEST_MEDIA_PORT", "18765")),
    )
    await asyncio.to_thread(lab.start)
    phone: SecondAsterisk = lab.second("phone", role="phone")
    try:
        await asyncio.to_thread(phone.start)
        await phone.wait_registered()
        with tempfile.TemporaryDirectory() as tmp:
            async with running_platform(Path(tmp), port=lab.media_port, agent_factory=factory) as p:
                await p.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab)
                await lab.warm_up()
                await phone.warm_up()
                for i in range(args.calls):
                    for path in results:
                        current[0] = results[path]
                        before = len(results[path])
                        await _echo_call(lab, phone, path, f"bench-{path}-{i}")
                        print(f"{path:9s} call {i + 1}: {len(results[path]) - before} bursts", flush=True)
    finally:
        await asyncio.to_thread(lab.stop)

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\napp -> caller (Echo) -> app, ms  (load {load})")
    print(f"{'path':9s} {'n':>3s} {'p50':>7s} {'p90':>7s} {'min':>7s} {'max':>7s} {'p50 - local':>12s}")
    base = statistics.median(results["local"]) if results["local"] else float("nan")
    for path, vals in results.items():
        if not vals:
            print(f"{path:9s}   0  (no echo heard)")
            continue
        q = np.percentile(vals, [50, 90])
        print(f"{path:9s} {len(vals):3d} {q[0]:7.1f} {q[1]:7.1f} {min(vals):7.1f} {max(vals):7.1f} "
              f"{q[0] - base:+12.1f}")


async def _echo_call(lab: AsteriskLab, phone: SecondAsterisk, path: str, cid: str) -> None:
    params: dict[str, Any] = {"context": "harness-echo", "extension": "10", "priority": "1", "timeout": "10",
                              "channelId": cid}
    if path == "local":
        await lab.ari("POST", "/channels", params={**params, "endpoint": "Local/8000@from-external",
                                                   "formats": "ulaw"})
        owner = lab
    else:
        await phone.ari("POST", "/channels", params={**params, "endpoint": f"PJSIP/8000@pbx-{path[4:]}"})
        owner = phone
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = await owner.ari("GET", f"/channels/{cid}", ok=(200, 404))
        if r.status_code == 404:
            break
        await asyncio.sleep(0.2)
    await lab.wait_no_channels(timeout_s=5)


if __name__ == "__main__":
    asyncio.run(main())
