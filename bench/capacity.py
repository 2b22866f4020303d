"""Capacity of the media path through the real Asterisk: concurrent calls vs. quality and cost.

Usage (root; takes the Asterisk harness lock, waits if another session holds it):

    ~/.cache/vr3ai/venv/bin/python -m bench.capacity                 # ~4 min: 1, 25, 50, 75, 100 calls
    ~/.cache/vr3ai/venv/bin/python -m bench.capacity --quick         # <1 min: 1, 20 calls
    ~/.cache/vr3ai/venv/bin/python -m bench.capacity --steps 1,100,150 --step-seconds 30
    ~/.cache/vr3ai/venv/bin/python -m bench.capacity --agent voice   # the real offline voice agent

Set-up: Asterisk (tests/harness) + the platform in its own process (bench/platform_proc.py, agent
chosen by --agent) + this process as the load generator (bench/common.py: one asyncio loop, one
20 ms tick for all callers). Every caller is a chan_websocket leg originated into from-external/8000,
so each call takes the exact production path: StasisStart -> answer -> bridge -> externalMedia ->
our media WebSocket. A caller listens to the greeting, then says a short flite sentence, waits for
the reply, pauses 0.5-1.5 s, and so on.

Per step (N concurrent calls, measured over --step-seconds once all N are up):
  answered      calls whose caller received agent-side media
  underrun      calls with an audible hole: >= 40 ms of missing frames inside agent audio
  holes         missing-frame holes inside agent audio (count / total ms), and anywhere in the stream
  gap p99       arrival gap between frames at the callers (20 ms is perfect), pooled
  v2v           caller's last speech frame sent -> first agent audio frame received (p50/p95)
  CPU           ms of CPU per call-second: platform process (total, and without model inference),
                Asterisk, load generator
  RSS           platform process; MB per extra call = (RSS_N - RSS_1) / (N - 1)
  inside        media clock tick lateness p99/max, sessions' late ticks and skipped ms (the time
                Asterisk's queue for us ran dry, as the session's own model saw it)
  leftovers     Asterisk channels/bridges still there after every caller hung up
Baselines are from the same run: the 1-call step (voice-to-voice, CPU per call-second).
Prints figures; asserts nothing. Figures depend on what else runs on the 2 cores: load average is
printed per step.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    Caller,
    CallerFleet,
    ConnSampler,
    CpuProbe,
    Holes,
    PlatformProcess,
    analyse_stream,
    caller_sentences,
    child_pids,
    fmt,
    leftovers,
    loadavg,
    pct,
    rss_mb,
)
from tests.harness import AsteriskLab

# No pause inside them longer than 120 ms: the minimal agent ends a turn after 200 ms of silence, and
# a comma pause would make it answer mid-sentence.
SENTENCES = ("Can I book a table for two?", "Do you have anything tomorrow night?", "That sounds good to me.")
AUDIBLE_MS = 40.0


@dataclass
class StepResult:
    label: str
    calls: int
    seconds: float = 0.0
    originated: int = 0
    origin_errors: int = 0
    connected: int = 0
    answered: int = 0
    underrun_calls: int = 0
    holes_speech_n: int = 0
    holes_speech_ms: float = 0.0
    holes_any_n: int = 0
    holes_any_ms: float = 0.0
    quiet_runs_speech_n: int = 0
    gap_p99_ms: float = float("nan")
    gap_max_ms: float = float("nan")
    v2v_p50_ms: float = float("nan")
    v2v_p95_ms: float = float("nan")
    turns: int = 0
    missed_replies: int = 0
    greeting_p95_ms: float = float("nan")
    cpu_platform_ms: float = 0.0
    cpu_platform_sys_ms: float = 0.0
    cpu_inference_ms: float = 0.0
    cpu_asterisk_ms: float = 0.0
    cpu_loadgen_ms: float = 0.0
    rss_platform_mb: float = 0.0
    rss_loadgen_mb: float = 0.0
    clock_p99_ms: float | None = None
    clock_max_ms: float | None = None
    clock_late_ticks: int = 0
    sess_late_ticks: float = 0.0
    sess_skipped_ms: float = 0.0
    sess_with_skips: int = 0
    sess_max_send_gap_ms: float = 0.0
    frames_in_dropped: float = 0.0
    ari_conns_peak: int = 0
    gc_pauses: dict[str, Any] = field(default_factory=dict)
    resyncs: dict[str, Any] = field(default_factory=dict)
    loadgen_tick_p99_ms: float = float("nan")
    loadgen_stalls: int = 0
    platform_warnings: int = 0
    warning_samples: list[str] = field(default_factory=list)
    leftover_channels: list[str] = field(default_factory=list)
    leftover_bridges: list[str] = field(default_factory=list)
    runs: dict[str, int] = field(default_factory=dict)
    end_reasons: dict[str, int] = field(default_factory=dict)
    threads_ms: dict[str, float] = field(default_factory=dict)
    stages: dict[str, list[float]] = field(default_factory=dict)
    load: str = ""
    tick_cpu_ms: dict[str, float] = field(default_factory=dict)
    """CPU of the platform's loop thread inside the media clock's ticks ("tick"), and of it in the
    io_uring send ("ring_flush") and in the tick reads with the session and agent work on each
    frame read ("tick_reads")."""
    ab: list[dict[str, Any]] = field(default_factory=list)
    """``--ab``: one entry per window of the last step, the knob on or off."""

    def per_call_s(self, ms: float) -> float:
        return ms / max(1e-9, self.calls * self.seconds)

    @property
    def starved(self) -> bool:
        """The platform could not keep up (its media clock ran > 2 ticks late at p99, or it dropped
        caller audio): its CPU figures then show what it got, not what it needed."""
        return (self.clock_p99_ms or 0.0) > 40.0 or self.frames_in_dropped > 0


async def measure_idle(lab: AsteriskLab, plat: PlatformProcess, seconds: float) -> dict[str, float]:
    """CPU ms per second with the platform up and no call: the fixed cost every step includes."""
    pids: dict[str, int | str] = {"platform": plat.pid, "loadgen": "self"}
    if lab.pid:
        pids["asterisk"] = lab.pid
    await plat.command("mark")
    probe = CpuProbe(pids)
    probe.start()
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    used = probe.stop()
    inside = await plat.command("stats")
    dt = time.monotonic() - t0
    out = {k: v / dt for k, v in used.items()}
    out["threads"] = inside.get("threads_ms", {})  # type: ignore[assignment]
    return out


def _heard(c: Caller, t0: float, t1: float) -> Holes:
    """What caller ``c`` heard of the agent between ``t0`` and ``t1``."""
    times = np.frombuffer(c.rx_t, dtype=np.float64)
    return analyse_stream(times, np.frombuffer(bytes(c.rx_loud), dtype=np.uint8), t0, t1)


def _audible(h: Holes, agent: str) -> bool:
    """An audible underrun: a hole in speech of two frames (less the slack), or, with the minimal
    agent (whose audio has no pauses of its own), a quiet run in its speech of two frames."""
    if any(x >= AUDIBLE_MS - 8 for x in h.holes_in_speech_ms):
        return True
    return agent == "minimal" and any(x >= AUDIBLE_MS for x in h.quiet_runs_in_speech_ms)


def _preemptions(pid: int) -> int:
    """Involuntary context switches of every thread of ``pid`` so far."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


async def ab_windows(
    plat: PlatformProcess, pids: dict[str, int | str], callers: list[Caller], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The same calls, the knob switched on and off in the platform every window (on, off, off,
    on, on, off, ...: drift of the shared box cancels out), CPU per call-second of each window.
    Between two processes started one after the other the box moves more than most changes are
    worth; inside one process, with the same calls up, it does not."""
    out: list[dict[str, Any]] = []
    n = len(callers)
    for i in range(2 * args.ab_windows):
        on = (i % 4) in (0, 3)
        await plat.command(f"ab {args.ab} {'on' if on else 'off'}")
        await asyncio.sleep(1.0)  # settle: the switch takes effect on the next tick
        probe = CpuProbe(pids)
        cs0 = _preemptions(plat.pid)
        await plat.command("clock")  # resets the platform's tick-lateness record
        probe.start()
        t0 = time.monotonic()
        await asyncio.sleep(args.ab_seconds)
        used = probe.stop()
        t1 = time.monotonic()
        dt = t1 - t0
        cs1 = _preemptions(plat.pid)
        clock = await plat.command("clock")
        plat_ms = used["platform"]
        holes = underruns = 0
        v2v = [(b - a) * 1000 for c in callers for a, b in c.turns if t0 <= a <= t1]
        for c in callers:
            h = _heard(c, t0, t1)
            holes += len(h.holes_in_speech_ms)
            underruns += _audible(h, args.agent)
        out.append(
            {
                "on": on,
                "holes_in_speech": holes,
                "underrun_calls": underruns,
                "clock_p99_ms": clock.get("p99_ms") or 0.0,
                "v2v_p50_ms": pct(v2v, 50) if v2v else float("nan"),
                "platform": plat_ms / dt / n,
                "sys_pct": 100 * probe.sys_ms.get("platform", 0.0) / max(1e-9, plat_ms),
                "asterisk": used.get("asterisk", 0.0) / dt / n,
                "preempt_per_s": (cs1 - cs0) / dt,
            }
        )
    await plat.command(f"ab {args.ab} on")
    return out


def print_ab(r: StepResult, knob: str) -> None:
    if not r.ab:
        return
    print(f"\n== A/B of '{knob}' at {r.calls} calls, inside one platform process ({len(r.ab)} windows) ==")
    print(
        f"{'window':>6} {'knob':>4} {'platform':>9} {'sys%':>5} {'asterisk':>9} {'preempt/s':>10} "
        f"{'clock p99':>9} {'holes in speech':>15} {'underrun calls':>14} {'v2v p50':>8}"
    )
    for i, w in enumerate(r.ab):
        print(
            f"{i + 1:>6} {'on' if w['on'] else 'off':>4} {w['platform']:>9.2f} {w['sys_pct']:>5.0f} "
            f"{w['asterisk']:>9.2f} {w['preempt_per_s']:>10.0f} {w['clock_p99_ms']:>9.1f} "
            f"{w['holes_in_speech']:>15} {w['underrun_calls']:>14} {w['v2v_p50_ms']:>8.0f}"
        )
    on = [w for w in r.ab if w["on"]]
    off = [w for w in r.ab if not w["on"]]
    names = {
        "platform": "platform ms/call-s",
        "asterisk": "Asterisk ms/call-s",
        "preempt_per_s": "preemptions/s",
        "clock_p99_ms": "clock p99 ms late",
        "holes_in_speech": "holes in speech per window",
        "underrun_calls": "calls with an audible underrun per window",
        "v2v_p50_ms": "voice-to-voice p50 ms",
    }
    for key, name in names.items():
        a = float(np.mean([w[key] for w in on]))
        b = float(np.mean([w[key] for w in off]))
        print(f"  {name}: on {a:.2f}, off {b:.2f}  (on/off x{a / max(1e-9, b):.2f})")


async def run_step(
    lab: AsteriskLab,
    plat: PlatformProcess,
    fleet: CallerFleet,
    n: int,
    seconds: float,
    args: argparse.Namespace,
    label: str,
) -> StepResult:
    res = StepResult(label=label, calls=n)
    res.load = loadavg()
    fleet.tick_lateness_ms.clear()
    stalls0 = fleet.stalls
    conns = ConnSampler(plat.pid, lab.ari_port)
    conns.start()
    callers: list[Caller] = []
    tasks = []
    # Spread arrivals: a real ramp, and N calls in lock-step would make every greeting and turn
    # coincide, which is a different (worse) load than N independent callers.
    for _ in range(n):
        tasks.append(asyncio.create_task(fleet.originate()))
        await asyncio.sleep(1.0 / args.ramp_rate)
    callers = list(await asyncio.gather(*tasks))
    res.originated = n
    res.origin_errors = sum(1 for c in callers if c.origin_error)
    ok = [c for c in callers if not c.origin_error]
    await fleet.wait(lambda: all(c.answered_at is not None or c.closed_at is not None for c in ok), 15.0)
    await asyncio.sleep(1.0)  # every call past its first frames before the window opens

    pids: dict[str, int | str] = {"platform": plat.pid, "loadgen": "self"}
    if lab.pid:
        pids["asterisk"] = lab.pid
    for i, cp in enumerate(child_pids(plat.pid)):
        pids[f"child{i}"] = cp
    probe = CpuProbe(pids)
    await plat.command("mark")
    probe.start()
    w0 = time.monotonic()
    await asyncio.sleep(seconds)
    used = probe.stop()
    w1 = time.monotonic()
    inside = await plat.command("stats")
    res.seconds = w1 - w0
    if args.ab and n == max(int(x) for x in args.steps.split(",") if x.strip()):
        res.ab = await ab_windows(plat, pids, [c for c in callers if not c.origin_error], args)
    res.rss_platform_mb = inside["rss_mb"]
    res.rss_loadgen_mb = rss_mb()
    tick = np.asarray(fleet.tick_lateness_ms[-int(seconds / 0.02) :] or [0.0])
    res.loadgen_tick_p99_ms = pct(tick, 99)
    res.loadgen_stalls = fleet.stalls - stalls0

    # Hang everybody up, then check what Asterisk and the platform kept.
    await fleet.hangup(callers)
    await fleet.wait(lambda: all(c.closed_at is not None for c in ok), 10.0)
    res.leftover_channels, res.leftover_bridges = await leftovers(lab)
    res.ari_conns_peak = await conns.stop()

    res.connected = sum(1 for c in ok if c.connected_at is not None)
    res.answered = sum(1 for c in ok if c.answered_at is not None)
    gaps: list[np.ndarray] = []
    v2v: list[float] = []
    greet: list[float] = []
    for c in ok:
        h = _heard(c, w0, w1)
        gaps.append(h.gaps_ms)
        res.holes_speech_n += len(h.holes_in_speech_ms)
        res.holes_speech_ms += sum(h.holes_in_speech_ms)
        res.holes_any_n += len(h.holes_any_ms)
        res.holes_any_ms += sum(h.holes_any_ms)
        res.quiet_runs_speech_n += len(h.quiet_runs_in_speech_ms) if args.agent == "minimal" else 0
        if _audible(h, args.agent):
            res.underrun_calls += 1
        turns = [(a, b) for a, b in c.turns if w0 <= a <= w1]
        res.turns += len(turns)
        v2v += [(b - a) * 1000 for a, b in turns]
        res.missed_replies += c.missed_replies
        if c.greeting_at is not None:
            greet.append((c.greeting_at - c.originated_at) * 1000)
    allgaps = np.concatenate(gaps) if gaps else np.zeros(0)
    res.gap_p99_ms = pct(allgaps, 99)
    res.gap_max_ms = float(allgaps.max()) if allgaps.size else float("nan")
    res.v2v_p50_ms = pct(v2v, 50)
    res.v2v_p95_ms = pct(v2v, 95)
    res.greeting_p95_ms = pct(greet, 95)

    th = inside.get("threads_ms", {})
    res.threads_ms = th
    res.tick_cpu_ms = dict(inside.get("tick_cpu_ms", {}))
    res.cpu_platform_ms = used["platform"]
    res.cpu_platform_sys_ms = probe.sys_ms.get("platform", 0.0)
    res.cpu_asterisk_ms = used.get("asterisk", 0.0)
    res.cpu_loadgen_ms = used["loadgen"]
    children = sum(v for k, v in used.items() if k.startswith("child"))
    if args.agent == "voice":
        # Inference: Whisper's pool, native (CTranslate2/ORT) threads, Silero on the loop, TTS workers.
        infer_threads = sum(v for k, v in th.items() if k.startswith("whisper") or k == "native")
        res.cpu_inference_ms = infer_threads + inside.get("vad_infer_ms", 0.0) + children
        res.cpu_platform_ms += children
    clock = inside.get("clock", {})
    res.clock_p99_ms = clock.get("lateness_p99_ms")
    res.clock_max_ms = clock.get("lateness_max_ms")
    res.clock_late_ticks = clock.get("late_ticks", 0)
    media = inside.get("media", {})
    res.sess_late_ticks = media.get("late_ticks", 0)
    res.sess_skipped_ms = media.get("skipped_ms", 0.0)
    res.sess_with_skips = media.get("sessions_with_skipped_ms", 0)
    res.sess_max_send_gap_ms = media.get("max_send_gap_ms", 0.0)
    res.frames_in_dropped = media.get("frames_in_dropped", 0)
    res.resyncs = inside.get("resyncs", {})
    res.gc_pauses = inside.get("gc_pauses", {})
    res.platform_warnings = inside.get("warnings", 0)
    res.warning_samples = inside.get("warning_samples", [])

    # Runs of this step must all be final, and "caller hung up" is the only expected ending.
    ids = {c.channel_id for c in ok}
    deadline = time.monotonic() + 20
    mine: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        mine = [r for r in await plat.runs() if r.get("context", {}).get("call_id") in ids]
        if len(mine) >= res.connected and all(r["status"] not in ("queued", "ringing", "running") for r in mine):
            break
        await asyncio.sleep(0.25)
    for r in mine:
        res.runs[r["status"]] = res.runs.get(r["status"], 0) + 1
        reason = str(r.get("end_reason"))
        res.end_reasons[reason] = res.end_reasons.get(reason, 0) + 1
        if args.agent == "voice":
            # Where the time of each turn went, as the agent measured it (its per-turn metrics).
            for m in (await plat.run_detail(r["id"])).get("metrics", []):
                if not isinstance(m, dict) or m.get("kind") != "speech" or "v2v_ms" not in m:
                    continue
                parts = {
                    "vad stop": m["vad_end_ms"] - m["speech_end_ms"],
                    "stt": m.get("stt_ms"),
                    "vad end -> transcript": m.get("transcript_ms"),
                    "vad end -> first audio": m.get("first_audio_ms"),
                    "tts first chunk": m.get("tts_first_ms"),
                    "v2v (agent clock)": m.get("v2v_ms"),
                }
                for k, v in parts.items():
                    if isinstance(v, int | float):
                        res.stages.setdefault(k, []).append(float(v))
    fleet.live = [c for c in fleet.live if c.closed_at is None]
    return res


def print_tables(results: list[StepResult], agent: str, idle: dict[str, Any]) -> None:
    base = results[0] if results and results[0].calls == 1 else None
    print("\n== media quality (at the callers) ==")
    hdr = (
        f"{'step':>10} {'calls':>5} {'answ':>5} {'underrun':>8} {'holes in speech':>16} {'holes any':>10} "
        f"{'gap p99/max ms':>15} {'v2v p50/p95 ms':>15} {'dv2v p50':>8} {'turns':>6} {'miss':>4} {'load':>15}"
    )
    print(hdr)
    for r in results:
        dv = r.v2v_p50_ms - base.v2v_p50_ms if base else float("nan")
        print(
            f"{r.label:>10} {r.calls:>5} {r.answered:>5} {r.underrun_calls:>8} "
            f"{f'{r.holes_speech_n}/{r.holes_speech_ms:.0f}ms':>16} {f'{r.holes_any_n}/{r.holes_any_ms:.0f}ms':>10} "
            f"{f'{fmt(r.gap_p99_ms)}/{fmt(r.gap_max_ms, 0)}':>15} "
            f"{f'{fmt(r.v2v_p50_ms, 0)}/{fmt(r.v2v_p95_ms, 0)}':>15} {fmt(dv, 0):>8} {r.turns:>6} "
            f"{r.missed_replies:>4} {r.load:>15}"
        )
    print("\n== cost (CPU ms per call-second; RSS) ==")
    print(
        f"idle (no call): platform {idle.get('platform', 0):.1f} ms/s, Asterisk {idle.get('asterisk', 0):.1f} ms/s, "
        f"load generator {idle.get('loadgen', 0):.1f} ms/s; 'marg.' columns subtract these"
    )
    print(
        f"{'step':>10} {'calls':>5} {'platform':>8} {'plumbing':>8} {'marg.':>6} {'x base':>6} {'asterisk':>8} "
        f"{'marg.':>6} {'loadgen':>7} {'slope':>6} {'sys%':>4} "
        f"{'total %cpu':>10} {'RSS MB':>7} {'MB/call':>7} {'clock p99/max':>14} {'skipped':>14} "
        f"{'sendgap':>7} {'ARI conns':>9} {'leftover':>8} {'warn':>4}"
    )
    prev: StepResult | None = None
    for r in results:
        plumbing = r.per_call_s(r.cpu_platform_ms - r.cpu_inference_ms)
        # Marginal cost of one more call between this step and the previous one (rates per second):
        # free of the fixed per-process and per-wake-up costs that dominate small steps.
        slope = float("nan")
        if prev is not None and r.calls > prev.calls and r.label == str(r.calls) and not r.starved:
            rate = (r.cpu_platform_ms - r.cpu_inference_ms) / r.seconds
            prate = (prev.cpu_platform_ms - prev.cpu_inference_ms) / prev.seconds
            slope = (rate - prate) / (r.calls - prev.calls)
        if r.label == str(r.calls):
            prev = r
        sys_pct = 100 * r.cpu_platform_sys_ms / max(1e-9, r.cpu_platform_ms)
        bplumb = base.per_call_s(base.cpu_platform_ms - base.cpu_inference_ms) if base else float("nan")
        per_mb = (r.rss_platform_mb - base.rss_platform_mb) / (r.calls - 1) if base and r.calls > 1 else float("nan")
        total_pct = (r.cpu_platform_ms + r.cpu_asterisk_ms + r.cpu_loadgen_ms) / max(1e-9, r.seconds) / 10
        skipped = f"{r.sess_skipped_ms:.0f}ms/{r.sess_with_skips}c"
        marg = r.per_call_s(r.cpu_platform_ms - r.cpu_inference_ms - idle.get("platform", 0.0) * r.seconds)
        amarg = r.per_call_s(r.cpu_asterisk_ms - idle.get("asterisk", 0.0) * r.seconds)
        star = "*" if r.starved else " "
        print(
            f"{r.label:>10} {r.calls:>5} {fmt(r.per_call_s(r.cpu_platform_ms), 2):>7}{star} {fmt(plumbing, 2):>8} "
            f"{fmt(marg, 2):>6} {fmt(plumbing / bplumb if bplumb else float('nan'), 2):>6} "
            f"{fmt(r.per_call_s(r.cpu_asterisk_ms), 2):>8} {fmt(amarg, 2):>6} "
            f"{fmt(r.per_call_s(r.cpu_loadgen_ms), 2):>7} {fmt(slope, 2):>6} {fmt(sys_pct, 0):>4} "
            f"{fmt(total_pct, 0):>10} {fmt(r.rss_platform_mb, 0):>7} {fmt(per_mb, 2):>7} "
            f"{f'{fmt(r.clock_p99_ms)}/{fmt(r.clock_max_ms)}':>14} {skipped:>14} "
            f"{fmt(r.sess_max_send_gap_ms, 0):>7} {r.ari_conns_peak:>9} "
            f"{len(r.leftover_channels) + len(r.leftover_bridges):>8} "
            f"{r.platform_warnings:>4}"
        )
    print(
        "\n(platform = our process incl. TTS workers; plumbing = platform minus model inference"
        + (" (= platform: no models)" if agent == "minimal" else "")
        + "; * = platform starved: media clock p99 > 40 ms late or caller audio dropped, so its CPU figures"
        " show what it got, not what it needed; slope skips starved steps)"
    )
    for r in results:
        extra = []
        if r.origin_errors or r.connected < r.calls - r.origin_errors:
            extra.append(f"originate errors {r.origin_errors}, connected {r.connected}")
        if r.runs and set(r.runs) != {"completed"}:
            extra.append(f"runs {r.runs}")
        if set(r.end_reasons) - {"caller hung up"}:
            extra.append(f"end reasons {r.end_reasons}")
        if r.leftover_channels or r.leftover_bridges:
            extra.append(f"LEFTOVERS channels {r.leftover_channels[:5]} bridges {r.leftover_bridges[:5]}")
        if r.loadgen_stalls or r.loadgen_tick_p99_ms > 10:
            extra.append(f"load generator tick p99 {r.loadgen_tick_p99_ms:.1f} ms, stalls {r.loadgen_stalls}")
        if r.frames_in_dropped:
            extra.append(f"caller frames dropped in the platform {r.frames_in_dropped:.0f}")
        if r.quiet_runs_speech_n:
            extra.append(f"silent runs inside agent audio {r.quiet_runs_speech_n}")
        rs = r.resyncs
        later = sum(v.get("later", 0) for v in rs.values())
        if later or any(v.get("earlier", 0) for v in rs.values()):
            extra.append(
                "play-out model re-anchored: "
                + ", ".join(
                    f"{k} later {v['later']} (p50 {fmt(v['later_p50_ms'], 0)}, max {fmt(v['later_max_ms'], 0)} ms) "
                    f"earlier {v['earlier']}"
                    for k, v in rs.items()
                )
            )
        if r.stages:
            extra.append(
                "voice stages p50/p95 ms: "
                + ", ".join(f"{k} {fmt(pct(v, 50), 0)}/{fmt(pct(v, 95), 0)}" for k, v in r.stages.items())
            )
        g2 = r.gc_pauses.get("gen2", {})
        if r.gc_pauses.get("forced_full_ms") is not None:
            extra.append(
                f"a forced full GC after the window took {r.gc_pauses['forced_full_ms']} ms "
                f"({r.gc_pauses.get('forced_full_cpu_ms')} ms CPU, "
                f"{r.gc_pauses.get('tracked_objects')} tracked objects)"
            )
        if g2.get("n"):
            extra.append(
                f"full GC (gen 2) {g2['n']}x, longest pause {fmt(g2.get('max_ms'), 0)} ms "
                f"({r.gc_pauses.get('tracked_objects', '?')} tracked objects)"
            )
        if r.warning_samples and r.platform_warnings:
            extra.append(f"platform warnings e.g. {r.warning_samples[:3]}")
        if extra:
            print(f"  {r.label}: " + "; ".join(extra))
    top = max(results, key=lambda r: r.calls, default=None)
    if top is not None:
        busy = sorted(((k, v / top.seconds) for k, v in top.threads_ms.items()), key=lambda kv: -kv[1])
        th = ", ".join(f"{k} {v:.0f}" for k, v in busy if v >= 1.0) or "-"
        print(f"  platform threads at {top.label} calls (CPU ms/s, >= 1): {th}")
        tc = top.tick_cpu_ms
        if tc.get("tick"):
            rest = tc["tick"] - tc.get("ring_flush", 0.0) - tc.get("tick_reads", 0.0)
            print(
                f"  where the platform's CPU went at {top.label} calls (ms per call-second): all "
                f"{top.per_call_s(top.cpu_platform_ms):.2f}; inside the media clock's ticks "
                f"{top.per_call_s(tc['tick']):.2f} = sessions' service {top.per_call_s(rest):.2f} + "
                f"io_uring send {top.per_call_s(tc.get('ring_flush', 0.0)):.2f} + tick reads with the "
                f"work on each frame read {top.per_call_s(tc.get('tick_reads', 0.0)):.2f}"
            )


def print_targets(results: list[StepResult], idle: dict[str, Any]) -> None:
    base = results[0] if results and results[0].calls == 1 else None
    at100 = next((r for r in results if r.calls == 100 and r.label == str(r.calls)), None)
    if base is None:
        return
    print("\n== against the issue's targets (figures, not assertions) ==")
    if at100 is not None:
        print(
            f"  100 calls, no audible underrun: {at100.underrun_calls} calls with one "
            f"({at100.answered}/{at100.calls} answered)"
        )
        print(
            f"  v2v within 50 ms of 1 call: p50 {fmt(at100.v2v_p50_ms, 0)} vs {fmt(base.v2v_p50_ms, 0)} ms "
            f"(+{fmt(at100.v2v_p50_ms - base.v2v_p50_ms, 0)}), p95 {fmt(at100.v2v_p95_ms, 0)} vs "
            f"{fmt(base.v2v_p95_ms, 0)} ms"
        )
    big = [r for r in results if r.calls > 1 and not r.starved and r.label == str(r.calls)]
    if big:
        top = max(big, key=lambda r: r.calls)
        print(f"  (cost figures from the largest step where the platform was not starved: {top.calls} calls)")
        plumb = top.per_call_s(top.cpu_platform_ms - top.cpu_inference_ms)
        mb = (top.rss_platform_mb - base.rss_platform_mb) / (top.calls - 1)
        marg = top.per_call_s(top.cpu_platform_ms - top.cpu_inference_ms - idle.get("platform", 0.0) * top.seconds)
        ramp = [r for r in results if r.label == str(r.calls) and not r.starved]
        slope = float("nan")
        if len(ramp) >= 2:
            a, b = ramp[-2], ramp[-1]
            ra = (a.cpu_platform_ms - a.cpu_inference_ms) / a.seconds
            rb = (b.cpu_platform_ms - b.cpu_inference_ms) / b.seconds
            slope = (rb - ra) / (b.calls - a.calls)
        print(
            f"  plumbing <= 3 ms CPU per call-second: {plumb:.2f} at {top.calls} calls "
            f"({marg:.2f} without the idle process cost; {fmt(slope, 2)} per extra call between the last two steps)"
        )
        print(f"  memory per extra call <= 5 MB: {mb:.2f} MB at {top.calls} calls")
        busy = (top.cpu_platform_ms + top.cpu_asterisk_ms + top.cpu_loadgen_ms) / max(1e-9, top.seconds) / 10
        cores = 100 * (os.cpu_count() or 1)
        if busy >= 0.85 * cores:
            # Seen on this 2-core box: at 181-186 % the platform's per-call figure stopped moving
            # with its own cost (A/B runs of a 22 % saving at 50 calls came out equal at 100).
            print(
                f"  caution: the three processes used {busy:.0f} % of {cores} % at {top.calls} calls; near "
                "saturation the platform gets what is left, so its CPU per call-second shows that, not its "
                "cost (compare a smaller step, or A/B runs interleaved)"
            )


def renice(value: int, lab: AsteriskLab, plat: PlatformProcess) -> None:
    if not value:
        return
    # Only processes this run started: Asterisk's whole process group, the platform, ourselves.
    pids = [plat.pid, os.getpid(), *([lab.pid] if lab.pid else [])]
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():  # every thread: nice is per thread on Linux
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, int(task.name), value)
    print(f"reniced to {value}: pids {pids}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", default="1,25,50,75,100", help="concurrent calls per step")
    ap.add_argument("--step-seconds", type=float, default=20.0)
    ap.add_argument("--baseline-seconds", type=float, default=30.0, help="window of the 1-call step")
    ap.add_argument("--ramp-rate", type=float, default=25.0, help="new calls per second within a step")
    ap.add_argument("--agent", choices=("minimal", "voice"), default="minimal")
    ap.add_argument(
        "--stall-ms",
        type=float,
        default=30.0,
        help="extra step: platform loop blocked this long every second (0: skip)",
    )
    ap.add_argument(
        "--stall-calls",
        type=int,
        default=25,
        help="calls in the stall step: a count the platform handles cleanly without stalls",
    )
    ap.add_argument("--quick", action="store_true", help="1 and 20 calls, 8 s each, no stall step")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    ap.add_argument("--keep", action="store_true", help="keep the data dir and platform log")
    ap.add_argument(
        "--no-resync",
        action="store_true",
        help="A/B experiment: the platform's sessions never re-anchor their play-out model",
    )
    ap.add_argument(
        "--media-asgi",
        action="store_true",
        help="A/B experiment: the platform serves the media socket through ASGI (before vr3ai.media.direct)",
    )
    ap.add_argument(
        "--gc-freeze",
        action="store_true",
        help="experiment: the platform calls gc.freeze() once up (full GCs skip start-up objects)",
    )
    ap.add_argument(
        "--tick-reads-from",
        type=int,
        default=None,
        help="A/B: the platform reads media sockets on the clock's tick from this many calls "
        "(default: VR3AI_MEDIA_TICK_READS_FROM's default; 0 = the event loop per frame, as before)",
    )
    ap.add_argument(
        "--ab",
        choices=["ring", "pairs", "tickreads"],
        help="A/B inside the last step: switch this mechanism on and off in the running platform "
        "(ring: io_uring batched sends, vr3ai.media.uring; pairs: two frames every other tick, "
        "MediaTuning.paired_sends_from; tickreads: sockets read by the clock's tick, vr3ai.media.tickread) "
        "and report CPU and quality per window",
    )
    ap.add_argument("--ab-windows", type=int, default=4, help="windows per state for --ab")
    ap.add_argument("--ab-seconds", type=float, default=8.0, help="seconds per --ab window")
    ap.add_argument(
        "--renice",
        type=int,
        default=0,
        help="nice value for Asterisk, the platform and this process (e.g. -5 on a box shared with "
        "other CPU-heavy work; default 0 leaves scheduling alone)",
    )
    args = ap.parse_args()
    if args.quick:
        args.steps, args.step_seconds, args.baseline_seconds, args.stall_ms = "1,20", 8.0, 8.0, 0.0
    steps = [int(x) for x in args.steps.split(",") if x.strip()]

    work = Path(tempfile.mkdtemp(prefix="vr3ai-capacity-"))
    clips = caller_sentences(SENTENCES)
    print(f"load average before: {loadavg()}  (2 cores shared with other sessions)")
    print(f"agent: {args.agent}; steps {steps}; {args.step_seconds:.0f} s per step; work dir {work}")
    results: list[StepResult] = []
    t_start = time.monotonic()
    async with AsteriskLab() as lab:
        await lab.warm_up()
        async with CallerFleet(lab, clips=clips) as fleet:
            plat_args = (["--no-resync"] if args.no_resync else []) + (["--gc-freeze"] if args.gc_freeze else [])
            plat_args += ["--media-asgi"] if args.media_asgi else []
            if args.tick_reads_from is not None:
                plat_args += ["--tick-reads-from", str(args.tick_reads_from)]
            plat = PlatformProcess(
                lab, agent=args.agent, data_dir=work / "data", log_path=work / "platform.log", extra_args=plat_args
            )
            info = await plat.start()
            print(f"platform pid {info['pid']} ready, RSS {info['rss_mb']} MB; Asterisk pid {lab.pid}")
            renice(args.renice, lab, plat)
            idle = await measure_idle(lab, plat, min(5.0, args.step_seconds))
            try:
                for n in steps:
                    secs = args.baseline_seconds if n == 1 else args.step_seconds
                    r = await run_step(lab, plat, fleet, n, secs, args, str(n))
                    results.append(r)
                    print(
                        f"  step {n:>3}: answered {r.answered}/{n}, underrun calls {r.underrun_calls}, "
                        f"v2v p50 {fmt(r.v2v_p50_ms, 0)} ms, platform {fmt(r.per_call_s(r.cpu_platform_ms), 2)} "
                        f"ms/call-s, leftovers {len(r.leftover_channels)}+{len(r.leftover_bridges)}, "
                        f"load {r.load}",
                        flush=True,
                    )
            finally:
                await plat.stop()
            if args.stall_ms > 0 and args.stall_calls > 0:
                plat = PlatformProcess(
                    lab,
                    agent=args.agent,
                    data_dir=work / "data-stall",
                    log_path=work / "platform-stall.log",
                    extra_args=[*plat_args, "--stall-ms", str(args.stall_ms), "--stall-every", "1.0"],
                )
                await plat.start()
                renice(args.renice, lab, plat)
                try:
                    label = f"{args.stall_calls}+st{args.stall_ms:.0f}"
                    r = await run_step(lab, plat, fleet, args.stall_calls, args.step_seconds, args, label)
                    results.append(r)
                    print(
                        f"  step {label}: loop blocked {args.stall_ms:.0f} ms every 1 s; underrun calls "
                        f"{r.underrun_calls}, holes in speech {r.holes_speech_n}, v2v p50 {fmt(r.v2v_p50_ms, 0)}"
                        f" ms",
                        flush=True,
                    )
                finally:
                    await plat.stop()
    print_tables(results, args.agent, idle)
    if args.ab and results:
        print_ab(results[-1] if not (args.stall_ms > 0 and args.stall_calls > 0) else results[-2], args.ab)
    print_targets(results, idle)
    print(f"\nload average after: {loadavg()}; wall time {time.monotonic() - t_start:.0f} s")
    if args.json:
        steps_out = [asdict(r) | {"starved": r.starved} for r in results]
        args.json.write_text(
            json.dumps({"idle_ms_per_s": idle, "load_after": loadavg(), "steps": steps_out}, indent=1, default=str)
        )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")


if __name__ == "__main__":
    asyncio.run(main())
