"""Call setup and barge-in of the real voice agent, heard at the caller through the real Asterisk.

Usage (root; takes the Asterisk harness lock):

    ~/.cache/vr3ai/venv/bin/python -m bench.voice_latency            # ~3 min: 12 calls per figure
    ~/.cache/vr3ai/venv/bin/python -m bench.voice_latency --quick    # ~1 min: 4 calls per figure

Two figures of the voice issue that bench/capacity.py does not isolate, each printed next to the
same measurement for the model-free agent (bench/agents.py, MinimalAgent) on the same path in the
same run, which is the floor that Asterisk and our plumbing set:

  setup     caller leg connected (its MEDIA_START) -> first loud greeting frame at the caller.
            The caller is a chan_websocket leg originated into from-external/8000, whose dialplan
            runs Stasis(vr3ai) right after the leg is up, so this interval contains
            StasisStart -> first greeting audio and a little more (dialplan start): an upper bound
            of the target's interval. The greeting is in the TTS cache from the first call on: saving
            the workflow queued it for background synthesis (the platform reports how long that
            took, "warm"); the first call of the process is still shown apart. The run's own
            call_timings_ms (ms since the platform saw StasisStart) split ours: bridged = answer +
            bridge + externalMedia + media WebSocket + addChannel.
  barge-in  the caller starts a flite sentence over the agent's greeting (1.2-2.4 s into it) ->
            agent audio stops at the caller: the arrival time of the first quiet frame after the
            last loud one received while the caller is still speaking. If the agent never stops,
            the figure is the whole sentence (and is counted as "not stopped").
            Baseline: the minimal agent flushing on the first loud caller frame (no VAD wait):
            what is left is caller -> Asterisk -> our media socket -> FLUSH_MEDIA -> Asterisk ->
            caller, plus audio already in flight.
            The voice agent's own view (VAD onset clock -> flush) is in the run's metrics as
            ``barge_in_ms``; the rest is the path.

Calls are placed one at a time (no load from ourselves). Prints figures; asserts nothing. The
machine has 2 cores shared with other sessions: the load average is printed with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    FRAME_S,
    Caller,
    CallerFleet,
    PlatformProcess,
    caller_sentences,
    fmt,
    leftovers,
    loadavg,
    pct,
)
from tests.harness import AsteriskLab

# Long enough to barge into at any point of the 1.2-2.4 s window, with Piper's natural pauses.
LONG_GREETING = (
    "Hello, and thank you for calling the VR3 AI demonstration line. This call may be recorded. "
    "I can help you with orders, billing, opening hours and directions, so please tell me what you need."
)
# No commas: flite pauses at them, and the minimal agent's energy VAD would end the turn there.
BARGE_SENTENCES = ["Sorry to interrupt but I need to talk to someone about my bill", "Wait wait I have a question"]


def barge_figure(c: Caller) -> tuple[float | None, bool]:
    """(ms from the caller's speech onset to the agent audio stopping at the caller, stopped?)."""
    if c.barge_at is None or not c.rx_t:
        return None, False
    t = np.frombuffer(c.rx_t, dtype=np.float64)
    loud = np.frombuffer(bytes(c.rx_loud), dtype=np.uint8).astype(bool)
    onset = c.barge_at
    end = c.speech_end if c.speech_end > onset else onset + 3.0
    window = (t >= onset) & (t <= end)
    if not (loud & (t >= onset - 0.3) & (t < onset)).any():
        return None, False  # the agent was not talking when the caller started: not a barge-in
    talking = np.nonzero(window & loud)[0]
    if talking.size == 0:
        first_after = np.nonzero(t >= onset)[0]
        return ((t[first_after[0]] - onset) * 1000 if first_after.size else None), True
    last = int(talking[-1])
    stopped = t[last] + FRAME_S < end  # quiet from here until the caller's speech ended
    stop_t = t[last + 1] if last + 1 < t.size else t[last] + FRAME_S
    return (stop_t - onset) * 1000, bool(stopped)


async def run_calls(
    lab: AsteriskLab,
    plat: PlatformProcess,
    fleet: CallerFleet,
    n: int,
    *,
    barge: bool,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _ in range(n):
        fleet.barge_after_s = random.uniform(1.2, 2.4) if barge else None
        load = loadavg()
        c = await fleet.originate(timeout_s=15)
        if c.origin_error:
            out.append({"error": c.origin_error, "load": load})
            continue
        if barge:
            await fleet.wait(lambda c=c: bool(c.turns) or c.closed_at is not None, 20.0)
        else:
            await fleet.wait(lambda c=c: c.greeting_at is not None or c.closed_at is not None, 15.0)
            await asyncio.sleep(0.2)
        await fleet.hangup([c])
        await fleet.wait(lambda c=c: c.closed_at is not None, 10.0)
        fleet.live = [x for x in fleet.live if x.closed_at is None]
        rec: dict[str, Any] = {"load": load, "channel_id": c.channel_id}
        if c.connected_at is not None and c.greeting_at is not None:
            rec["setup_ms"] = (c.greeting_at - c.connected_at) * 1000
            rec["orig_ms"] = (c.greeting_at - c.originated_at) * 1000
        if barge:
            ms, stopped = barge_figure(c)
            rec["barge_ms"], rec["stopped"] = ms, stopped
            if c.turns:
                rec["v2v_ms"] = (c.turns[0][1] - c.turns[0][0]) * 1000
        out.append(rec)
        await asyncio.sleep(0.3)
    # The platform's side of each call, from the run it stored.
    ids = {r["channel_id"]: r for r in out if "channel_id" in r}
    deadline = time.monotonic() + 20
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        runs = [r for r in await plat.runs() if r.get("context", {}).get("call_id") in ids]
        if len(runs) >= len(ids) and all(r["status"] not in ("queued", "ringing", "running") for r in runs):
            break
        await asyncio.sleep(0.25)
    for r in runs:
        detail = await plat.run_detail(r["id"])
        rec = ids[detail["context"]["call_id"]]
        rec["status"] = f"{detail['status']} / {detail.get('end_reason')}"
        for m in detail.get("metrics", []):
            if not isinstance(m, dict):
                continue
            if "call_timings_ms" in m:
                rec["bridged_ms"] = m["call_timings_ms"].get("bridged")
            if m.get("interrupted") and "barge_in_ms" in m and "agent_barge_ms" not in rec:
                rec["agent_barge_ms"] = m["barge_in_ms"]
    chans, bridges = await leftovers(lab)
    if chans or bridges:
        print(f"  LEFTOVERS in Asterisk: {chans[:5]} {bridges[:5]}", flush=True)
    return out


def col(recs: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in recs if r.get(key) is not None]


def line(label: str, values: list[float], base: list[float] | None, target: float | None, load: str) -> str:
    if not values:
        return f"{label:<34} (no samples)"
    p50, p95 = pct(values, 50), pct(values, 95)
    extra = ""
    if base:
        b50, b95 = pct(base, 50), pct(base, 95)
        extra = f"   baseline p50/p95 {fmt(b50, 0)}/{fmt(b95, 0)}  (+{p50 - b50:.0f} ms p50)"
    tgt = f"   target <= {target:.0f}: {'met' if p95 <= target else 'MISSED'} (p95)" if target else ""
    return (
        f"{label:<34} n={len(values):<3} p50 {fmt(p50, 0):>5}  p95 {fmt(p95, 0):>5}  max "
        f"{fmt(max(values), 0):>5}{extra}{tgt}   load {load}"
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=12, help="calls per figure and agent")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if args.quick:
        args.calls = 4
    random.seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix="vr3ai-voicelat-"))
    print(f"load average before: {loadavg()}  (2 cores shared with other sessions)", flush=True)
    t_start = time.monotonic()
    res: dict[str, dict[str, list[dict[str, Any]]]] = {}
    clips = caller_sentences(BARGE_SENTENCES)
    async with AsteriskLab() as lab:
        await lab.warm_up()
        async with CallerFleet(lab, clips=clips, talk=True, reply_timeout_s=6.0) as fleet:
            for agent, extra in (
                ("minimal", ["--greeting-s", "6", "--barge-in"]),
                ("voice", ["--greeting", LONG_GREETING]),
            ):
                plat = PlatformProcess(
                    lab,
                    agent=agent,
                    data_dir=work / agent / "data",
                    log_path=work / f"platform-{agent}.log",
                    extra_args=extra,
                )
                (work / agent).mkdir(parents=True, exist_ok=True)
                info = await plat.start()
                print(
                    f"{agent} agent: platform pid {info['pid']} ready (greeting pre-synthesised in "
                    f"{info.get('warm_s', 0):.2f} s)",
                    flush=True,
                )
                try:
                    setup = await run_calls(lab, plat, fleet, args.calls + (1 if agent == "voice" else 0), barge=False)
                    barge = await run_calls(lab, plat, fleet, args.calls, barge=True)
                finally:
                    await plat.stop()
                res[agent] = {"setup": setup, "barge": barge}
                print(
                    f"  {agent}: setup p50 {fmt(pct(col(setup, 'setup_ms'), 50), 0)} ms, barge-in p50 "
                    f"{fmt(pct(col(barge, 'barge_ms'), 50), 0)} ms",
                    flush=True,
                )
    base, voice = res["minimal"], res["voice"]
    cold, warm = voice["setup"][:1], voice["setup"][1:]

    def loads(recs: list[dict[str, Any]]) -> str:
        ls = sorted(float(r["load"].split()[0]) for r in recs if r.get("load"))
        return f"{ls[0]:.1f}-{ls[-1]:.1f}" if ls else "?"

    def show(label: str, recs: list[dict[str, Any]], key: str, base_recs: Any = None, target: Any = None) -> None:
        print(line(label, col(recs, key), col(base_recs, key) if base_recs else None, target, loads(recs)))

    print("\n== call setup: caller leg up (~StasisStart) -> first greeting audio at the caller (ms) ==")
    show("minimal agent (baseline)", base["setup"], "setup_ms")
    show("voice agent, cached greeting", warm, "setup_ms", base["setup"], 150)
    show("voice agent, first call of the process", cold, "setup_ms")
    show("  of which StasisStart -> bridged", warm, "bridged_ms", base["setup"])
    show("  originate -> first greeting audio", warm, "orig_ms", base["setup"])

    print("\n== barge-in: caller speech onset -> agent audio stops at the caller (ms) ==")
    show("minimal agent, 1-frame flush (floor)", base["barge"], "barge_ms")
    show("voice agent (Silero VAD onset)", voice["barge"], "barge_ms", base["barge"], 300)
    show("  agent's own view: VAD onset -> flush", voice["barge"], "agent_barge_ms")
    show("  then v2v of the interrupting turn", voice["barge"], "v2v_ms", base["barge"])
    for agent, r in res.items():
        problems = []
        nb = [x for x in r["barge"] if x.get("barge_ms") is None]
        ns = [x for x in r["barge"] if x.get("barge_ms") is not None and not x.get("stopped")]
        errs = [x for x in r["setup"] + r["barge"] if "error" in x]
        bad = {x.get("status") for x in r["setup"] + r["barge"]} - {"completed / caller hung up", None}
        if nb:
            problems.append(f"{len(nb)} barge-in attempts not measurable (agent silent at onset or no audio)")
        if ns:
            problems.append(f"{len(ns)} calls where the agent did NOT stop while the caller spoke")
        if errs:
            problems.append(f"originate errors: {[x['error'] for x in errs][:3]}")
        if bad:
            problems.append(f"run outcomes: {sorted(str(b) for b in bad)}")
        if problems:
            print(f"  {agent}: " + "; ".join(problems))
    print(f"\nload average after: {loadavg()}; wall time {time.monotonic() - t_start:.0f} s")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
