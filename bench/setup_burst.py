"""Call setup under a burst: N calls (default 50) arriving within one second, through the real Asterisk.

Usage (root; takes the Asterisk harness lock):

    ~/.cache/vr3ai/venv/bin/python -m bench.setup_burst            # 5 single calls, then 50 in 1 s, x2
    ~/.cache/vr3ai/venv/bin/python -m bench.setup_burst --quick    # 3 single calls, one burst of 20
    ~/.cache/vr3ai/venv/bin/python -m bench.setup_burst --calls 100 --spread-s 1 --rounds 1

Each caller is a chan_websocket leg (bench/common.py) originated into from-external/8000; the
platform runs in its own process with the minimal agent (greeting at once). The baseline is the
same measurement for calls placed one at a time, in the same run. Per call:

  originate -> media   ARI originate POST -> the caller's MEDIA_START (Asterisk has the call; the
                       platform's StasisStart handling starts about here)
  StasisStart -> media_connected / bridged
                       from the run's metrics (``call_timings_ms``, ms since the platform saw
                       StasisStart): our answer + bridge + externalMedia + media WebSocket, then
                       addChannel
  originate -> first audio
                       originate POST -> first greeting frame heard by the caller (what a person
                       perceives as "the bot answered")

Afterwards: every call must have been answered, every run must end "completed / caller hung up",
and Asterisk must have no channel or bridge left. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Caller, CallerFleet, ConnSampler, PlatformProcess, fmt, leftovers, loadavg, pct
from tests.harness import AsteriskLab


async def burst(
    lab: AsteriskLab, plat: PlatformProcess, fleet: CallerFleet, n: int, spread_s: float, hold_s: float
) -> dict[str, Any]:
    load = loadavg()
    await plat.command("mark")
    conns = ConnSampler(plat.pid, lab.ari_port)
    conns.start()
    tasks = []
    t0 = time.monotonic()
    for i in range(n):
        # Evenly spaced arrivals: "within one second" without the artificial lock-step of t=0.
        delay = t0 + i * spread_s / max(1, n) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fleet.originate(timeout_s=15)))
    callers: list[Caller] = list(await asyncio.gather(*tasks))
    arrival_s = time.monotonic() - t0
    ok = [c for c in callers if not c.origin_error]
    await fleet.wait(lambda: all(c.greeting_at is not None or c.closed_at is not None for c in ok), 20.0)
    await asyncio.sleep(max(0.0, hold_s - (time.monotonic() - t0)))
    await fleet.hangup(ok)
    await fleet.wait(lambda: all(c.closed_at is not None for c in ok), 10.0)
    chans, bridges = await leftovers(lab)
    ari_peak = await conns.stop()

    ids = {c.channel_id: c for c in ok}
    runs: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        runs = [r for r in await plat.runs() if r.get("context", {}).get("call_id") in ids]
        if len(runs) >= len(ok) and all(r["status"] not in ("queued", "ringing", "running") for r in runs):
            break
        await asyncio.sleep(0.25)
    media_ms: list[float] = []
    bridged_ms: list[float] = []
    statuses: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for r in runs:
        detail = await plat.run_detail(r["id"])
        statuses[detail["status"]] = statuses.get(detail["status"], 0) + 1
        reasons[str(detail.get("end_reason"))] = reasons.get(str(detail.get("end_reason")), 0) + 1
        for m in detail.get("metrics", []):
            if isinstance(m, dict) and "call_timings_ms" in m:
                t = m["call_timings_ms"]
                if "media_connected" in t:
                    media_ms.append(float(t["media_connected"]))
                if "bridged" in t:
                    bridged_ms.append(float(t["bridged"]))
    connect = [(c.connected_at - c.originated_at) * 1000 for c in ok if c.connected_at is not None]
    first = [(c.greeting_at - c.originated_at) * 1000 for c in ok if c.greeting_at is not None]
    fleet.live = [c for c in fleet.live if c.closed_at is None]
    inside = await plat.command("stats")
    return {
        "db_ms": inside.get("db_ms", {}),
        "clock_max_ms": inside.get("clock", {}).get("lateness_max_ms"),
        "n": n,
        "arrival_s": arrival_s,
        "origin_errors": len(callers) - len(ok),
        "connected": len(connect),
        "answered": len(first),
        "connect": connect,
        "media": media_ms,
        "bridged": bridged_ms,
        "first": first,
        "runs": statuses,
        "reasons": reasons,
        "leftover_channels": chans,
        "leftover_bridges": bridges,
        "load": load,
        "ari_conns": ari_peak,
    }


def row(label: str, r: dict[str, Any], base: dict[str, Any] | None) -> str:
    def p(key: str, q: float) -> str:
        return fmt(pct(r[key], q), 0)

    ratio = "-"
    if base is not None and base["first"] and r["first"]:
        ratio = f"{pct(r['first'], 95) / max(1e-9, pct(base['first'], 95)):.1f}x"
    left = len(r["leftover_channels"]) + len(r["leftover_bridges"])
    ari = r["ari_conns"]
    return (
        f"{label:>12} {r['n']:>5} {r['arrival_s']:>6.2f} {r['answered']:>4}/{r['n']:<4} "
        f"{p('connect', 50):>6}/{p('connect', 95):<6} {p('media', 50):>6}/{p('media', 95):<6} "
        f"{p('bridged', 50):>6}/{p('bridged', 95):<6} {p('first', 50):>6}/{p('first', 95):<6} "
        f"{fmt(max(r['first'], default=float('nan')), 0):>6} {ratio:>6} {ari:>5} {left:>8} {r['load']:>15}"
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--spread-s", type=float, default=1.0, help="arrivals spread evenly over this many seconds")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--singles", type=int, default=5, help="calls placed one at a time first (the baseline)")
    ap.add_argument("--hold-s", type=float, default=4.0, help="each burst's calls stay up this long")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.calls, args.rounds, args.singles, args.hold_s = 20, 1, 3, 3.0

    work = Path(tempfile.mkdtemp(prefix="vr3ai-burst-"))
    print(f"load average before: {loadavg()}  (2 cores shared with other sessions)")
    t_start = time.monotonic()
    results: list[tuple[str, dict[str, Any]]] = []
    async with AsteriskLab() as lab:
        await lab.warm_up()
        async with CallerFleet(lab, talk=False) as fleet:
            plat = PlatformProcess(lab, agent="minimal", data_dir=work / "data", log_path=work / "platform.log")
            info = await plat.start()
            print(f"platform pid {info['pid']} ready; Asterisk pid {lab.pid}")
            try:
                merged: dict[str, Any] | None = None
                for _ in range(args.singles):
                    r = await burst(lab, plat, fleet, 1, 0.0, 1.0)
                    if merged is None:
                        merged = r
                    else:
                        for k in ("connect", "media", "bridged", "first", "leftover_channels", "leftover_bridges"):
                            merged[k] = merged[k] + r[k]
                        merged["ari_conns"] = max(merged["ari_conns"], r["ari_conns"])
                        for k in ("answered", "connected", "origin_errors", "n"):
                            merged[k] += r[k]
                        for k in ("runs", "reasons"):
                            for kk, v in r[k].items():
                                merged[k][kk] = merged[k].get(kk, 0) + v
                assert merged is not None
                merged["arrival_s"] = 0.0
                results.append(("one at a time", merged))
                for i in range(args.rounds):
                    r = await burst(lab, plat, fleet, args.calls, args.spread_s, args.hold_s)
                    results.append((f"burst {i + 1}", r))
                    print(
                        f"  burst {i + 1}: {r['answered']}/{r['n']} answered, first audio p95 "
                        f"{fmt(pct(r['first'], 95), 0)} ms, load {r['load']}",
                        flush=True,
                    )
            finally:
                await plat.stop()
    base = results[0][1] if results else None
    print(f"\n== call setup, {args.calls} calls arriving within {args.spread_s:.1f} s (ms; p50/p95) ==")
    print(
        f"{'':>12} {'calls':>5} {'arr s':>6} {'answered':>9} {'orig->media':>13} {'Stasis->media':>13} "
        f"{'Stasis->bridge':>13} {'orig->1st audio':>13} {'max':>6} {'p95 x':>6} {'ARI':>5} {'leftover':>8} "
        f"{'load':>15}"
    )
    for label, r in results:
        print(row(label, r, base))
    print(
        "\n(orig->media: ARI originate -> caller's MEDIA_START; Stasis->*: the run's call_timings_ms;"
        " orig->1st audio: originate -> first greeting frame at the caller; p95 x: vs one at a time;"
        " ARI: peak HTTP connections of the platform to Asterisk)"
    )
    print("\ndatabase steps per call (ms, p50/p95/max), and the platform's media clock worst lateness:")
    for label, r in results:
        parts = [f"{k} {v['p50']:.0f}/{v['p95']:.0f}/{v['max']:.0f}" for k, v in sorted(r.get("db_ms", {}).items())]
        print(f"  {label}: " + ", ".join(parts) + f"; clock max {fmt(r.get('clock_max_ms'), 0)} ms")
    for label, r in results:
        notes = []
        if r["origin_errors"]:
            notes.append(f"originate errors {r['origin_errors']}")
        if set(r["runs"]) - {"completed"}:
            notes.append(f"runs {r['runs']}")
        if set(r["reasons"]) - {"caller hung up"}:
            notes.append(f"end reasons {r['reasons']}")
        if r["leftover_channels"] or r["leftover_bridges"]:
            notes.append(f"LEFTOVERS {r['leftover_channels'][:5]} {r['leftover_bridges'][:5]}")
        if notes:
            print(f"  {label}: " + "; ".join(notes))
    print(f"\nload average after: {loadavg()}; wall time {time.monotonic() - t_start:.0f} s")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")


if __name__ == "__main__":
    asyncio.run(main())
