"""Fuzz the ARI event handler (issue "bad input"): ≥10,000 generated event sequences through
``AriConnection.on_event`` (and raw frames through the events stream's reader), against the real call
state machine, run lifecycle, quota and SQLite, with a fake Asterisk around them.

What must hold, whatever arrives: no exception escapes ``on_event``; once every channel is destroyed
no call is live or routed; no run is left ``initialized``/``running``; every run that took a quota
slot released it exactly once and finished exactly once; no media expectation or session is left
open; no task created by the code under test is still pending.

Known bugs (the xfail tests at the bottom) are still generated but tolerated by signature
(``KNOWN_ON_EVENT_BUGS``, ``KNOWN_TRACEBACKS``, and in ``ari_rig``: unadopted media sessions, the
reconcile/place_call race), so the fuzz stays green while it keeps looking for new ones.

Reproduce a failure with the seed it prints: ``VR3AI_FUZZ_SEED=<seed> pytest tests/fuzz -k ari``.
Timing interleavings with the SQLite worker thread are not bit-for-bit deterministic, the generated
inputs are.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from vr3ai.core.quota import QuotaExceeded
from vr3ai.db.models import WorkflowRun, new_id
from vr3ai.db.session import Database
from vr3ai.media.session import MediaFormatError
from vr3ai.telephony.ari import calls as calls_module
from vr3ai.telephony.ari.calls import OUTBOUND_MARK

from .ari_gen import Gen, truncated_json
from .ari_rig import (
    E164_EXTEN,
    FOREIGN_EXTEN,
    GOOD_EXTEN,
    MAX_CONCURRENT,
    NO_WORKFLOW_EXTEN,
    AriRig,
    Problem,
    catching_tracebacks,
    code_signature,
    format_exc,
    settle_tasks,
)

SEED = int(os.environ.get("VR3AI_FUZZ_SEED", "20261126"))
CASES = int(os.environ.get("VR3AI_FUZZ_ARI_CASES", "10000"))
BATCH = 2000
"""Cases between two full settles (every channel destroyed, all invariants checked)."""

# Known bugs (reported, see the xfail tests at the bottom). The fuzz still generates these inputs;
# their signature is tolerated here so that the fuzz keeps hunting for *new* problems. Remove an
# entry once its xfail test passes.
KNOWN_ON_EVENT_BUGS: dict[tuple[str, str, str], str] = {}
KNOWN_TRACEBACKS = {
    # The fuzz agent raises on purpose in 1 of 12 calls; the call owner logs that with its traceback.
    ("agent failed", "RuntimeError", "?"),
}


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A RAM-backed temp dir when there is one: SQLite commits on this shared VM's disk cost ~15 ms
    (vs ~5 ms), and the fuzz is about logic, not storage."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="vr3ai-fuzz-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def short_media_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # 12 s is right for a real Asterisk; here it only makes calls whose media never connects slow.
    monkeypatch.setattr(calls_module, "MEDIA_CONNECT_TIMEOUT_S", 0.15)


class FakeEventsSocket:
    """What ``AriEventStream._read`` iterates: raw text frames."""

    def __init__(self, frames: list[Any]) -> None:
        self.frames = frames
        self.closed = False

    def __aiter__(self) -> FakeEventsSocket:
        return self

    async def __anext__(self) -> Any:
        if not self.frames:
            raise StopAsyncIteration
        return self.frames.pop(0)

    async def close(self) -> None:
        self.closed = True


class Fuzzer:
    def __init__(self, rig: AriRig, seed: int) -> None:
        self.rig = rig
        self.rng = random.Random(seed)
        self.gen = Gen(self.rng)
        self.stats: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self.events_fed = 0
        self.dead_ids: list[str] = []
        self.autoconnect: dict[str, Any] = {}
        self.background: set[asyncio.Task[Any]] = set()

    # --- helpers ------------------------------------------------------------------------------------
    def known_ids(self) -> list[str]:
        ids = list(self.rig.conn.calls)
        ids += [cid for cid in self.rig.media.expected]
        ids += self.dead_ids[-20:]
        return ids

    async def send(self, event: Any, rng: random.Random | None = None) -> None:
        r = rng or self.rng
        self.rig.asterisk_side_gone(event)
        self.rig.feed(event)
        self.events_fed += 1
        if r.random() < 0.35:
            for _ in range(r.randint(1, 4)):
                await asyncio.sleep(0)

    async def send_all(self, events: list[Any], rng: random.Random | None = None) -> None:
        for ev in events:
            await self.send(ev, rng)

    def media_ids_pending(self) -> list[str]:
        return self.rig.media.pending

    def live_media_ids(self) -> list[str]:
        return [c.media_id for c in self.rig.conn.live]

    # --- case kinds -----------------------------------------------------------------------------------
    async def case_junk(self) -> None:
        await self.send_all([self.gen.junk_event(self.known_ids()) for _ in range(self.rng.randint(1, 4))])

    async def case_mutated(self) -> None:
        r, g = self.rng, self.gen
        ids = self.known_ids()
        cid = r.choice(ids) if ids and r.random() < 0.7 else g.new_caller_id()
        base = r.choice(
            [
                g.stasis_start(cid, exten=r.choice([GOOD_EXTEN, "9999", "9999"])),
                g.stasis_end(cid),
                g.destroyed(cid),
                g.hangup_request(cid, soft=r.choice([None, True, False])),
                g.dial(cid, r.choice(["", "ANSWER", "BUSY"])),
                g.any_realistic(cid),
            ]
        )
        await self.send(g.mutate(base, ids))

    async def case_raw_frames(self) -> None:
        """Frames as they come off the events WebSocket: broken JSON, JSON that is not an object."""
        r, g = self.rng, self.gen
        frames: list[Any] = []
        for _ in range(r.randint(1, 5)):
            pick = r.randrange(7)
            if pick == 0:
                frames.append(truncated_json(json.dumps(g.stasis_start(g.new_caller_id())), r))
            elif pick == 1:
                frames.append(json.dumps(g.junk(1)))
            elif pick == 2:
                frames.append(
                    r.choice(
                        [
                            "",
                            "null",
                            "[]",
                            "{}",
                            "42",
                            '"StasisStart"',
                            "{" * 5000,
                            "[" * 100_000,
                            "\x00",
                            "NaN",
                            '{"type": "StasisStart", "channel": {"id": ',
                        ]
                    )
                )
            elif pick == 3:
                frames.append(bytes(r.randrange(256) for _ in range(r.randint(0, 64))))
            elif pick == 4:
                ev = g.junk_event(self.known_ids())
                if ev.get("type") == "ApplicationReplaced":
                    ev["type"] = "StasisEnd"
                frames.append(json.dumps(ev))
            elif pick == 5:
                frames.append(json.dumps(g.stasis_end(r.choice(self.known_ids() or ["nobody"]))))
            else:
                frames.append(json.dumps(g.stasis_start(g.new_caller_id(), exten="9999"), indent=2))
        stream = self.rig.conn.stream
        n = len(frames)
        try:
            replaced = await stream._read(FakeEventsSocket(frames))
        except Exception as exc:
            self.rig.problems.append(Problem("stream._read", code_signature(exc), format_exc(exc)))
            return
        assert not replaced
        self.events_fed += n

    async def case_inbound(self) -> None:
        """A new caller, with whatever happens right around its StasisStart, in any order."""
        r, g = self.rng, self.gen
        cid = g.new_caller_id() if r.random() < 0.9 or not self.dead_ids else r.choice(self.dead_ids)
        exten = r.choices(
            [GOOD_EXTEN, E164_EXTEN, NO_WORKFLOW_EXTEN, FOREIGN_EXTEN, "9999", "", 8000, None],
            [20, 3, 2, 2, 2, 1, 1, 1],
        )[0]
        start = g.stasis_start(cid, exten=exten, state=r.choice(["Ring", "Up"]))
        extra = [
            g.stasis_end(cid),
            g.destroyed(cid, cause=r.choice([16, 17, 19, 127])),
            g.hangup_request(cid, soft=r.choice([None, True, False])),
            g.dial(cid, "", with_peer=False),
            g.dial(cid, r.choice(["", "ANSWER"])),
            g.stasis_start(cid, exten=exten),
            g.envelope("ChannelStateChange", channel=g.channel(cid, state="Up")),
        ]
        follow = r.sample(extra, r.choice([0, 0, 0, 1, 1, 2, 3]))
        seq = [start, *follow]
        if follow and r.random() < 0.3:
            r.shuffle(seq)  # e.g. ChannelDestroyed before StasisStart
        self.stats["inbound"] += 1
        await self.send_all(seq)

    async def case_happy(self) -> None:
        """A call meant to reach the agent: its media connects (around the media channel's
        StasisStart, in either order) as soon as the call asks for it; see :meth:`pump`."""
        cid = self.gen.new_caller_id()
        await self.send(self.gen.stasis_start(cid, exten=GOOD_EXTEN, state=self.rng.choice(["Ring", "Up"])))
        call = self.rig.conn.calls.get(cid)
        if call is not None:
            self.autoconnect[call.media_id] = call

    async def pump(self) -> None:
        """Connect the media of 'happy' calls whose expectation is now registered."""
        for mid, call in list(self.autoconnect.items()):
            if call.task is not None and call.task.done():
                del self.autoconnect[mid]
            elif mid in self.rig.media.pending:
                del self.autoconnect[mid]
                start = self.gen.stasis_start(mid, media=True)
                if self.rng.random() < 0.5:
                    await self.send(start)
                    self.rig.media.connect(mid)
                else:
                    self.rig.media.connect(mid)
                    await asyncio.sleep(0)
                    await self.send(start)
                self.stats["happy"] += 1

    async def case_orphan(self) -> None:
        r, g = self.rng, self.gen
        tag = self.rig.conn.tag
        pick = r.randrange(3)
        if pick == 0:
            ev = g.stasis_start(f"vr3m-{tag}-{r.getrandbits(48):012x}", media=True)
        elif pick == 1:
            ev = g.stasis_start(f"vr3o-{tag}-{r.getrandbits(64):016x}", state="Up")
        else:
            ev = g.stasis_start(g.new_caller_id(), args=[OUTBOUND_MARK, "run-x"], state="Up")
        await self.send(ev)

    async def case_live(self) -> None:
        """Realistic events (duplicates, reordered) for the channels of a live call."""
        r, g = self.rng, self.gen
        live = list(self.rig.conn.live)
        if not live:
            return await self.case_inbound()
        call = r.choice(live)
        events = []
        for _ in range(r.randint(1, 4)):
            if r.random() < 0.5:
                events.append(g.any_realistic(call.channel_id))
            else:
                events.append(g.any_realistic(call.media_id, media=True))
        if r.random() < 0.2:
            events += events[: r.randint(1, len(events))]  # duplicates
        self.stats["live"] += 1
        await self.send_all(events)
        for ev in events:
            if ev.get("type") in ("ChannelDestroyed", "StasisEnd"):
                self.dead_ids.append(ev["channel"]["id"])

    async def case_media(self) -> None:
        """The media socket side: connects, refuses, drops, in any order with the media StasisStart."""
        r, g = self.rng, self.gen
        pending = self.media_ids_pending()
        open_sessions = self.rig.media.open_sessions()
        pick = r.randrange(6)
        if pick <= 2 and pending:
            mid = r.choice(pending)
            start = g.stasis_start(mid, media=True)
            if r.random() < 0.5:
                await self.send(start)
                await asyncio.sleep(0)
                self.rig.media.connect(mid)
            else:
                self.rig.media.connect(mid)
                await asyncio.sleep(0)
                if r.random() < 0.9:
                    await self.send(start)
            self.stats["media_connect"] += 1
        elif pick == 3 and pending:
            mid = r.choice(pending)
            if r.random() < 0.5:
                self.rig.media.refuse(mid, MediaFormatError("unsupported media format 'opus'"))
            else:
                await self.send(g.destroyed(mid, cause=3, cause_txt="No route to destination", media=True))
            self.stats["media_fail"] += 1
        elif pick == 4 and open_sessions:
            session = r.choice(open_sessions)
            action = r.randrange(3)
            if action == 0:
                session.remote_close(r.choice([1000, 1006, 1011, 1009]))
            elif action == 1:
                session.dtmf(r.choice("0123456789*#"))
            else:
                session.caller_audio(b"\x00\x01" * r.randint(0, 200))
            self.stats["media_session"] += 1
        else:
            await self.case_live()

    async def case_outbound(self) -> None:
        # Like an API request placing a call: runs concurrently with the events that keep arriving.
        task = asyncio.create_task(self._outbound(self.rng.random()))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _outbound(self, roll: float) -> None:
        # Its own rng and generator: it resumes after SQLite round trips at times that vary from run
        # to run, and must not shift the main sequence's random draws.
        r = random.Random(roll)
        g = Gen(r)
        rig = self.rig
        run_id = new_id()
        # As TelephonyManager.place_call does: register the call first, then create its run.
        call = rig.conn.prepare_outbound(run_id)
        channel_id = call.channel_id
        rig.ledger.placing.add(run_id)
        try:
            await rig.services.runs.create(
                run_id=run_id,
                organization_id=rig.org_id,
                workflow_id=rig.workflow.id,
                telephony_configuration_id=rig.config_id,
                direction="outbound",
                context={
                    "caller_number": "6001",
                    "called_number": "6002",
                    "direction": "outbound",
                    "call_id": channel_id,
                    "provider": "ari",
                },
                call_id=channel_id,
            )
        except QuotaExceeded:
            self.stats["outbound_refused"] += 1
            rig.conn.forget(call)
            rig.ledger.placing.discard(run_id)
            return
        rig.conn.start_outbound(call, rig.workflow, "PJSIP/6002", '"VR3 AI" <6001>')
        rig.ledger.placing.discard(run_id)
        self.stats["outbound"] += 1
        cid = call.channel_id
        script = r.choices(["answer", "busy", "noanswer", "junk_dial", "nothing"], [4, 2, 2, 3, 1])[0]
        events: list[Any] = []
        if script == "answer":
            events = [
                g.dial(cid, ""),
                g.envelope("ChannelStateChange", channel=g.channel(cid, state="Up")),
                g.dial(cid, "ANSWER"),
                g.stasis_start(cid, args=[OUTBOUND_MARK, run_id], state="Up"),
            ]
        elif script == "busy":
            events = [g.dial(cid, ""), g.dial(cid, "BUSY"), g.destroyed(cid, cause=17, cause_txt="User busy")]
        elif script == "noanswer":
            events = [g.dial(cid, "RINGING"), g.dial(cid, "NOANSWER"), g.destroyed(cid, cause=19)]
        elif script == "junk_dial":
            events = [g.mutate(g.dial(cid, r.choice(["", "BUSY"])), [cid]) for _ in range(r.randint(1, 3))]
        if r.random() < 0.3:
            r.shuffle(events)
        await self.send_all(events, r)

    async def case_reconcile(self) -> None:
        """As after an ARI reconnect: Asterisk lists random channels and bridges."""
        r, g = self.rng, self.gen
        rig = self.rig
        tag = rig.conn.tag
        ids = list(rig.conn.calls) + [g.new_caller_id() for _ in range(r.randint(0, 3))]
        ids += [f"vr3m-{tag}-{r.getrandbits(48):012x}", f"vr3o-{tag}-deadbeef"]
        chans = []
        for cid in r.sample(ids, r.randint(0, len(ids))):
            ch = g.channel(cid, state=r.choice(["Up", "Ring"]))
            if r.random() < 0.3:
                ch["dialplan"] = {
                    "app_name": r.choice(["Stasis", "Dial", ""]),
                    "app_data": r.choice(["vr3ai", "vr3ai,x", "other", ""]),
                }
            chans.append(ch)
        rig.client.channel_list = chans
        rig.client.bridge_list = [{"id": f"vr3b-{tag}-{r.getrandbits(48):012x}"}, {"id": "someone-else"}]
        try:
            await rig.conn.reconcile()
        except Exception as exc:
            # The events stream catches this, but a failed reconcile skips the rest of the cleanup.
            if not (type(exc).__name__ == "AriError"):
                rig.problems.append(Problem("reconcile", code_signature(exc), format_exc(exc)))
        self.stats["reconcile"] += 1

    async def run_case(self) -> None:
        kinds = [
            (self.case_junk, 23),
            (self.case_mutated, 20),
            (self.case_raw_frames, 8),
            (self.case_inbound, 7),
            (self.case_happy, 7),
            (self.case_live, 16),
            (self.case_media, 14),
            (self.case_orphan, 2),
            (self.case_outbound, 3),
            (self.case_reconcile, 0.1),
        ]
        await self.pump()
        holders = [c for c in self.rig.conn.live if c.run_created and not c.caller_gone.done()]
        if len(holders) >= 8:
            # Callers hang up eventually; without this the quota stays exhausted and most new calls
            # are refused before they reach the interesting states.
            call = min(holders, key=lambda c: c.t0)
            await self.send(self.gen.destroyed(call.channel_id, cause=self.rng.choice([16, 16, 17, 127])))
        fn = self.rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        self.stats[fn.__name__] += 1
        t = time.perf_counter()
        await fn()
        await asyncio.sleep(0)
        self.seconds[fn.__name__] += time.perf_counter() - t


async def test_ari_event_handler_survives_10k_generated_sequences(data_dir: Path) -> None:
    baseline = set(asyncio.all_tasks())
    t0 = time.monotonic()
    rig = await AriRig.build(data_dir, SEED)
    rig.asterisk_is_fast(random.Random(SEED ^ 0xFA57))
    fuzzer = Fuzzer(rig, SEED)
    violations: list[str] = []
    case = batch = 0
    settle_s = 0.0
    try:
        with catching_tracebacks("vr3ai", "asyncio") as catcher:
            while case < CASES:
                for _ in range(min(BATCH, CASES - case)):
                    await fuzzer.run_case()
                    case += 1
                    if case % 25 == 0:
                        await asyncio.sleep(0.002)  # let SQLite round trips complete
                t_settle = time.monotonic()
                if fuzzer.background:
                    await asyncio.wait(fuzzer.background, timeout=10)
                batch += 1
                if case >= CASES:
                    # The last batch ends the other way round: shutting the configuration down must
                    # end every call by itself (conn.stop waits 5 s and does not cancel stragglers).
                    await rig.conn.stop("fuzz: configuration stopped")
                    stuck = [f"after stop(): {c}" for c in rig.conn.live]
                else:
                    stuck = await rig.hang_up_everything()
                t_hung = time.monotonic()
                await rig.drain_background()
                t_drained = time.monotonic()
                bad = stuck + await rig.invariants()
                if os.environ.get("VR3AI_FUZZ_VERBOSE"):
                    print(
                        f"  hang-up {t_hung - t_settle:.2f}s drain {t_drained - t_hung:.2f}s "
                        f"invariants {time.monotonic() - t_drained:.2f}s"
                    )
                settle_s += time.monotonic() - t_settle
                if os.environ.get("VR3AI_FUZZ_VERBOSE"):
                    print(f"batch {batch}: settled in {time.monotonic() - t_settle:.2f}s")
                if bad:
                    violations += [f"batch {batch} (seed {SEED}, cases up to {case}): {b}" for b in bad]
                    break
            leaked = await settle_tasks(baseline)
    finally:
        if not rig.conn._stopping:
            await rig.conn.stop("fuzz aborted")
        await rig.services.db.dispose()
    elapsed = time.monotonic() - t0

    rows = await _run_summary(rig)
    unexpected_on_event = [p for p in rig.problems if p.signature not in KNOWN_ON_EVENT_BUGS]
    known_hits = Counter(KNOWN_ON_EVENT_BUGS[p.signature] for p in rig.problems if p.signature in KNOWN_ON_EVENT_BUGS)
    tracebacks = catcher.signatures()
    unexpected_tb = {sig: n for sig, n in tracebacks.items() if sig not in KNOWN_TRACEBACKS}
    print(
        f"\nARI fuzz: seed={SEED} cases={case} events={fuzzer.events_fed} calls={len(rig.all_calls)} "
        f"runs={rows} in {elapsed:.1f}s (settling {settle_s:.1f}s)\n"
        f"  kinds={dict(fuzzer.stats)}\n  agents={dict(rig.agent_modes)}\n"
        f"  seconds per kind={ {k: round(v, 1) for k, v in fuzzer.seconds.items()} }\n"
        f"  known: unadopted sessions left open={len(rig.known_leaks)} "
        f"reconcile closed a run being placed={len(rig.ledger.reconcile_race_hits)}\n"
        f"  known on_event bugs hit: {dict(known_hits)}\n  tracebacks logged: {dict(tracebacks)}"
    )
    assert not violations, "\n".join(violations[:20])
    assert case >= CASES
    assert not unexpected_on_event, "exceptions escaped on_event:\n" + "\n\n".join(
        f"{p.where} {p.signature}: {p.detail}" for p in unexpected_on_event[:5]
    )
    assert not leaked, f"tasks left pending: {leaked}"
    assert not unexpected_tb, f"unexpected tracebacks logged: {unexpected_tb}"
    assert len(rig.all_calls) > 300, "the generator stopped producing calls; the fuzz lost its teeth"


async def _run_summary(rig: AriRig) -> dict[str, int]:
    # The engine was disposed; a fresh connection reads the final state for the summary line.
    db = Database(rig.services.settings.resolved_database_url())
    try:
        async with db.session() as s:
            runs = list((await s.execute(select(WorkflowRun))).scalars())
    finally:
        await db.dispose()
    if os.environ.get("VR3AI_FUZZ_VERBOSE"):
        reasons = Counter(f"{r.status}: {(r.end_reason or '')[:70]}" for r in runs)
        print("\n".join(f"  {n:5d} {k}" for k, n in reasons.most_common(25)))
    return dict(Counter(r.status for r in runs))


# ==================================================================================================
# Explicit regression cases: the nastiest orderings, deterministic (the fake never fails at random)
# ==================================================================================================


@pytest.fixture
async def rig(data_dir: Path) -> AsyncIterator[AriRig]:
    rig = await AriRig.build(data_dir, SEED, fail_rate=0.0)
    rig.client.yield_rate = 0.0
    try:
        yield rig
    finally:
        await rig.conn.stop("test over")
        await rig.services.db.dispose()


async def wait_for(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def until_ended(rig: AriRig, within_s: float = 5.0) -> None:
    await wait_for(lambda: not rig.conn.live, within_s)
    await rig.drain_background()


async def expect_clean(rig: AriRig) -> None:
    bad = await rig.invariants()
    assert not bad, bad
    assert not rig.problems, [p.detail for p in rig.problems]


async def start_inbound(rig: AriRig, gen: Gen, *, state: str = "Ring") -> tuple[str, Any]:
    cid = gen.new_caller_id()
    rig.feed(gen.stasis_start(cid, exten=GOOD_EXTEN, state=state))
    call = rig.conn.calls[cid]
    return cid, call


async def until_media_expected(rig: AriRig, call: Any) -> None:
    await wait_for(lambda: call.media_id in rig.media.pending)


def gone(rig: AriRig, event: dict[str, Any]) -> None:
    """Asterisk-side effect of an event, then the event itself."""
    rig.asterisk_side_gone(event)
    rig.feed(event)


async def test_stasis_end_in_the_same_tick_as_stasis_start(rig: AriRig) -> None:
    """The caller hangs up before the call task ran once: the call must still end cleanly."""
    g = Gen(random.Random(1))
    cid, _call = await start_inbound(rig, g)
    gone(rig, g.stasis_end(cid))
    gone(rig, g.destroyed(cid))
    await until_ended(rig)
    await expect_clean(rig)
    [run] = await rig.run_rows()
    assert run.status in ("completed", "failed") and run.slot_held is False


async def test_channel_destroyed_before_stasis_start(rig: AriRig) -> None:
    """Out-of-order delivery: the destroy of a channel nobody knows is ignored; the late StasisStart
    makes a call for a dead channel, which must fail fast (404s) and not wait for media."""
    g = Gen(random.Random(2))
    cid = g.new_caller_id()
    gone(rig, g.destroyed(cid))
    assert not rig.conn.live
    rig.feed(g.stasis_start(cid, exten=GOOD_EXTEN))
    await until_ended(rig, within_s=3)
    await expect_clean(rig)


async def test_media_socket_first_then_caller_hangs_up_before_media_stasis_start(rig: AriRig) -> None:
    g = Gen(random.Random(3))
    cid, call = await start_inbound(rig, g)
    await until_media_expected(rig, call)
    session = rig.media.connect(call.media_id)
    assert session is not None
    gone(rig, g.destroyed(cid))
    await until_ended(rig)
    assert rig.client.count("hangup", call.media_id) == 1  # the media channel is deleted...
    assert session.closed.done()  # ...which closes its socket
    await expect_clean(rig)
    [run] = await rig.run_rows()
    assert (run.status, run.end_reason) == ("completed", "caller hung up during call setup")


async def test_media_stasis_start_but_socket_never_connects(rig: AriRig) -> None:
    g = Gen(random.Random(4))
    _cid, call = await start_inbound(rig, g)
    await until_media_expected(rig, call)
    rig.feed(g.stasis_start(call.media_id, media=True))
    await until_ended(rig)
    assert call.media_id in rig.media.cancel_calls  # the expectation was withdrawn
    await expect_clean(rig)
    [run] = await rig.run_rows()
    assert run.status == "failed" and "did not connect" in (run.end_reason or "")


async def test_late_and_duplicate_events_after_teardown_create_nothing(rig: AriRig) -> None:
    g = Gen(random.Random(5))
    rig.force_agent_mode = "listen"  # the caller, not the agent, ends this call
    cid, call = await start_inbound(rig, g, state="Up")
    await until_media_expected(rig, call)
    rig.feed(g.stasis_start(call.media_id, media=True))
    rig.media.connect(call.media_id)
    await wait_for(lambda: call.session is not None)
    gone(rig, g.stasis_end(cid))
    await until_ended(rig)
    for ev in [
        g.destroyed(cid),
        g.stasis_end(call.media_id, media=True),
        g.destroyed(call.media_id, media=True),
        g.dial(cid, "ANSWER"),
        g.hangup_request(cid),
        g.stasis_end(cid),
        g.dial(cid, "", with_peer=False),
    ]:
        gone(rig, ev)
    await asyncio.sleep(0.05)
    assert not rig.conn.live and len(rig.all_calls) == 1
    await expect_clean(rig)
    [run] = await rig.run_rows()
    assert (run.status, run.end_reason) == ("completed", "caller hung up")


async def test_outbound_busy_with_dial_events_without_peer(rig: AriRig) -> None:
    g = Gen(random.Random(6))
    run_id = new_id()
    await rig.services.runs.create(
        run_id=run_id,
        organization_id=rig.org_id,
        workflow_id=rig.workflow.id,
        telephony_configuration_id=rig.config_id,
        direction="outbound",
        context={},
    )
    call = rig.conn.prepare_outbound(run_id)
    rig.conn.start_outbound(call, rig.workflow, "PJSIP/6002", None)
    await wait_for(lambda: rig.client.count("originate") == 1)
    cid = call.channel_id
    for ev in [
        g.dial(cid, "", with_peer=False),
        g.dial(cid, ""),
        g.dial(cid, "BUSY", with_peer=False),
        g.dial(cid, "BUSY"),
        g.destroyed(cid, cause=17, cause_txt="User busy"),
    ]:
        gone(rig, ev)
    await until_ended(rig)
    await expect_clean(rig)
    [run] = await rig.run_rows()
    assert run.status == "busy"


async def test_stop_ends_calls_in_every_phase(rig: AriRig) -> None:
    g = Gen(random.Random(7))
    baseline = set(asyncio.all_tasks())
    _a, setup_call = await start_inbound(rig, g)  # waits for media
    _b, talking = await start_inbound(rig, g)
    await until_media_expected(rig, talking)
    rig.feed(g.stasis_start(talking.media_id, media=True))
    rig.media.connect(talking.media_id)
    run_id = new_id()
    await rig.services.runs.create(
        run_id=run_id,
        organization_id=rig.org_id,
        workflow_id=rig.workflow.id,
        telephony_configuration_id=rig.config_id,
        direction="outbound",
        context={},
    )
    rig.conn.start_outbound(rig.conn.prepare_outbound(run_id), rig.workflow, "PJSIP/6002", None)  # never answered
    await wait_for(lambda: talking.session is not None)
    assert setup_call in rig.conn.live
    await rig.conn.stop("configuration deleted")
    assert not rig.conn.live
    await expect_clean(rig)
    assert not await settle_tasks(baseline, within_s=2)


async def test_more_simultaneous_calls_than_slots_are_refused_and_counted(
    rig: AriRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every admitted call must still hold its slot when the last ones arrive.
    monkeypatch.setattr(calls_module, "MEDIA_CONNECT_TIMEOUT_S", 30.0)
    g = Gen(random.Random(8))
    ids = [g.new_caller_id() for _ in range(MAX_CONCURRENT + 3)]
    for cid in ids:
        rig.feed(g.stasis_start(cid, exten=GOOD_EXTEN))

    def congestion() -> int:
        return sum(1 for r in rig.client.requests if r.method == "hangup" and r.args["reason"] == "congestion")

    await wait_for(lambda: congestion() == 3 and len(rig.conn.live) == MAX_CONCURRENT, within_s=15)
    assert len(rig.ledger.created_with_slot) == MAX_CONCURRENT
    for cid in ids:
        gone(rig, g.destroyed(cid))
    await until_ended(rig)
    await expect_clean(rig)
    rows = await rig.run_rows()
    refused = [r for r in rows if (r.end_reason or "").startswith("quota:")]
    assert len(refused) == 3 and len(rows) == MAX_CONCURRENT + 3


# ==================================================================================================
# Bugs found by the fuzz (xfail strict until fixed; each asserts the correct behaviour)
# ==================================================================================================


@pytest.mark.parametrize("args", [{"x": 1}, 5, True], ids=["dict", "int", "bool"])
async def test_bug_stasis_start_with_mistyped_args(rig: AriRig, args: Any) -> None:
    g = Gen(random.Random(9))
    rig.conn.on_event(g.stasis_start(g.new_caller_id(), exten="9999", args=args))  # must not raise
    await until_ended(rig)


async def test_bug_dial_with_unhashable_peer_id(rig: AriRig) -> None:
    rig.conn.on_event({"type": "Dial", "dialstatus": "", "peer": {"id": ["x"]}})


async def test_bug_dial_for_live_call_with_non_dict_channel(rig: AriRig) -> None:
    g = Gen(random.Random(10))
    cid, _call = await start_inbound(rig, g)
    try:
        rig.conn.on_event({"type": "Dial", "dialstatus": "ANSWER", "peer": {"id": cid}, "channel": "garbage"})
    finally:
        gone(rig, g.destroyed(cid))
        await until_ended(rig)


async def test_bug_deeply_nested_json_frame_kills_the_events_reader(rig: AriRig) -> None:
    g = Gen(random.Random(11))
    cid = g.new_caller_id()
    frames = ["[" * 100_000, json.dumps(g.stasis_start(cid, exten="9999"))]
    try:
        replaced = await rig.conn.stream._read(FakeEventsSocket(frames))
    finally:
        await until_ended(rig)
    # The reader skips the bad frame and handles the next one, like any other non-JSON frame.
    assert replaced is False
    assert rig.all_calls and rig.all_calls[0].channel_id == cid


@pytest.mark.parametrize("step,status", [("answer", 404), ("answer", 409), ("create_bridge", 500)])
async def test_bug_ari_race_errors_are_internal_errors(rig: AriRig, step: str, status: int) -> None:
    g = Gen(random.Random(12))
    rig.client.fail_next[step] = status
    with catching_tracebacks("vr3ai") as catcher:
        cid, _call = await start_inbound(rig, g)
        await until_ended(rig)
    gone(rig, g.destroyed(cid))
    [run] = await rig.run_rows()
    assert not (run.end_reason or "").startswith("internal error"), run.end_reason
    assert not catcher.records, catcher.signatures()


@pytest.mark.parametrize("field", ["dialplan", "caller"])
async def test_bug_stasis_start_with_mistyped_channel_fields(rig: AriRig, field: str) -> None:
    g = Gen(random.Random(13))
    ev = g.stasis_start(g.new_caller_id(), exten=GOOD_EXTEN)
    ev["channel"][field] = "not an object"
    with catching_tracebacks("vr3ai") as catcher:
        rig.feed(ev)
        await until_ended(rig)
    assert not catcher.records, catcher.signatures()


@pytest.mark.parametrize("dialstatus,cause", [(17, 17), ("BUSY", [17])], ids=["int-dialstatus", "list-cause"])
async def test_bug_outbound_with_mistyped_dial_fields(rig: AriRig, dialstatus: Any, cause: Any) -> None:
    g = Gen(random.Random(14))
    run_id = new_id()
    await rig.services.runs.create(
        run_id=run_id,
        organization_id=rig.org_id,
        workflow_id=rig.workflow.id,
        telephony_configuration_id=rig.config_id,
        direction="outbound",
        context={},
    )
    call = rig.conn.prepare_outbound(run_id)
    rig.conn.start_outbound(call, rig.workflow, "PJSIP/6002", None)
    await wait_for(lambda: rig.client.count("originate") == 1)
    with catching_tracebacks("vr3ai") as catcher:
        gone(rig, g.dial(call.channel_id, dialstatus))
        gone(rig, g.destroyed(call.channel_id, cause=cause))
        await until_ended(rig)
    [run] = await rig.run_rows()
    assert not (run.end_reason or "").startswith("internal error"), run.end_reason
    assert not catcher.records, catcher.signatures()


@pytest.mark.parametrize("how", ["delete-fails", "media-left-stasis"])
async def test_bug_unadopted_media_session_is_left_open(rig: AriRig, how: str) -> None:
    g = Gen(random.Random(15))
    cid, call = await start_inbound(rig, g)
    await until_media_expected(rig, call)
    session = rig.media.connect(call.media_id)
    assert session is not None
    if how == "delete-fails":
        rig.client.fail_next["hangup"] = 500  # the teardown's DELETE of the media channel
        gone(rig, g.destroyed(cid))
    else:
        rig.feed(g.stasis_end(call.media_id, media=True))  # media channel left Stasis (not destroyed)
    await until_ended(rig)
    assert session.closed.done(), "the media socket of an ended call is still open; nobody owns it"


async def test_bug_media_refused_before_the_rest_reply_is_an_internal_error(rig: AriRig) -> None:
    g = Gen(random.Random(18))

    def asterisk_is_fast(media_id: str) -> None:
        rig.feed(g.stasis_start(media_id, media=True))
        rig.media.refuse(media_id, MediaFormatError("unsupported media format 'opus'"))

    rig.client.on_external_media = asterisk_is_fast
    with catching_tracebacks("vr3ai") as catcher:
        cid, _call = await start_inbound(rig, g)
        await until_ended(rig)
    gone(rig, g.destroyed(cid))
    [run] = await rig.run_rows()
    assert (run.end_reason or "").startswith("media connection refused"), run.end_reason
    assert not catcher.records, catcher.signatures()


async def test_bug_unretrieved_media_future_exception(rig: AriRig) -> None:
    g = Gen(random.Random(16))
    cid, call = await start_inbound(rig, g)
    await until_media_expected(rig, call)
    with catching_tracebacks("asyncio") as catcher:
        gone(rig, g.destroyed(cid))
        rig.media.refuse(call.media_id, MediaFormatError("unsupported media format 'opus'"))
        await until_ended(rig)
        del call
        rig.all_calls.clear()
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
    assert not catcher.records, [r.getMessage().splitlines()[0] for r in catcher.records]


async def test_bug_reconcile_closes_run_of_call_being_placed(rig: AriRig) -> None:
    run_id = new_id()
    # What TelephonyManager.place_call does: register the call, create the run (commit) ...
    call = rig.conn.prepare_outbound(run_id)
    await rig.services.runs.create(
        run_id=run_id,
        organization_id=rig.org_id,
        workflow_id=rig.workflow.id,
        telephony_configuration_id=rig.config_id,
        direction="outbound",
        context={},
    )
    # ... an ARI reconnect's reconcile gets the loop before place_call resumes ...
    await rig.conn.reconcile()
    # ... then place_call starts the call.
    rig.conn.start_outbound(call, rig.workflow, "PJSIP/6002", None)
    try:
        run = await rig.services.runs.get(run_id)
        assert run is not None and run.status == "initialized", (run.status if run else None, run and run.end_reason)
    finally:
        gone(rig, Gen(random.Random(17)).destroyed(call.channel_id))
        await until_ended(rig)
