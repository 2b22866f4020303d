"""One call, one owner: the state machine of an inbound or outbound ARI call.

A :class:`Call` is created by the configuration's connection (``connection.py``) when a call
appears (``StasisStart`` of an unknown channel, or an outbound originate). The connection feeds it
the ARI events of its channels through :meth:`Call.feed`, which only records facts (sets events and
futures, never awaits); all actions happen in the call's own task, in order. That makes the call
the single owner of its state: no other code answers, bridges, hangs up or finishes its run.

Inbound, exactly as the guide describes: called extension from ``channel.dialplan.exten`` → phone
number of *this* configuration → its inbound workflow (same organization) → quota reservation →
run → answer → mixing bridge → ``externalMedia`` (our channel id registered with the media server
first: Asterisk may connect before the REST reply) → the media channel's own ``StasisStart`` →
``addChannel`` both → agent. Teardown always runs every step (media channel, caller, bridge,
run + quota), each tolerant of the object already being gone.

What the call needs beyond its ARI connection comes in one small object (``CallDeps``): the call
store (``vr3ai.core.calls``: routing, run and quota, secrets, recordings quota, finish; the only
database access), the media registry and the agent factory. The media half of the call (bridge,
``externalMedia``, the media socket) is ``media_leg.MediaLeg``; how the end is explained is
``outcome``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from vr3ai.agent.base import CallContext, RunReport
from vr3ai.core.calls import NewRun, RouteRefused
from vr3ai.core.quota import QuotaExceeded
from vr3ai.core.runs import RunOutcome
from vr3ai.db.models import Workflow, new_id
from vr3ai.logs import RedactingLogger
from vr3ai.telephony.ari.client import AriError
from vr3ai.telephony.ari.host import CallHost
from vr3ai.telephony.ari.media_leg import MediaLeg
from vr3ai.telephony.ari.outcome import (
    CallFailed,
    ChannelGone,
    ConversationEnd,
    conversation_outcome,
    unanswered_outcome,
    with_report,
)
from vr3ai.telephony.callerid import agent_variables, caller_context
from vr3ai.telephony.deps import AgentFactory, CallDeps

if TYPE_CHECKING:
    from vr3ai.media.session import MediaSession

log = logging.getLogger("vr3ai.telephony.ari.calls")

OUTBOUND_MARK = "vr3ai-outbound"
MEDIA_CONNECT_TIMEOUT_S = 12.0
"""Asterisk retries the media connection reconnect_attempts × (connection_timeout + interval)."""

__all__ = ["OUTBOUND_MARK", "AgentFactory", "Call", "CallFailed", "ChannelGone"]


def short_id() -> str:
    return secrets.token_hex(6)


class Call:
    def __init__(
        self,
        conn: CallHost,
        deps: CallDeps,
        *,
        direction: str,
        channel: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> None:
        self.conn = conn
        """This call's ARI side: its configuration, REST client, ids, status and redaction."""
        self.deps = deps
        """Everything else it uses: the call store, the media registry, the agent factory."""
        # Lines of this call are redacted with its configuration's passwords (and, once the workflow is
        # known, its organization secrets): never with another tenant's values.
        self.log = RedactingLogger(log, conn.redactor)
        self.direction = direction
        self.run_id = run_id or new_id()
        self.channel: dict[str, Any] = channel or {}
        self.channel_id: str = self.channel.get("id", "")
        tag = conn.tag
        self.media_id = f"vr3m-{tag}-{short_id()}"
        self.bridge_id = f"vr3b-{tag}-{short_id()}"
        self.t0 = time.monotonic()
        self.timings: dict[str, float] = {}
        self.report = RunReport()
        self.session: MediaSession | None = None
        self.run_created = False
        self.answered_by_remote = asyncio.Event()
        self.caller_gone: asyncio.Future[ChannelGone] = asyncio.get_running_loop().create_future()
        self.media_in_stasis = asyncio.Event()
        self.media_gone: asyncio.Future[ChannelGone] = asyncio.get_running_loop().create_future()
        self.dial_status = ""
        self.asterisk_shutdown = False
        self.context: dict[str, Any] = {}
        """The run's context, kept in memory so the agent starts without another database read."""
        self.end_requested: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self.organization_id = conn.config.organization_id
        self.media = MediaLeg(self)

    # --- facts from ARI (never awaits) -------------------------------------------------------------
    def feed(self, event: dict[str, Any]) -> None:
        etype = event.get("type")
        channel = event.get("channel") or {}
        cid = channel.get("id")
        if etype == "Dial":
            peer = (event.get("peer") or {}).get("id")
            if peer == self.channel_id and event.get("dialstatus"):
                self.dial_status = event["dialstatus"]
            return
        if etype == "ChannelHangupRequest" and event.get("soft") and isinstance(event.get("cause"), int):
            # Soft requests carry AST_SOFTHANGUP_* flag bits; 0x4 is SHUTDOWN (core stop/restart).
            if event["cause"] & 0x4:
                self.asterisk_shutdown = True
        if cid == self.media_id:
            if etype == "StasisStart":
                self.mark("media_stasis_start")
                self.media_in_stasis.set()
            elif etype == "ChannelDestroyed":
                _resolve(self.media_gone, ChannelGone(event.get("cause"), event.get("cause_txt", "")))
            elif etype == "StasisEnd":
                _resolve(self.media_gone, ChannelGone(None, "media channel left Stasis"))
            return
        if cid == self.channel_id:
            if etype == "StasisStart":
                self.channel = channel
                self.answered_by_remote.set()
            elif etype == "ChannelDestroyed":
                _resolve(self.caller_gone, ChannelGone(event.get("cause"), event.get("cause_txt", "")))
            elif etype == "StasisEnd":
                _resolve(self.caller_gone, ChannelGone(None, "caller left Stasis"))
            elif etype == "ChannelHangupRequest" and not event.get("soft"):
                # A hard request carries the real Q.850 cause (soft ones carry flag bits, not causes).
                _resolve(self.caller_gone, ChannelGone(event.get("cause"), ""))

    def request_end(self, reason: str, status: str = "completed") -> None:
        _resolve(self.end_requested, (reason, status))

    def mark(self, name: str) -> None:
        self.timings[name] = round((time.monotonic() - self.t0) * 1000, 1)

    @property
    def channel_ids(self) -> list[str]:
        return [c for c in (self.channel_id, self.media_id) if c]

    # --- inbound ----------------------------------------------------------------------------------
    async def run_inbound(self) -> None:
        conn = self.conn
        outcome: RunOutcome | None = None
        hangup_reason = "normal"
        try:
            workflow = await self._route_inbound()
            await self._create_run(workflow)
            self.media.start_recording_check()
            if self.channel.get("state") != "Up":
                try:
                    await conn.client.answer(self.channel_id)
                except AriError as e:
                    # Usually the caller hung up a few ms after StasisStart (404/409/412).
                    if e.status in (404, 409, 412) or self.caller_gone.done():
                        raise CallFailed("caller hung up before the call was answered", status="completed") from None
                    raise CallFailed(f"could not answer the call: {e.message} (HTTP {e.status})") from None
                self.mark("answered")
            outcome = await self._converse(workflow)
        except CallFailed as e:
            outcome = RunOutcome(status=e.status, end_reason=e.reason)
            hangup_reason = e.hangup_reason
        except asyncio.CancelledError:
            outcome = RunOutcome(status="failed", end_reason="call aborted: VR3 AI is shutting down")
            raise
        except Exception as e:
            self.log.exception("inbound call failed", extra=self.log_extra())
            outcome = RunOutcome(status="failed", end_reason=f"internal error: {type(e).__name__}")
        finally:
            await asyncio.shield(self._teardown(outcome, hangup_reason))

    async def _route_inbound(self) -> Workflow:
        cfg = self.conn.config
        exten = str((self.channel.get("dialplan") or {}).get("exten", ""))
        try:
            return await self.deps.store.route_inbound(
                config_id=cfg.id, organization_id=cfg.organization_id, exten=exten
            )
        except RouteRefused as e:
            level = logging.ERROR if e.level == "error" else logging.WARNING
            self.log.log(level, e.message, extra=self.log_extra(called_number=exten))
            self.conn.record_event(e.level, e.message)
            raise CallFailed(e.message, hangup_reason=e.hangup_reason) from None

    def _context(self, caller: str, called: str) -> dict[str, Any]:
        return {
            **caller_context(caller),
            "called_number": called,
            "direction": self.direction,
            "call_id": self.channel_id,
            "provider": self.conn.provider,
        }

    async def _create_run(self, workflow: Workflow) -> None:
        conn = self.conn
        caller = str((self.channel.get("caller") or {}).get("number", ""))
        called = str((self.channel.get("dialplan") or {}).get("exten", ""))
        context = self._context(caller, called)
        self.context = context
        run = NewRun(workflow.organization_id, workflow.id, conn.config.id, "inbound", context, self.channel_id)
        try:
            await self.deps.store.create_run(self.run_id, run)
        except QuotaExceeded as e:
            msg = f"call to '{called}' refused: {e.reason}"
            self.log.warning(msg, extra=self.log_extra(called_number=called))
            conn.record_event("warning", msg)
            await self.deps.store.record_refused(run, f"quota: {e.reason}")
            raise CallFailed(
                f"quota: {e.reason}", hangup_reason="congestion" if e.code == "concurrency" else "rejected"
            ) from None
        self.run_created = True
        self.mark("run_created")

    # --- outbound ---------------------------------------------------------------------------------
    async def run_outbound(self, workflow: Workflow, endpoint: str, caller_id: str | None) -> None:
        """Runs after the run row exists (created by ``place_call``)."""
        conn = self.conn
        outcome: RunOutcome | None = None
        self.run_created = True
        ring_timeout = self.deps.ring_timeout_s
        self.media.start_recording_check()
        try:
            try:
                await conn.client.originate(
                    endpoint=endpoint,
                    app=conn.config.stasis_app_name,
                    app_args=f"{OUTBOUND_MARK},{self.run_id}",
                    channel_id=self.channel_id,
                    caller_id=caller_id,
                    timeout_s=ring_timeout,
                )
            except AriError as e:
                raise CallFailed(f"originate to '{endpoint}' failed: {e.message} (HTTP {e.status})") from None
            self.mark("originated")
            answered = asyncio.ensure_future(self.answered_by_remote.wait())
            await asyncio.wait(
                {answered, self.caller_gone, self.end_requested},
                timeout=ring_timeout + 15,
                return_when=asyncio.FIRST_COMPLETED,
            )
            answered.cancel()
            if self.end_requested.done():
                reason, status = self.end_requested.result()
                raise CallFailed(reason, status=status)
            if self.caller_gone.done() and not self.answered_by_remote.is_set():
                gone = self.caller_gone.result()
                status, reason = unanswered_outcome(gone, self.dial_status)
                raise CallFailed(reason, status=status)
            if not self.answered_by_remote.is_set():
                raise CallFailed(f"no answer within {ring_timeout} s", status="no_answer")
            self.mark("remote_answered")
            await self.deps.store.set_call_id(self.run_id, self.channel_id)
            outcome = await self._converse(workflow)
        except CallFailed as e:
            outcome = RunOutcome(status=e.status, end_reason=e.reason)
        except asyncio.CancelledError:
            outcome = RunOutcome(status="failed", end_reason="call aborted: VR3 AI is shutting down")
            raise
        except Exception as e:
            self.log.exception("outbound call failed", extra=self.log_extra())
            outcome = RunOutcome(status="failed", end_reason=f"internal error: {type(e).__name__}")
        finally:
            await asyncio.shield(self._teardown(outcome, "normal"))

    # --- shared: media, bridge, agent -------------------------------------------------------------
    async def _converse(self, workflow: Workflow) -> RunOutcome:
        async with self.media.bridged(MEDIA_CONNECT_TIMEOUT_S):
            # Off the critical path: the greeting must not wait for a database write (under a burst
            # of calls SQLite commits queue up for hundreds of milliseconds).
            running = asyncio.create_task(self.deps.store.mark_running(self.run_id))
            try:
                return await self._run_agent(workflow)
            finally:
                try:
                    await running
                except Exception:
                    self.log.exception("could not mark the run running", extra=self.log_extra())

    async def _run_agent(self, workflow: Workflow) -> RunOutcome:
        ctx = CallContext(
            run_id=self.run_id,
            organization_id=workflow.organization_id,
            workflow_id=workflow.id,
            workflow_definition=workflow.definition,
            variables=agent_variables(self.context),
            secrets=await self._secrets(workflow),
            outbound=self.deps.outbound,
        )
        agent = self.deps.agent_factory(ctx)
        agent_task = asyncio.create_task(agent.run(self.session, ctx, self.report), name=f"agent-{self.run_id}")
        media_closed = self.session.closed
        waiters: set[asyncio.Future[Any]] = {agent_task, self.caller_gone, self.media_gone, media_closed}
        waiters.add(self.end_requested)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        agent_exc = agent_task.exception() if agent_task.done() and not agent_task.cancelled() else None
        if agent_exc is not None and not (
            self.asterisk_shutdown or self.caller_gone.done() or self.end_requested.done()
        ):
            self.log.error("agent failed", exc_info=agent_exc, extra=self.log_extra())
        status, reason = conversation_outcome(
            ConversationEnd(
                asterisk_shutdown=self.asterisk_shutdown,
                caller_gone=self.caller_gone.result() if self.caller_gone.done() else None,
                end_requested=self.end_requested.result() if self.end_requested.done() else None,
                agent_done=agent_task.done(),
                agent_error=agent_exc,
                media_gone=self.media_gone.result() if self.media_gone.done() else None,
                media_closed=media_closed.result() if media_closed.done() and not media_closed.cancelled() else None,
                agent_end_reason=self.report.end_reason,
            )
        )
        if not agent_task.done():
            # Closing the media session ends the agent's frames (CallEnded); give it a moment to
            # flush its transcript, then stop it.
            await self.session.close(1000, reason)
            try:
                await asyncio.wait_for(asyncio.shield(agent_task), timeout=2.0)
            except (TimeoutError, Exception):
                agent_task.cancel()
        return RunOutcome(status=status, end_reason=reason)

    async def _secrets(self, workflow: Workflow) -> dict[str, str]:
        """The organization secrets this workflow sends (``CallStore.secrets_for``): a refused one is
        withheld, with an error event on the run."""
        read = await self.deps.store.secrets_for(workflow)
        for use, msg in read.refused:
            self.report.event("error", f"{msg} The secret was not sent.")
            self.log.warning("organization secret withheld", extra=self.log_extra(secret=use.name, host=use.host))
        # From here on this call's lines are redacted with its secrets too.
        self.log = RedactingLogger(log, self.conn.redactor.with_values(read.values.values()))
        return read.values

    # --- teardown ---------------------------------------------------------------------------------
    async def _teardown(self, outcome: RunOutcome | None, hangup_reason: str) -> None:
        conn = self.conn
        client = conn.client
        recording_path: str | None = None
        try:
            # Deleting the media channel makes Asterisk close the socket, which ends the session
            # (and with it the agent's frames) and writes the recording.
            for cid, reason, gone in (
                (self.media_id, "normal", self.media_gone),
                (self.channel_id, hangup_reason, self.caller_gone),
            ):
                if not cid or gone.done():
                    continue
                try:
                    await client.hangup(cid, reason)
                except AriError as e:
                    if e.status != 0:
                        self.log.warning("hangup failed", extra=self.log_extra(error=e.message))
            try:
                await client.delete_bridge(self.bridge_id)
            except AriError:
                pass
            recording_path = await self.media.close_session()
        except Exception:
            self.log.exception("teardown step failed", extra=self.log_extra())
        finally:
            if self.run_created and outcome is not None:
                with_report(outcome, self.report, self.timings, recording_path)
                try:
                    await self.deps.store.finish(self.run_id, outcome)
                except Exception:
                    self.log.exception("could not finish run", extra=self.log_extra())
            if outcome is not None:
                level = logging.INFO if outcome.status == "completed" else logging.WARNING
                self.log.log(
                    level,
                    "call ended",
                    extra=self.log_extra(status=outcome.status, end_reason=outcome.end_reason, timings=self.timings),
                )
            conn.forget(self)

    def log_extra(self, **kw: Any) -> dict[str, Any]:
        return {
            "config_id": self.conn.config.id,
            "run_id": self.run_id,
            "channel_id": self.channel_id,
            "direction": self.direction,
            **kw,
        }


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)
