"""A real ``Services`` + ``AriConnection`` on a temp SQLite, with a fake Asterisk around it.

Everything below the event handler is real (call state machine, run lifecycle, quota, SQLite); only
the ARI REST client, the media registry and the agent are doubles (``tests/fuzz/fakes.py``). The
rig also wraps the run/quota services to count, per run, how often a slot was released and a run
finished, because "released exactly once" cannot be read back from the final counters alone (the
``active_calls > 0`` guard would hide a double release).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy import select

import vr3ai
from vr3ai.agent.base import Agent, CallContext, RunReport
from vr3ai.core.orgs import create_organization
from vr3ai.core.runs import RunOutcome
from vr3ai.db.migrate import upgrade
from vr3ai.db.models import FINAL_STATUSES, Organization, PhoneNumber, TelephonyConfiguration, Workflow, WorkflowRun
from vr3ai.media.interface import CallAudio, CallEnded
from vr3ai.media.session import MediaFormatError
from vr3ai.services import Services
from vr3ai.settings import Settings
from vr3ai.telephony.ari.calls import Call
from vr3ai.telephony.ari.client import AriClient
from vr3ai.telephony.ari.config import AriConfig
from vr3ai.telephony.ari.connection import AriConnection
from vr3ai.telephony.deps import CallDeps

from .fakes import FakeAriClient, FakeMediaRegistry

GOOD_EXTEN = "8000"
NO_WORKFLOW_EXTEN = "8001"
FOREIGN_EXTEN = "8002"
E164_EXTEN = "+15551230001"
MAX_CONCURRENT = 20
RECONCILE_LOST_REASON = "call lost: VR3 AI or Asterisk restarted while the call was up"


# --------------------------------------------------------------------------------------------------
# Trivial agents
# --------------------------------------------------------------------------------------------------


class TrivialAgent:
    """Behaves like a well-mannered agent in one of a few ways, chosen by the rig's rng."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    async def run(self, audio: CallAudio, ctx: CallContext, report: RunReport) -> None:
        if self.mode == "quick":
            report.end_reason = "agent done at once"
            return
        if self.mode == "raise":
            await asyncio.sleep(0)
            raise RuntimeError("fuzz agent failure")
        if self.mode == "hangup":
            audio.play(b"\x00\x00" * 80, mark="bye")
            await audio.hangup("agent said goodbye")
        if self.mode == "frames":
            async for _ in audio.frames():
                pass
            return
        async for event in audio.events():
            if isinstance(event, CallEnded):
                report.say("caller", "...", 0, 0)
                return


# --------------------------------------------------------------------------------------------------
# Log capture
# --------------------------------------------------------------------------------------------------


@dataclass
class Problem:
    where: str
    signature: tuple[str, ...]
    detail: str


class TracebackCatcher(logging.Handler):
    """Keeps every ERROR+ record that carries an exception (a traceback in production logs)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def signatures(self) -> Counter[tuple[str, ...]]:
        out: Counter[tuple[str, ...]] = Counter()
        for r in self.records:
            assert r.exc_info is not None and r.exc_info[1] is not None
            # asyncio's messages embed the object's repr on the next lines; the first line is stable.
            out[code_signature(r.exc_info[1], r.getMessage().splitlines()[0])] += 1
        return out

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.records.append(record)


PACKAGE_DIR = str(Path(vr3ai.__file__).resolve().parent) + os.sep


def in_our_code(filename: str) -> bool:
    """A frame of the vr3ai package itself (not of the venv, which lives under ~/.cache/vr3ai)."""
    return str(Path(filename).resolve()).startswith(PACKAGE_DIR)


def code_signature(exc: BaseException, message: str = "") -> tuple[str, ...]:
    """(message, exception type, innermost vr3ai file:function): stable across runs and line edits."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if in_our_code(f.filename)]
    where = f"{Path(ours[-1].filename).name}:{ours[-1].name}" if ours else "?"
    return (message, type(exc).__name__, where)


def format_exc(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-3000:]


@contextmanager
def catching_tracebacks(*loggers: str) -> Iterator[TracebackCatcher]:
    catcher = TracebackCatcher()
    for name in loggers:
        logging.getLogger(name).addHandler(catcher)
    try:
        yield catcher
    finally:
        for name in loggers:
            logging.getLogger(name).removeHandler(catcher)


# --------------------------------------------------------------------------------------------------
# The rig
# --------------------------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What happened to every run, counted at the service boundary."""

    created_with_slot: set[str] = field(default_factory=set)
    releases: Counter[str] = field(default_factory=Counter)
    finishes: Counter[str] = field(default_factory=Counter)
    reconcile_closed_live: list[str] = field(default_factory=list)
    reconcile_race_hits: list[str] = field(default_factory=list)
    """Known bug: reconcile closes the run of an outbound call placed while it ran (see the xfail test)."""
    placing: set[str] = field(default_factory=set)
    """Outbound runs created by 'place_call' whose Call is not registered yet."""


class AriRig:
    def __init__(
        self,
        services: Services,
        conn: AriConnection,
        client: FakeAriClient,
        media: FakeMediaRegistry,
        org_id: str,
        workflow: Workflow,
        config_id: str,
        agent_rng: random.Random,
    ) -> None:
        self.services = services
        self.conn = conn
        self.client = client
        self.media = media
        self.org_id = org_id
        self.workflow = workflow
        self.config_id = config_id
        self.agent_rng = agent_rng
        self.agent_modes: Counter[str] = Counter()
        self.force_agent_mode: str | None = None
        """Regression tests that depend on who ends the call pin the agent's behaviour."""
        self.ledger = Ledger()
        self.problems: list[Problem] = []
        self.all_calls: list[Call] = []
        self.registered_at: dict[int, int] = {}
        self.reconcile_started_at = 0
        self.known_leaks: list[str] = []
        """Known bug: a connected media session the call never adopted is not closed by the call."""
        self._wrap_services()
        self._watch_calls()
        # Frames read by the events stream reach on_event through feed(), so an exception is
        # recorded with its input instead of only being logged by the stream's safety net.
        conn.stream.on_event = self.feed

    # --- construction -------------------------------------------------------------------------------
    @classmethod
    async def build(
        cls,
        data_dir: Path,
        seed: int,
        *,
        fail_rate: float = 0.1,
        call_starts_per_s: float = 0,
        call_starts_burst: int = 1,
    ) -> AriRig:
        # No new-call rate limit: the fuzz feeds thousands of calls as fast as it can, on purpose
        # (tests/security/test_stasis_flood.py checks the limit with this rig).
        settings = Settings(
            data_dir=data_dir,
            start_telephony=False,
            voice=False,
            log_json=False,
            call_starts_per_s=call_starts_per_s,
            call_starts_burst=call_starts_burst,
        )
        services = Services.build(settings)
        await upgrade(services.db)
        org, _ = await create_organization(
            services.db, "fuzz org", max_concurrent_calls=MAX_CONCURRENT, minutes_per_month=None
        )
        other, _ = await create_organization(
            services.db, "other org", max_concurrent_calls=MAX_CONCURRENT, minutes_per_month=None
        )
        async with services.db.session() as s, s.begin():
            wf = Workflow(organization_id=org.id, name="fuzz", definition={"nodes": [], "settings": {}})
            foreign = Workflow(organization_id=other.id, name="foreign", definition={})
            s.add_all([wf, foreign])
            await s.flush()
            cfg = TelephonyConfiguration(
                organization_id=org.id,
                name="fuzz pbx",
                ari_endpoint_url="http://fake-asterisk:8088",
                endpoint_key="http://fake-asterisk:8088",
                stasis_app_name="vr3ai",
                app_password_enc=services.box.encrypt("app-secret"),
                websocket_client_name="vr3ai",
                from_extensions=["6001"],
            )
            s.add(cfg)
            await s.flush()
            s.add_all(
                [
                    PhoneNumber(
                        organization_id=org.id,
                        telephony_configuration_id=cfg.id,
                        address=GOOD_EXTEN,
                        inbound_workflow_id=wf.id,
                    ),
                    PhoneNumber(
                        organization_id=org.id,
                        telephony_configuration_id=cfg.id,
                        address=E164_EXTEN,
                        inbound_workflow_id=wf.id,
                    ),
                    PhoneNumber(
                        organization_id=org.id,
                        telephony_configuration_id=cfg.id,
                        address=NO_WORKFLOW_EXTEN,
                        inbound_workflow_id=None,
                    ),
                    PhoneNumber(
                        organization_id=org.id,
                        telephony_configuration_id=cfg.id,
                        address=FOREIGN_EXTEN,
                        inbound_workflow_id=foreign.id,
                    ),
                ]
            )
            config_id = cfg.id
        config = AriConfig(
            id=config_id,
            organization_id=org.id,
            name="fuzz pbx",
            ari_endpoint_url="http://fake-asterisk:8088",
            stasis_app_name="vr3ai",
            app_password="app-secret",
            websocket_client_name="vr3ai",
            from_extensions=["6001"],
            dial_template="PJSIP/{to}",
            media_username="vr3ai-media",
            media_password="media-secret",
        )
        media = FakeMediaRegistry()
        services.media = media
        agent_rng = random.Random(seed ^ 0xA6E7)
        holder: dict[str, AriRig] = {}

        def agent_factory(ctx: CallContext) -> Agent:
            mode = holder["rig"].force_agent_mode or agent_rng.choices(
                ["listen", "quick", "hangup", "frames", "raise"], [6, 2, 2, 1, 1]
            )[0]
            holder["rig"].agent_modes[mode] += 1
            return TrivialAgent(mode)

        conn = AriConnection(CallDeps.from_services(services, agent_factory), config)
        await conn.client.aclose()  # the real pooled httpx client is never used
        client = FakeAriClient(random.Random(seed ^ 0x5EED), fail_rate=fail_rate)
        client.on_media_hangup = media.media_channel_gone
        conn.client = cast(AriClient, client)
        rig = cls(services, conn, client, media, org.id, wf, config_id, agent_rng)
        holder["rig"] = rig
        return rig

    def _wrap_services(self) -> None:
        runs, quota, ledger, conn = self.services.runs, self.services.quota, self.ledger, self.conn
        create, finish, release = runs.create, runs.finish, quota.release

        async def counted_create(**kw: Any) -> WorkflowRun:
            run = await create(**kw)
            if kw.get("reserve", True):
                ledger.created_with_slot.add(run.id)
            return run

        async def counted_finish(run_id: str, outcome: RunOutcome) -> bool:
            placing = run_id in ledger.placing
            owner = next((c for c in conn.live if c.run_id == run_id), None)
            done = await finish(run_id, outcome)
            if done:
                ledger.finishes[run_id] += 1
                if outcome.end_reason == RECONCILE_LOST_REASON and (placing or owner is not None):
                    late = owner is not None and self.registered_at.get(id(owner), 0) > self.reconcile_started_at
                    del late  # any live run closed by reconcile is a bug, whatever the timing
                    ledger.reconcile_closed_live.append(f"{run_id}: {describe(owner) if owner else 'being placed'}")
            return done

        async def counted_release(session: Any, run_id: str, billed_seconds: int) -> bool:
            done = await release(session, run_id, billed_seconds)
            if done:
                ledger.releases[run_id] += 1
            return done

        runs.create = counted_create  # type: ignore[method-assign]
        runs.finish = counted_finish  # type: ignore[method-assign]
        quota.release = counted_release  # type: ignore[method-assign]

    def _watch_calls(self) -> None:
        # Keep every Call ever registered, so a stuck or leaked one can be described afterwards.
        conn, seen = self.conn, self.all_calls
        register, reconcile = conn._register, conn.reconcile

        def spy(call: Call) -> None:
            seen.append(call)
            self.registered_at[id(call)] = len(seen)
            register(call)

        async def spied_reconcile() -> None:
            self.reconcile_started_at = len(seen)
            await reconcile()

        conn._register = spy  # type: ignore[method-assign]
        conn.reconcile = spied_reconcile  # type: ignore[method-assign]

    # --- feeding --------------------------------------------------------------------------------------
    def asterisk_is_fast(self, rng: random.Random, connect_rate: float = 0.25, refuse_rate: float = 0.03) -> None:
        """Let the fake Asterisk connect (or refuse) the media socket, and put the media channel into
        Stasis, before the externalMedia reply, in a random share of calls."""

        def before_reply(media_id: str) -> None:
            roll = rng.random()
            if roll < connect_rate:
                if rng.random() < 0.5:
                    self.media.connect(media_id)
                    self.feed(_media_stasis_start(media_id))
                else:
                    self.feed(_media_stasis_start(media_id))
                    self.media.connect(media_id)
            elif roll < connect_rate + refuse_rate:
                self.feed(_media_stasis_start(media_id))
                self.media.refuse(media_id, MediaFormatError("unsupported media format 'opus'"))

        self.client.on_external_media = before_reply

    def feed(self, event: Any) -> None:
        """Hand one event to the connection exactly as the events stream does, recording escapes."""
        try:
            self.conn.on_event(event)
        except Exception as exc:
            self.problems.append(Problem("on_event", code_signature(exc), f"{_short(event)}\n{format_exc(exc)}"))

    def asterisk_side_gone(self, event: Any) -> None:
        """Keep the fake Asterisk consistent with what it just told us (gone channels answer 404)."""
        if not isinstance(event, dict):
            return
        channel = event.get("channel")
        cid = channel.get("id") if isinstance(channel, dict) else None
        if not isinstance(cid, str):
            return
        if event.get("type") == "ChannelDestroyed":
            self.client.gone.add(cid)
            self.media.media_channel_gone(cid)
        elif event.get("type") == "StasisEnd":
            self.client.gone.add(cid)

    # --- settling and invariants ------------------------------------------------------------------------
    async def hang_up_everything(self, within_s: float = 10.0) -> list[str]:
        """Destroy every channel the connection still routes; return descriptions of calls that did
        not end within ``within_s`` (stuck)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while self.conn.live and loop.time() < deadline:
            for cid in list(self.conn.calls):
                ev = {
                    "type": "ChannelDestroyed",
                    "cause": 16,
                    "cause_txt": "Normal Clearing",
                    "channel": {"id": cid, "state": "Up"},
                }
                self.asterisk_side_gone(ev)
                self.feed(ev)
            await asyncio.sleep(0.01)
        return [describe(c) for c in self.conn.live]

    async def drain_background(self, within_s: float = 5.0) -> None:
        """Wait (bounded) for orphan hang-ups and call tasks; what is left is reported by invariants()."""
        for _ in range(int(within_s / 0.01)):
            busy = self.conn._background or any(c.task is not None and not c.task.done() for c in self.all_calls)
            if not busy:
                return
            await asyncio.sleep(0.01)

    async def invariants(self) -> list[str]:
        """Everything that must hold once no call is live. Returns violations (empty = fine)."""
        bad: list[str] = []
        conn = self.conn
        if conn.live:
            bad.append(f"conn.live not empty: {[describe(c) for c in conn.live]}")
        if conn.calls:
            bad.append(f"conn.calls not empty: {sorted(conn.calls)[:10]}")
        if conn._background:
            bad.append(f"{len(conn._background)} background tasks still pending")
        unfinished = [describe(c) for c in self.all_calls if c.task is not None and not c.task.done()]
        if unfinished:
            bad.append(f"call tasks still running: {unfinished[:5]}")
        if self.media.pending:
            bad.append(f"media expectations never withdrawn: {self.media.pending[:10]}")
        for session in self.media.open_sessions():
            owner = next((c for c in self.all_calls if c.media_id == session.channel_id), None)
            asked = [(r.method, r.result) for r in self.client.requests if r.target == session.channel_id]
            bad.append(
                f"media session {session.channel_id} left open; its call: "
                f"{describe(owner) if owner else '?'} adopted={owner is not None and owner.session is session} "
                f"ARI requests for it: {asked}"
            )
        async with self.services.db.session() as s:
            runs = list(
                (
                    await s.execute(
                        select(WorkflowRun).where(
                            WorkflowRun.status.not_in(FINAL_STATUSES) | WorkflowRun.slot_held.is_(True)
                        )
                    )
                ).scalars()
            )
            orgs = list((await s.execute(select(Organization))).scalars())
        for run in runs:
            if run.status not in FINAL_STATUSES:
                bad.append(f"run {run.id} left {run.status!r} (call_id={run.call_id})")
            if run.slot_held:
                bad.append(f"run {run.id} still holds a quota slot ({run.status}, {run.end_reason!r})")
        for org in orgs:
            if org.active_calls != 0:
                bad.append(f"organization {org.name!r} active_calls={org.active_calls}")
        ledger = self.ledger
        for run_id in ledger.created_with_slot:
            if ledger.releases[run_id] != 1:
                bad.append(f"run {run_id}: slot released {ledger.releases[run_id]} times")
            if ledger.finishes[run_id] != 1:
                bad.append(f"run {run_id}: finished {ledger.finishes[run_id]} times")
        stray = set(ledger.releases) - ledger.created_with_slot
        if stray:
            bad.append(f"slots released for runs that never reserved one: {sorted(stray)[:5]}")
        if ledger.reconcile_closed_live:
            bad.append(f"reconcile closed runs of live calls: {ledger.reconcile_closed_live[:5]}")
        return bad

    async def run_rows(self) -> list[WorkflowRun]:
        async with self.services.db.session() as s:
            return list((await s.execute(select(WorkflowRun).order_by(WorkflowRun.created_at))).scalars())

    async def close(self) -> None:
        await self.conn.stop("fuzz over")
        await self.services.db.dispose()


def _media_stasis_start(media_id: str) -> dict[str, Any]:
    return {
        "type": "StasisStart",
        "args": [],
        "channel": {
            "id": media_id,
            "name": "WebSocket/vr3ai/0x7fbb90012170",
            "state": "Up",
            "dialplan": {"context": "default", "exten": "s", "priority": 1, "app_name": "Stasis", "app_data": "vr3ai"},
        },
        "application": "vr3ai",
    }


def describe(call: Call) -> str:
    task = call.task
    state = "no task" if task is None else ("done" if task.done() else "running")
    stack = ""
    if task is not None and not task.done():
        frames = task.get_stack(limit=6)
        stack = " <- ".join(f"{Path(f.f_code.co_filename).name}:{f.f_code.co_name}:{f.f_lineno}" for f in frames)
    return (
        f"{call.direction} call {call.channel_id!r} run={call.run_id} task={state} timings={call.timings} "
        f"caller_gone={call.caller_gone.done()} media_gone={call.media_gone.done()} "
        f"end_requested={call.end_requested.done()} {stack}"
    )


def _short(value: Any, limit: int = 400) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


async def settle_tasks(baseline: set[asyncio.Task[Any]], within_s: float = 5.0) -> list[asyncio.Task[Any]]:
    """Tasks created since ``baseline`` that are still pending after ``within_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    current = asyncio.current_task()
    while True:
        gc.collect()
        pending = [t for t in asyncio.all_tasks() if t not in baseline and t is not current and not t.done()]
        if not pending or loop.time() >= deadline:
            return pending
        await asyncio.sleep(0.02)
