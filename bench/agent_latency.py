"""Voice agent latency benchmark (offline stack, FakeCallAudio in real time, 2 shared cores).

Prints figures; asserts nothing. Timings are noisy when other work shares the cores: the script
prints the load average before and after, and every section's spread.

Sections
  setup      cold runtime start (models + TTS worker), then call bridged -> first greeting audio
             with a cached greeting (the 150 ms target)
  v2v        one call, >= 20 caller turns: end of the caller's speech (last sample above the
             energy floor, as sent on the line) -> first agent audio at the caller. Replies are
             NOT cached (synthesised by Piper per sentence; first sentence 6 words)
  rules      the example workflow with the real rule responder: replies are fixed texts (cached)
  barge-in   caller speech onset -> agent audio stopped (flush), while the agent talks
  baseline   same run, same VAD and plumbing, but no models after the VAD (STT answers at once,
             reply from the cache): the floor our design can reach (VAD end + plumbing)
  load       N concurrent full conversations (default 8), p50/p95 voice-to-voice
  resources  RSS of the platform process and the Piper worker; CPU seconds used

Usage: python -m bench.agent_latency [--turns 20] [--calls 8] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

from tests.fakes.call_audio import FakeCallAudio
from tests.unit.agent.agent_helpers import ScriptedSTT, caller_speech
from vr3ai.agent.base import CallContext, RunReport
from vr3ai.agent.pipeline import PipelineConfig, VoicePipeline
from vr3ai.agent.services.runtime import RuntimeConfig, VoiceRuntime
from vr3ai.workflows.responder import CallerTurn, Hangup, ReplyPart, ResponderState, Say

UTTERANCES = [
    "I would like to book an appointment for tomorrow.",
    "What are your opening hours on Saturday?",
    "Can I speak to someone about my bill?",
    "My name is John Smith.",
    "Yes please.",
    "Could you send me a confirmation by email?",
    "I think there is a mistake on my invoice.",
    "No, that is all.",
    "How much does the premium plan cost per month?",
    "Please cancel my subscription.",
]
GREETING = "Hello, thanks for calling Acme. How can I help you today?"
LONG = (
    "Our office is open from eight in the morning until six in the evening on weekdays, and from "
    "nine until noon on Saturdays. We are closed on Sundays and on public holidays."
)
CTX = CallContext("bench", "org", "wf", {}, {})


class BenchResponder:
    """Replies with uncached text: 'Let me help you with that.' + an echo of the caller."""

    def __init__(self, long_reply: bool = False) -> None:
        self.state = ResponderState("start")
        self.long_reply = long_reply

    async def opening(self) -> AsyncIterator[ReplyPart]:
        yield Say(GREETING, fixed=True)

    async def respond(self, turn: CallerTurn) -> AsyncIterator[ReplyPart]:
        if self.long_reply:
            yield Say(LONG)
            return
        if "bye" in turn.text.lower():
            yield Say("Goodbye!", fixed=True)
            yield Hangup("bye")
            return
        yield Say(f"Let me help you with that. You said: {turn.text}")

    def fixed_texts(self) -> list[str]:
        return [GREETING, "Goodbye!"]


class BaselineResponder(BenchResponder):
    async def respond(self, turn: CallerTurn) -> AsyncIterator[ReplyPart]:
        yield Say("Okay.", fixed=True)

    def fixed_texts(self) -> list[str]:
        return [GREETING, "Okay."]


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(name: str, xs: list[float], unit: str = "ms") -> str:
    if not xs:
        return f"{name:<34} no samples"
    return (
        f"{name:<34} n={len(xs):<3} p50={pct(xs, 50):6.0f}{unit}  p95={pct(xs, 95):6.0f}{unit}  "
        f"min={min(xs):5.0f}  max={max(xs):5.0f}"
    )


PIPELINE_OVERRIDES: dict[str, Any] = {}
AGENTS: list[VoicePipeline] = []


def agent(rt: VoiceRuntime, responder: Any, stt: Any = None, **cfg: Any) -> VoicePipeline:
    a = VoicePipeline(
        responder,
        stt or rt.stt,
        rt.local_tts(),
        config=PipelineConfig(idle_timeout_s=0, **{**PIPELINE_OVERRIDES, **cfg}),
        vad_model=rt.vad_model,
        cache=rt.cache,
        fallback_tts=rt.fallback_tts(),
    )
    AGENTS.append(a)
    return a


async def conversation(
    rt: VoiceRuntime, responder: Any, turns: list[bytes], stt: Any = None, rng: random.Random | None = None
) -> tuple[list[float], list[dict[str, Any]], float]:
    """Returns (voice-to-voice per turn, pipeline metrics, greeting setup ms)."""
    rng = rng or random.Random(0)
    audio = FakeCallAudio()
    report = RunReport()
    t_bridge = audio.clock_ms()
    task = asyncio.create_task(agent(rt, responder, stt).run(audio, CTX, report))
    greeting = await audio.wait_audio(0, within_s=30)
    setup = greeting.start_ms - t_bridge
    await audio.wait_silent()
    v2v: list[float] = []
    for pcm in turns:
        await audio.pause(rng.uniform(300, 700))
        said = await audio.say(pcm)
        try:
            reply = await audio.wait_audio(said.speech_end_ms, within_s=15)
            v2v.append(reply.start_ms - said.speech_end_ms)
        except TimeoutError:
            print(f"  (no reply to a turn; transcript so far: {[t.text for t in report.transcript][-2:]})")
        await audio.wait_silent()
        if task.done():
            break
    audio.caller_hangup()
    await asyncio.wait_for(task, 10)
    return v2v, [m for m in report.metrics if m.get("kind") == "speech"], setup


async def barge_in_trials(rt: VoiceRuntime, n: int) -> list[float]:
    out: list[float] = []
    for i in range(n):
        audio = FakeCallAudio()
        report = RunReport()
        task = asyncio.create_task(agent(rt, BenchResponder(long_reply=True)).run(audio, CTX, report))
        await audio.wait_audio(0)
        await audio.wait_silent()
        await audio.pause(300)
        said = await audio.say(caller_speech(UTTERANCES[1]))
        reply = await audio.wait_audio(said.speech_end_ms, within_s=15)
        await asyncio.sleep(max(0.0, (reply.start_ms + 1200 + 150 * i - audio.clock_ms()) / 1000))
        interrupt = await audio.say(caller_speech("Sorry, one more question."))
        if audio.flushes:
            out.append(audio.flushes[0][0] - interrupt.speech_start_ms)
        else:
            print("  (barge-in missed)")
        audio.caller_hangup()
        await asyncio.wait_for(task, 10)
    return out


async def rules_conversation(rt: VoiceRuntime) -> tuple[list[float], float]:
    from vr3ai.workflows.definition import example_definition
    from vr3ai.workflows.factory import build_responder

    script = [
        "I would like to book an appointment.",
        "Tomorrow at ten am.",
        "Yes please.",
    ]
    # Warm the cache with this workflow's fixed texts (what a deployment does at startup).
    warm = build_responder(example_definition(), {})
    tts = rt.local_tts()
    for text in warm.fixed_texts():
        await rt.cache.get_or_make((tts.engine, tts.voice, tts.sample_rate, text), lambda t=text: tts.synthesize(t))
    v2v: list[float] = []
    setups: list[float] = []
    for _ in range(2):
        responder = build_responder(example_definition(), {})
        got, _, setup = await conversation(rt, responder, [caller_speech(s) for s in script])
        v2v += got
        setups.append(setup)
    return v2v, statistics.median(setups)


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            total += (int(parts[11]) + int(parts[12])) / tick
        except OSError:
            pass
    return total


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="fewer turns/trials (smoke run)")
    ap.add_argument(
        "--only", default="setup,baseline,v2v,rules,barge,load", help="comma-separated sections to run"
    )
    ap.add_argument("--spec-after-ms", type=int, default=None, help="PipelineConfig.spec_after_ms(_idle)")
    ap.add_argument("--stt-workers", type=int, default=None)
    ap.add_argument("--tts-workers", type=int, default=None)
    args = ap.parse_args()
    only = set(args.only.split(","))
    if args.spec_after_ms is not None:
        PIPELINE_OVERRIDES["spec_after_ms"] = PIPELINE_OVERRIDES["spec_after_ms_idle"] = args.spec_after_ms
    if args.quick:
        args.turns, args.calls = 6, 3
    print(f"load average at start: {os.getloadavg()}  (2 shared cores: figures are noisy under load)")

    t0 = time.perf_counter()
    cfg = RuntimeConfig()
    if args.stt_workers:
        cfg.stt_workers = args.stt_workers
    if args.tts_workers:
        cfg.tts_workers = args.tts_workers
    rt = VoiceRuntime(cfg)
    await rt.start()
    print(f"stt workers={cfg.stt_workers} threads={cfg.stt_threads}; tts workers={cfg.tts_workers}")
    took = time.perf_counter() - t0
    print(f"runtime cold start: {took:.2f} s  components(ms)={rt.start_ms}  tts={rt.local_tts().engine}")
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    worker_pids = list(getattr(rt.local_tts(), "worker_pids", []))
    wcpu0 = cpu_seconds(worker_pids)

    # Caller audio (flite kal/slt alternating, 8 kHz)
    voices = ["kal", "slt"]
    pool = [caller_speech(u, voices[i % 2]) for i, u in enumerate(UTTERANCES)]
    turns = [pool[i % len(pool)] for i in range(args.turns)]

    # --- setup with cached greeting
    tts = rt.local_tts()
    await rt.cache.get_or_make((tts.engine, tts.voice, 8000, GREETING), lambda: tts.synthesize(GREETING))
    setups = []
    for _ in range(5 if "setup" in only else 0):
        audio = FakeCallAudio()
        t_bridge = audio.clock_ms()
        task = asyncio.create_task(agent(rt, BenchResponder()).run(audio, CTX, RunReport()))
        first = await audio.wait_audio(0)
        setups.append(first.start_ms - t_bridge)
        audio.caller_hangup()
        await asyncio.wait_for(task, 5)
    if setups:
        print(summary("setup: bridged -> greeting audio", setups))

    if "baseline" in only:  # no models after the VAD
        base_stt = ScriptedSTT([UTTERANCES[i % len(UTTERANCES)] for i in range(100)], delay_s=0.0)
        b_v2v, _, _ = await conversation(rt, BaselineResponder(), turns[: max(6, args.turns // 2)], stt=base_stt)
        print(summary("baseline v2v (VAD + plumbing only)", b_v2v))

    if "v2v" in only:  # single call, uncached replies
        v2v, metrics, _ = await conversation(rt, BenchResponder(), turns, rng=random.Random(1))
        print(summary("voice-to-voice (Piper replies)", v2v))
        for key in ("transcript_ms", "stt_ms", "tts_first_ms", "first_audio_ms"):
            vals = [float(m[key]) for m in metrics if key in m]
            label = key if key in ("stt_ms", "tts_first_ms") else f"{key} (from VAD end)"
            print("   " + summary(label, vals))
        spec = sum(1 for m in metrics if m.get("speculative"))
        wasted = AGENTS[-1].stats["spec_wasted"]
        print(f"   speculative transcripts used: {spec}/{len(metrics)}, discarded (caller went on): {wasted}")

    if "rules" in only:  # the example workflow: 1 of 3 replies is a fixed (cached) text
        r_v2v, _ = await rules_conversation(rt)
        print(summary("voice-to-voice (rules workflow)", r_v2v))

    if "barge" in only:
        b = await barge_in_trials(rt, 3 if args.quick else 6)
        print(summary("barge-in: onset -> audio stopped", b))

    # --- concurrency
    async def one(i: int) -> list[float]:
        await asyncio.sleep(i * 0.7)
        rng = random.Random(100 + i)
        mine = [pool[(i + k) % len(pool)] for k in range(4 if not args.quick else 2)]
        got, _, _ = await conversation(rt, BenchResponder(), mine, rng=rng)
        return got

    if "load" in only:
        t_load = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(args.calls)))
        all_v2v = [x for r in results for x in r]
        took = time.perf_counter() - t_load
        print(summary(f"{args.calls} concurrent calls: v2v", all_v2v) + f"  ({took:.0f} s)")

    # --- resources
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    stats = rt.stats()
    main_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    wcpu = cpu_seconds(worker_pids) - wcpu0
    print(
        f"resources: platform RSS {stats.get('rss_mb', 0):.0f} MB (peak {stats['max_rss_mb']:.0f}), "
        f"piper worker RSS {stats.get('tts_worker_rss_mb')} MB; CPU s since warm: platform {main_cpu:.1f}, "
        f"piper {wcpu:.1f}"
    )
    print(f"load average at end: {os.getloadavg()}")
    print(
        "reference (offline-voice-stack.md §11, default pipecat via Asterisk): "
        "setup 796 ms, v2v p50 1054 ms, barge-in 523 ms"
    )
    await rt.close()


if __name__ == "__main__":
    asyncio.run(main())
