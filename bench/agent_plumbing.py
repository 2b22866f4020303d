"""Per-call CPU of the voice pipeline's plumbing (VAD + turn-taking + playback bookkeeping).

N concurrent calls for D seconds in one event loop, each caller talking and pausing like a real
caller (flite speech at 8 kHz, real time), each agent answering every turn with a cached reply.
STT and TTS are instant fakes, so what is measured is exactly the per-call work that scales with
the number of calls: Silero on every 32 ms window that is not near-digital silence, the state
machine, buffering, marks, transcripts. A control run with the same fake lines and a trivial
consumer (no agent) is subtracted, so the fake's own 20 ms timers are not counted.

Also prints the event-loop lag (how late a 10 ms sleep wakes up): the media path shares the loop.

Usage: python -m bench.agent_plumbing [--calls 100] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
from collections.abc import AsyncIterator
from typing import Any

from tests.fakes.call_audio import FakeCallAudio
from tests.unit.agent.agent_helpers import ScriptedSTT, ToneTTS, caller_speech
from vr3ai.agent.base import CallContext, RunReport
from vr3ai.agent.pipeline import PipelineConfig, VoicePipeline
from vr3ai.agent.services.cache import TtsCache
from vr3ai.agent.services.vad import SileroModel
from vr3ai.workflows.responder import CallerTurn, ReplyPart, ResponderState, Say

CTX = CallContext("bench", "org", "wf", {}, {})


class Echo:
    def __init__(self) -> None:
        self.state = ResponderState("start")

    async def opening(self) -> AsyncIterator[ReplyPart]:
        yield Say("Hello.", fixed=True)

    async def respond(self, turn: CallerTurn) -> AsyncIterator[ReplyPart]:
        yield Say("Okay.", fixed=True)

    def fixed_texts(self) -> list[str]:
        return ["Hello.", "Okay."]


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def lag_probe(stop: asyncio.Event, out: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.01)
        out.append((time.perf_counter() - t - 0.01) * 1000)


async def caller(audio: FakeCallAudio, speech: list[bytes], stop: asyncio.Event, i: int) -> None:
    k = i
    await audio.pause(37 * (i % 50))
    while not stop.is_set() and not audio.ended:
        try:
            await audio.say(speech[k % len(speech)])
        except ConnectionResetError:
            return
        await audio.pause(1500)
        k += 1


class CountingModel(SileroModel):
    """The shared Silero model, counting its runs (through its public ``infer``): windows that were
    not near-digital silence."""

    runs = 0

    def infer(self, window: Any, state: Any) -> Any:
        self.runs += 1
        return super().infer(window, state)


async def run(n: int, seconds: float, with_agent: bool) -> tuple[float, list[float], dict[str, Any]]:
    model = CountingModel()
    cache = TtsCache()
    tts = ToneTTS(delay_s=0)
    for text in Echo().fixed_texts():
        cache.put((tts.engine, tts.voice, 8000, text), await tts.synthesize(text))
    speech = [caller_speech(t) for t in ("I would like to book an appointment.", "Yes please.", "No thanks.")]
    stop = asyncio.Event()
    audios = [FakeCallAudio() for _ in range(n)]
    agents: list[VoicePipeline] = []
    tasks: list[asyncio.Task[Any]] = []
    for a in audios:
        if with_agent:
            ag = VoicePipeline(
                Echo(), ScriptedSTT(["okay"] * 1000, delay_s=0), tts,  # type: ignore[arg-type]
                config=PipelineConfig(idle_timeout_s=0), vad_model=model, cache=cache,
            )
            agents.append(ag)
            tasks.append(asyncio.create_task(ag.run(a, CTX, RunReport())))
        else:
            async def drain(a: FakeCallAudio = a) -> None:
                async for _ in a.frames():
                    pass
            tasks.append(asyncio.create_task(drain()))
    callers = [asyncio.create_task(caller(a, speech, stop, i)) for i, a in enumerate(audios)]
    await asyncio.sleep(2.0)  # everyone up and talking
    lags: list[float] = []
    probe = asyncio.create_task(lag_probe(stop, lags))
    c0, runs0 = cpu(), model.runs
    await asyncio.sleep(seconds)
    used, runs = cpu() - c0, model.runs - runs0
    stop.set()
    for a in audios:
        a.caller_hangup()
    await asyncio.gather(*tasks, *callers, probe, return_exceptions=True)
    stats: dict[str, Any] = {}
    if agents:
        stats["vad_model_runs"] = runs
        stats["barge_ins"] = sum(ag.stats["barge_ins"] for ag in agents)
    return used, lags, stats


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    base, _, _ = await run(args.calls, args.seconds, with_agent=False)
    used, lags, stats = await run(args.calls, args.seconds, with_agent=True)
    per_call = (used - base) / args.seconds / args.calls * 100
    lags.sort()
    print(f"{args.calls} calls x {args.seconds:.0f} s: process CPU {used:.2f} s (fake lines alone {base:.2f} s)")
    print(
        f"agent plumbing: {per_call:.2f} % of one core per call  ->  "
        f"{per_call * args.calls:.0f} % for {args.calls} calls"
    )
    # 8 kHz audio in 256-sample windows: 31.25 windows per call-second.
    windows = 31.25 * args.calls * args.seconds
    print(f"VAD model runs {stats['vad_model_runs']} of ~{windows:.0f} windows "
          f"({100 * stats['vad_model_runs'] / windows:.0f} %: the rest was near-silence)")
    if lags:
        p50, p99 = lags[len(lags) // 2], lags[int(len(lags) * 0.99)]
        print(f"event-loop lag (10 ms sleep): p50 {p50:.1f} ms  p99 {p99:.1f} ms  max {lags[-1]:.1f} ms")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
