"""The platform under test, alone in its own process, for the load benchmarks.

Runs the whole platform in-process (``tests.integration.platform.running_platform``: uvicorn, API,
media WebSocket, ARI listener) on ``--port`` (where Asterisk's ``vr3ai`` websocket_client dials),
creates an inbound workflow + configuration + number ``8000`` and prints one JSON line
``{"event": "ready", ...}``. Then it answers commands, one per stdin line, with one JSON line each:

* ``mark``   start a measurement window (per-thread CPU, media clock and session counters)
* ``stats``  what happened since ``mark`` (see :func:`_stats`)
* ``quit``   stop (also on EOF)

Why a separate process: the brief asks for CPU per call-second *of our process*; with the load
generator in the same process that figure would be meaningless. Why the JSON pipe: the numbers we
want (media clock lateness, per-session late ticks and skipped ms) only exist inside.

``--agent minimal`` is bench/agents.py's model-free greeting + reply agent; ``--agent voice`` the real
offline voice agent (``vr3ai.agent.factory``, imported only then). ``--stall-ms X --stall-every S``
blocks the event loop for X ms every S s (a GC pause, a CPU-heavy callback) to check that pacing
absorbs a late tick.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.agents import MinimalAgentFactory, voice_workflow
from tests.integration.platform import running_platform
from vr3ai.media.engine import MediaTuning

REPO = Path(__file__).resolve().parents[1]

CLK_TCK = os.sysconf("SC_CLK_TCK")

MINIMAL_WORKFLOW: dict[str, Any] = {
    "nodes": [
        {"id": "start", "type": "start", "greeting": "Hello from VR3 AI."},
        {"id": "bye", "type": "end", "say": "Goodbye."},
    ],
    "edges": [{"id": "e1", "from": "start", "to": "bye", "keywords": ["bye"]}],
}


class WarningCounter(logging.Handler):
    """Counts WARNING+ records by logger and keeps the first few texts: problems under load show up
    here before they show up anywhere else."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.levelname} {record.name}: {record.msg}"[:160]
        self.counts[key] += 1
        if len(self.samples) < 20 and self.counts[key] == 1:
            with contextlib.suppress(Exception):
                self.samples.append(f"{record.levelname} {record.name}: {record.getMessage()}"[:300])


def thread_cpu_ms() -> dict[str, float]:
    """CPU ms per live thread of this process, by Python thread name (``native`` = threads Python
    does not know, e.g. CTranslate2's pool)."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            raw = (task / "stat").read_text()
            f = raw[raw.rindex(")") + 2 :].split()
            ms = (int(f[11]) + int(f[12])) * 1000.0 / CLK_TCK
            tid = int(task.name)
            name = "loop" if tid == os.getpid() else names.get(tid, "native")
            # Pool threads are numbered (whisper_0, asyncio_3, ...): group them.
            key = name.rstrip("0123456789_-").lower() or name
            out[key] = out.get(key, 0.0) + ms
    return out


def process_cpu_ms() -> float:
    raw = Path("/proc/self/stat").read_text()
    f = raw[raw.rindex(")") + 2 :].split()
    return (int(f[11]) + int(f[12])) * 1000.0 / CLK_TCK


class Meter:
    """Counters between ``mark`` and ``stats``."""

    def __init__(self, registry: Any, warnings: WarningCounter) -> None:
        self.registry = registry
        self.warnings = warnings
        self.vad_infer_s = 0.0
        self.vad_infer_n = 0
        self.resyncs: list[tuple[str, float]] = []
        self.db_ms: dict[str, list[float]] = {}
        self.gc_pauses: list[tuple[int, float]] = []
        self._mark: dict[str, Any] = {}
        self.clock = None
        self.tick_reads_from = MediaTuning().tick_reads_from
        self.paired_sends_from = MediaTuning().paired_sends_from
        self.tick_cpu_s = {"tick": 0.0, "ring_flush": 0.0, "tick_reads": 0.0}

    def patch_vad(self) -> None:
        """Time Silero inference, which runs on the event loop thread, so "plumbing" can exclude it."""
        from vr3ai.agent.services.vad import SileroModel

        orig = SileroModel.infer
        meter = self

        def timed(self: Any, window: Any, state: Any) -> Any:
            t = time.thread_time()
            try:
                return orig(self, window, state)
            finally:
                meter.vad_infer_s += time.thread_time() - t
                meter.vad_infer_n += 1

        SileroModel.infer = timed  # type: ignore[method-assign]

    def observe_resyncs(self, apply: bool = True) -> None:
        """Record every re-anchoring of a session's play-out model, by source and direction.

        A positive delta moves the model's end of Asterisk's queue later (we then send less); when it
        comes from an event our loop processed late, Asterisk's queue really is shorter than the
        model and runs dry: that is what this is here to show. ``apply=False`` (``--no-resync``)
        records the would-be re-anchorings without applying them, for an A/B comparison.
        """
        meter = self

        class Observer:
            def resynced(self, source: str, delta_ms: float, applied: bool) -> None:
                meter.resyncs.append((source, delta_ms))

        engine = self.registry.engine
        engine.observer = Observer()
        if not apply:
            engine.retune(resync=False)

    def patch_clock_cpu(self) -> None:
        """CPU of the loop thread inside the media clock's ticks (sends, tick reads and everything
        they call) and inside its hooks, so the rest of the platform's CPU can be told apart."""
        from vr3ai.media.clock import MediaClock
        from vr3ai.media.tickread import TickReader
        from vr3ai.media.uring import SendBatch

        meter = self
        orig = MediaClock.tick

        def tick(self: Any, now: float | None = None, *, due: float | None = None) -> None:
            t = time.thread_time()
            try:
                orig(self, now, due=due)
            finally:
                meter.tick_cpu_s["tick"] += time.thread_time() - t

        MediaClock.tick = tick  # type: ignore[method-assign]

        def timed(cls: Any, name: str, key: str) -> None:
            fn = getattr(cls, name)

            def wrapper(self: Any, *a: Any) -> Any:
                t = time.thread_time()
                try:
                    return fn(self, *a)
                finally:
                    meter.tick_cpu_s[key] += time.thread_time() - t

            setattr(cls, name, wrapper)

        timed(SendBatch, "flush", "ring_flush")  # the tick's sends: one io_uring_enter
        timed(TickReader, "poll", "tick_reads")  # reads, and the session/agent work per frame

    def watch_gc(self) -> None:
        """Pause of every garbage collection, by generation: a full (gen 2) collection walks every
        tracked object of the process and stops the event loop meanwhile."""
        started = [0.0]

        def cb(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                self.gc_pauses.append((info.get("generation", -1), (time.perf_counter() - started[0]) * 1000))

        gc.callbacks.append(cb)

    def patch_db_timing(self) -> None:
        """Wall time of the database steps on a call's critical path (setup and teardown): under a
        burst, SQLite serialises writers, and this shows how long a call waits for them."""
        from vr3ai.core.calls import CallStore
        from vr3ai.core.runs import RunService

        meter = self

        def timed(cls: Any, name: str) -> None:
            orig = getattr(cls, name)

            async def wrapper(*a: Any, **kw: Any) -> Any:
                t = time.monotonic()
                try:
                    return await orig(*a, **kw)
                finally:
                    meter.db_ms.setdefault(name, []).append((time.monotonic() - t) * 1000)

            setattr(cls, name, wrapper)

        for name in ("create", "mark_running", "finish"):
            timed(RunService, name)
        timed(CallStore, "route_inbound")

    def _sessions(self) -> dict[str, Any]:
        return dict(self.registry.active)

    def mark(self) -> None:
        clock = self.registry.engine.clock
        self.clock = clock
        clock.lateness_ms = []
        self._mark = {
            "t": time.monotonic(),
            "threads": thread_cpu_ms(),
            "cpu": process_cpu_ms(),
            "vad_s": self.vad_infer_s,
            "tick_cpu_s": dict(self.tick_cpu_s),
            "vad_n": self.vad_infer_n,
            "clock_ticks": clock.ticks,
            "clock_late": clock.late_ticks,
            "sessions": {k: _session_counters(s) for k, s in self._sessions().items()},
            "gc": [g["collections"] for g in gc.get_stats()],
            "warnings": sum(self.warnings.counts.values()),
        }
        self.resyncs = []
        self.db_ms = {}
        self.gc_pauses = []
        clock.max_lateness_ms = 0.0

    def stats(self) -> dict[str, Any]:
        m = self._mark
        clock = self.registry.engine.clock
        lat = list(clock.lateness_ms or [])
        lat.sort()
        threads = thread_cpu_ms()
        d_threads = {k: round(v - m["threads"].get(k, 0.0), 1) for k, v in threads.items()}
        sessions = self._sessions()
        per: list[dict[str, float]] = []
        for k, s in sessions.items():
            now = _session_counters(s)
            before = m["sessions"].get(k)
            if before is None:
                continue  # started inside the window: its counters include call setup
            per.append(
                {f: now[f] - before[f] for f in now if f != "max_send_gap_ms"}
                | {"max_send_gap_ms": now["max_send_gap_ms"]}
            )
        agg: dict[str, Any] = {"sessions": len(sessions), "sessions_measured": len(per)}
        for f in (
            "late_ticks",
            "skipped_ms",
            "frames_in_dropped",
            "xoff",
            "resyncs",
            "fast_starts",
            "audio_frames_out",
            "silence_frames_out",
            "suspended_sends",
            "dropped_sends",
        ):
            vals = [p[f] for p in per]
            agg[f] = round(sum(vals), 1)
            agg[f"sessions_with_{f}"] = sum(1 for v in vals if v > 0)
        agg["max_send_gap_ms"] = round(max((p["max_send_gap_ms"] for p in per), default=0.0), 1)
        gcs = [g["collections"] for g in gc.get_stats()]
        rs: dict[str, Any] = {}
        for src in ("mark", "status"):
            fwd = sorted(d for s_, d in self.resyncs if s_ == src and d > 0)
            back = [d for s_, d in self.resyncs if s_ == src and d < 0]
            rs[src] = {
                "later": len(fwd),
                "earlier": len(back),
                "later_p50_ms": round(fwd[len(fwd) // 2], 1) if fwd else None,
                "later_max_ms": round(fwd[-1], 1) if fwd else None,
                "earlier_min_ms": round(min(back), 1) if back else None,
            }
        db: dict[str, Any] = {}
        for name, vals in self.db_ms.items():
            v = sorted(vals)
            db[name] = {
                "n": len(v),
                "p50": round(v[len(v) // 2], 1),
                "p95": round(v[int(len(v) * 0.95)], 1),
                "max": round(v[-1], 1),
            }
        gcp: dict[str, Any] = {}
        for gen in (0, 1, 2):
            v = sorted(ms for g, ms in self.gc_pauses if g == gen)
            gcp[f"gen{gen}"] = {"n": len(v), "max_ms": round(v[-1], 1) if v else None, "total_ms": round(sum(v), 1)}
        gcp["tracked_objects"] = len(gc.get_objects())  # what a full collection has to walk
        gcp["frozen_objects"] = gc.get_freeze_count()
        # One forced full collection, after the window (the callers' analysis ends before this):
        # how long a gen-2 pause stops the event loop at this many calls, CPU and wall.
        t, c = time.perf_counter(), time.thread_time()
        gc.collect()
        gcp["forced_full_ms"] = round((time.perf_counter() - t) * 1000, 1)
        gcp["forced_full_cpu_ms"] = round((time.thread_time() - c) * 1000, 1)
        return {
            "gc_pauses": gcp,
            "db_ms": db,
            "resyncs": rs,
            "event": "stats",
            "seconds": round(time.monotonic() - m["t"], 3),
            "cpu_ms": round(process_cpu_ms() - m["cpu"], 1),
            "threads_ms": d_threads,
            "vad_infer_ms": round((self.vad_infer_s - m["vad_s"]) * 1000, 1),
            "tick_cpu_ms": {k: round((v - m["tick_cpu_s"][k]) * 1000, 1) for k, v in self.tick_cpu_s.items()},
            "vad_infer_n": self.vad_infer_n - m["vad_n"],
            "clock": {
                "ticks": clock.ticks - m["clock_ticks"],
                "late_ticks": clock.late_ticks - m["clock_late"],
                "lateness_p50_ms": round(lat[len(lat) // 2], 2) if lat else None,
                "lateness_p99_ms": round(lat[int(len(lat) * 0.99)], 2) if lat else None,
                "lateness_max_ms": round(lat[-1], 2) if lat else None,
            },
            "media": agg,
            "gc_collections": [a - b for a, b in zip(gcs, m["gc"], strict=False)],
            "warnings": sum(self.warnings.counts.values()) - m["warnings"],
            "warning_samples": self.warnings.samples[:10],
            "rss_mb": round(_rss_mb(), 1),
        }


def _ab_switch(knob: str, on: bool, meter: Meter) -> dict[str, Any]:
    # The engine's public tuning, switched at run time: the same calls stay up.
    engine = meter.registry.engine
    if knob == "pairs":
        engine.retune(paired_sends_from=meter.paired_sends_from if on else 0)
    elif knob == "tickreads":
        # Off: the reader hands every socket back to the loop on its next tick.
        engine.retune(tick_reads_from=meter.tick_reads_from if on else 0)
    elif knob == "ring":
        engine.retune(ring_sends=on)
    else:
        return {"event": "error", "message": f"unknown A/B knob {knob!r}"}
    return {"knob": knob, "on": on, "switched": len(engine.clock)}


def _session_counters(s: Any) -> dict[str, float]:
    st = s.stats
    tr = s.transport
    return {
        "late_ticks": st.late_ticks,
        "skipped_ms": st.skipped_ms,
        "frames_in_dropped": st.frames_in_dropped,
        "xoff": st.xoff,
        "resyncs": st.resyncs,
        "fast_starts": st.fast_starts,
        "audio_frames_out": st.audio_frames_out,
        "silence_frames_out": st.silence_frames_out,
        "max_send_gap_ms": st.max_send_gap_ms,
        "suspended_sends": getattr(tr, "suspended_sends", 0),
        "dropped_sends": getattr(tr, "dropped_sends", 0),
    }


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _staller(ms: float, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        time.sleep(ms / 1000)  # noqa: ASYNC251 -- blocks the loop on purpose: a late tick


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ari-url", required=True)
    ap.add_argument("--agent", choices=("minimal", "voice"), default="minimal")
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--max-calls", type=int, default=1000)
    ap.add_argument("--stall-ms", type=float, default=0.0)
    ap.add_argument("--stall-every", type=float, default=1.0)
    ap.add_argument(
        "--gc-freeze",
        action="store_true",
        help="experiment: gc.freeze() once the platform is up, so full collections skip start-up objects",
    )
    ap.add_argument(
        "--no-resync",
        action="store_true",
        help="A/B experiment: sessions never re-anchor their play-out model (MediaTuning.resync=False: "
        "would-be re-anchorings are only recorded), to see what the re-anchoring does under load",
    )
    ap.add_argument(
        "--media-asgi",
        action="store_true",
        help="A/B experiment: the media socket through ASGI (uvicorn websockets-sansio + Starlette) "
        "instead of vr3ai.media.direct",
    )
    ap.add_argument("--asyncio-loop", action="store_true", help="the standard asyncio loop instead of uvloop")
    ap.add_argument(
        "--tick-reads-from",
        type=int,
        default=None,
        help="A/B: media sockets read by the clock's tick from this many calls (default: the setting's "
        "default; 0 = always the event loop, as before vr3ai.media.tickread)",
    )
    ap.add_argument("--greeting", default=None, help="voice agent: the start node's greeting text")
    ap.add_argument("--greeting-s", type=float, default=1.5, help="minimal agent: greeting length in seconds")
    ap.add_argument("--barge-in", action="store_true", help="minimal agent: flush on the first loud caller frame")
    args = ap.parse_args()

    warn = WarningCounter()
    logging.getLogger().addHandler(warn)
    # Warnings and errors with tracebacks go to stderr (the benchmark keeps it as platform.log).
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(err)
    logging.getLogger().setLevel(logging.WARNING)

    factory: Any
    runtime: Any = None
    if args.agent == "voice":
        # Models load once per process, before the first call, as the app does at start-up.
        from vr3ai.agent.factory import VoiceRuntime, build_agent

        runtime = VoiceRuntime.shared()
        await runtime.start()

        def factory(ctx: Any) -> Any:
            return build_agent(ctx, runtime)

        definition = voice_workflow(args.greeting)
    else:
        factory = MinimalAgentFactory(greeting_s=args.greeting_s, barge_in=args.barge_in)
        definition = MINIMAL_WORKFLOW

    args.data_dir.mkdir(parents=True, exist_ok=True)
    async with running_platform(
        args.data_dir,
        port=args.port,
        agent_factory=factory,
        max_concurrent_calls=args.max_calls,
        media_ws="websockets-sansio" if args.media_asgi else "direct",
        **({} if args.tick_reads_from is None else {"media_tick_reads_from": args.tick_reads_from}),
    ) as p:
        meter = Meter(p.services.media, warn)
        tuning = p.services.media.engine.tuning
        meter.tick_reads_from = tuning.tick_reads_from
        meter.paired_sends_from = tuning.paired_sends_from
        meter.observe_resyncs(apply=not args.no_resync)
        meter.patch_db_timing()
        meter.watch_gc()
        meter.patch_clock_cpu()
        if args.agent == "voice":
            meter.patch_vad()
        if runtime is not None:
            p.services.voice = runtime  # as the app does: saving a workflow pre-synthesises its texts
        lab = SimpleNamespace(ari_url=args.ari_url)
        wf_id, cfg_id = await p.setup_inbound(definition=definition, lab=lab)
        warm_s = 0.0
        if runtime is not None:
            t_warm = time.monotonic()
            await runtime.warmed_up(60)
            warm_s = time.monotonic() - t_warm
        if args.gc_freeze:
            gc.collect()
            gc.freeze()
        staller = asyncio.create_task(_staller(args.stall_ms, args.stall_every)) if args.stall_ms > 0 else None
        print(
            json.dumps(
                {
                    "event": "ready",
                    "base_url": p.base_url,
                    "api_key": p.api_key,
                    "workflow_id": wf_id,
                    "config_id": cfg_id,
                    "pid": os.getpid(),
                    "agent": args.agent,
                    "rss_mb": round(_rss_mb(), 1),
                    "warm_s": round(warm_s, 2),
                }
            ),
            flush=True,
        )
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = (await reader.readline()).decode().strip()
            if not line or line == "quit":
                break
            if line == "mark":
                meter.mark()
                out: dict[str, Any] = {"event": "marked"}
            elif line == "stats":
                out = meter.stats()
            elif line == "clock":
                # Tick lateness since the last "clock" (A/B windows); the record restarts.
                clock = meter.registry.engine.clock
                lat = sorted(clock.lateness_ms or [])
                clock.lateness_ms = []
                out = {
                    "event": "clock",
                    "ticks": len(lat),
                    "p99_ms": round(lat[int(len(lat) * 0.99)], 2) if lat else None,
                    "max_ms": round(lat[-1], 2) if lat else None,
                }
            elif line.startswith("ab "):
                # A/B inside one step (capacity.py --ab): switch a mechanism on or off at run time.
                knob, _, state = line[3:].partition(" ")
                out = {"event": "ab", **_ab_switch(knob, state == "on", meter)}
            elif line == "status":
                out = {"event": "status", **(await p.get(f"/api/v1/telephony-configurations/{cfg_id}/status"))}
            else:
                out = {"event": "error", "message": f"unknown command {line!r}"}
            print(json.dumps(out, default=str), flush=True)
        if staller is not None:
            staller.cancel()
    if runtime is not None:
        with contextlib.suppress(Exception):
            await runtime.close()


if __name__ == "__main__":
    # The loop `vr3ai serve` runs (vr3ai.server.serve): uvloop, unless --asyncio-loop asks for the
    # standard one (an A/B experiment).
    if "--asyncio-loop" in sys.argv:
        asyncio.run(main())
    else:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
