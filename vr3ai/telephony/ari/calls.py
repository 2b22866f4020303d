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
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vr3ai.agent.base import CallContext, RunReport
from vr3ai.core.calls import RouteRefused
from vr3ai.core.quota import QuotaExceeded
from vr3ai.core.recordings import file_size
from vr3ai.core.runs import RunOutcome
from vr3ai.db.models import Workflow, new_id
from vr3ai.logs import RedactingLogger
from vr3ai.telephony.ari.client import AriError
from vr3ai.telephony.callerid import agent_variables, caller_context
from vr3ai.telephony.deps import AgentFactory, CallDeps

if TYPE_CHECKING:
    from vr3ai.telephony.ari.connection import AriConnection

log = logging.getLogger("vr3ai.telephony.ari.calls")

OUTBOUND_MARK = "vr3ai-outbound"
MEDIA_CONNECT_TIMEOUT_S = 12.0
"""Asterisk retries the media connection reconnect_attempts × (connection_timeout + interval)."""

# Q.850 causes worth explaining to a person.
CAUSE_TEXT = {
    1: "unallocated number",
    3: "no route to destination",
    16: "normal clearing",
    17: "user busy",
    18: "no user responding",
    19: "no answer",
    21: "call rejected",
    27: "destination out of order",
    31: "normal, unspecified",
    34: "no circuit available",
    38: "network out of order",
    58: "bearer capability not available",
}

__all__ = ["OUTBOUND_MARK", "AgentFactory", "Call", "CallFailed"]


class CallFailed(Exception):
    def __init__(self, reason: str, status: str = "failed", hangup_reason: str = "normal") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.hangup_reason = hangup_reason


@dataclass
class ChannelGone:
    cause: int | None
    cause_txt: str


def short_id() -> str:
    return secrets.token_hex(6)


class Call:
    def __init__(
        self,
        conn: AriConnection,
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
        self.session: Any = None
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
        self._recording_check: asyncio.Task[str | None] | None = None

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
                self._mark("media_stasis_start")
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

    def _mark(self, name: str) -> None:
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
            self._start_recording_check()
            if self.channel.get("state") != "Up":
                try:
                    await conn.client.answer(self.channel_id)
                except AriError as e:
                    # Usually the caller hung up a few ms after StasisStart (404/409/412).
                    if e.status in (404, 409, 412) or self.caller_gone.done():
                        raise CallFailed("caller hung up before the call was answered", status="completed") from None
                    raise CallFailed(f"could not answer the call: {e.message} (HTTP {e.status})") from None
                self._mark("answered")
            outcome = await self._converse(workflow)
        except CallFailed as e:
            outcome = RunOutcome(status=e.status, end_reason=e.reason)
            hangup_reason = e.hangup_reason
        except asyncio.CancelledError:
            outcome = RunOutcome(status="failed", end_reason="call aborted: VR3 AI is shutting down")
            raise
        except Exception as e:
            self.log.exception("inbound call failed", extra=self._log_extra())
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
            self.log.log(level, e.message, extra=self._log_extra(called_number=exten))
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
        try:
            await self.deps.store.create_run(
                run_id=self.run_id,
                organization_id=workflow.organization_id,
                workflow_id=workflow.id,
                telephony_configuration_id=conn.config.id,
                direction="inbound",
                context=context,
                call_id=self.channel_id,
            )
        except QuotaExceeded as e:
            msg = f"call to '{called}' refused: {e.reason}"
            self.log.warning(msg, extra=self._log_extra(called_number=called))
            conn.record_event("warning", msg)
            await self.deps.store.record_refused(
                organization_id=workflow.organization_id,
                workflow_id=workflow.id,
                telephony_configuration_id=conn.config.id,
                direction="inbound",
                context=context,
                call_id=self.channel_id,
                reason=f"quota: {e.reason}",
            )
            raise CallFailed(
                f"quota: {e.reason}", hangup_reason="congestion" if e.code == "concurrency" else "rejected"
            ) from None
        self.run_created = True
        self._mark("run_created")

    # --- outbound ---------------------------------------------------------------------------------
    async def run_outbound(self, workflow: Workflow, endpoint: str, caller_id: str | None) -> None:
        """Runs after the run row exists (created by ``place_call``)."""
        conn = self.conn
        outcome: RunOutcome | None = None
        self.run_created = True
        ring_timeout = self.deps.ring_timeout_s
        self._start_recording_check()
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
            self._mark("originated")
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
                status, reason = self._unanswered_outcome(gone)
                raise CallFailed(reason, status=status)
            if not self.answered_by_remote.is_set():
                raise CallFailed(f"no answer within {ring_timeout} s", status="no_answer")
            self._mark("remote_answered")
            await self.deps.store.set_call_id(self.run_id, self.channel_id)
            outcome = await self._converse(workflow)
        except CallFailed as e:
            outcome = RunOutcome(status=e.status, end_reason=e.reason)
        except asyncio.CancelledError:
            outcome = RunOutcome(status="failed", end_reason="call aborted: VR3 AI is shutting down")
            raise
        except Exception as e:
            self.log.exception("outbound call failed", extra=self._log_extra())
            outcome = RunOutcome(status="failed", end_reason=f"internal error: {type(e).__name__}")
        finally:
            await asyncio.shield(self._teardown(outcome, "normal"))

    def _unanswered_outcome(self, gone: ChannelGone) -> tuple[str, str]:
        ds = self.dial_status.upper()
        cause = gone.cause
        text = f"cause {cause} ({CAUSE_TEXT.get(cause or -1, gone.cause_txt or 'unknown')})"
        if ds == "BUSY" or cause == 17:
            return "busy", f"callee busy: {text}"
        if ds in ("NOANSWER", "CANCEL") or cause in (18, 19):
            return "no_answer", f"no answer: {text}"
        if ds in ("CHANUNAVAIL", "CONGESTION"):
            return "failed", f"could not reach the callee ({ds.lower()}): {text}"
        return "failed", f"call ended before answer: {text}"

    # --- shared: media, bridge, agent -------------------------------------------------------------
    async def _converse(self, workflow: Workflow) -> RunOutcome:
        conn = self.conn
        cfg = conn.config
        media_future = self.deps.media.expect(
            self.media_id, basic_auth=cfg.media_auth(), recording_path=await self._recording_target()
        )
        try:
            try:
                await conn.client.create_bridge(self.bridge_id, name=f"vr3ai-{self.run_id[:8]}")
            except AriError as e:
                raise CallFailed(f"could not create the mixing bridge: {e.message} (HTTP {e.status})") from None
            self._mark("bridge_created")
            try:
                await conn.client.external_media(
                    app=cfg.stasis_app_name, channel_id=self.media_id, external_host=cfg.websocket_client_name
                )
            except AriError as e:
                if e.status == 400 and "external_host" in e.remote:
                    raise CallFailed(
                        f"Asterisk has no websocket_client named '{cfg.websocket_client_name}' (HTTP 400). "
                        "Check websocket_client.conf and the WebSocket Client Name of this configuration "
                        "(then: module reload res_websocket_client.so)."
                    ) from None
                raise CallFailed(f"externalMedia failed: {e.message} (HTTP {e.status})") from None
            self._mark("external_media_requested")
            await self._wait_media(media_future)
            self.session = media_future.result()
            self._mark("media_connected")
            await self._add_to_bridge()
            self._mark("bridged")
            # Off the critical path: the greeting must not wait for a database write (under a burst
            # of calls SQLite commits queue up for hundreds of milliseconds).
            running = asyncio.create_task(self.deps.store.mark_running(self.run_id))
            try:
                return await self._run_agent(workflow)
            finally:
                try:
                    await running
                except Exception:
                    self.log.exception("could not mark the run running", extra=self._log_extra())
        finally:
            if not media_future.done():
                self.deps.media.cancel(self.media_id)
            elif not media_future.cancelled():
                exc = media_future.exception()  # retrieved, so asyncio does not log it as lost
                if exc is None and self.session is None:
                    # Connected, but the call failed before adopting it: close it here, since
                    # teardown only knows adopted sessions.
                    orphan = media_future.result()
                    await orphan.close(1000, "call setup failed")

    def _start_recording_check(self) -> None:
        # Runs while the call is answered (inbound) or rings (outbound): the quota costs no setup time.
        self._recording_check = asyncio.create_task(
            self.deps.store.recording_refusal(self.organization_id), name=f"recording-quota-{self.run_id}"
        )
        # A call that fails before it is bridged never awaits the check: retrieve its outcome anyway.
        self._recording_check.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _recording_target(self) -> str | None:
        """Where to record this call, or None (with a run event) when the organization's recording
        quota is used up: the call goes on, unrecorded."""
        check = self._recording_check
        try:
            refusal = await check if check is not None else None
        except Exception:
            log.exception("recording quota check failed; recording the call", extra=self._log_extra())
            refusal = None
        if refusal is not None:
            self.report.event("warning", refusal)
            return None
        return self.conn.recording_path(self.run_id)

    async def _wait_media(self, media_future: asyncio.Future[Any]) -> None:
        stasis = asyncio.ensure_future(self.media_in_stasis.wait())
        deadline = time.monotonic() + MEDIA_CONNECT_TIMEOUT_S
        try:
            while not (media_future.done() and self.media_in_stasis.is_set()):
                self._raise_if_media_refused(media_future)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CallFailed(
                        f"the media WebSocket did not connect within {MEDIA_CONNECT_TIMEOUT_S:.0f} s "
                        f"(websocket_client '{self.conn.config.websocket_client_name}')"
                    )
                waiters = {self.caller_gone, self.media_gone, self.end_requested}
                if not media_future.done():
                    waiters.add(media_future)
                if not self.media_in_stasis.is_set():
                    waiters.add(stasis)
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if self.caller_gone.done():
                    raise CallFailed("caller hung up during call setup", status="completed")
                if self.end_requested.done():
                    raise CallFailed(self.end_requested.result()[0])
                if self.media_gone.done():
                    gone = self.media_gone.result()
                    if gone.cause == 3:
                        raise CallFailed(await self.conn.media_unreachable_text())
                    raise CallFailed(f"media channel ended during setup: cause {gone.cause} {gone.cause_txt}")
                self._raise_if_media_refused(media_future)
            self._raise_if_media_refused(media_future)
        finally:
            stasis.cancel()

    @staticmethod
    def _raise_if_media_refused(media_future: asyncio.Future[Any]) -> None:
        if media_future.done() and not media_future.cancelled() and media_future.exception() is not None:
            raise CallFailed(f"media connection refused: {media_future.exception()}")

    async def _add_to_bridge(self) -> None:
        # Both channels must be in Stasis (the media channel's StasisStart was awaited); a 422 can
        # still race the caller hanging up, so retry briefly before giving up.
        for attempt in range(3):
            try:
                await self.conn.client.add_channels(self.bridge_id, [self.channel_id, self.media_id])
                return
            except AriError as e:
                if self.caller_gone.done():
                    raise CallFailed("caller hung up during call setup", status="completed") from None
                if e.status in (409, 422) and attempt < 2:
                    await asyncio.sleep(0.05)
                    continue
                raise CallFailed(f"could not bridge the call: {e.message} (HTTP {e.status})") from None

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
        status, reason = "completed", "call ended"
        info = media_closed.result() if media_closed.done() and not media_closed.cancelled() else None
        agent_hung_up = info is not None and info.initiator == "local" and info.reason.startswith("hangup:")
        agent_exc = agent_task.exception() if agent_task.done() and not agent_task.cancelled() else None
        if self.asterisk_shutdown:
            status, reason = "failed", "Asterisk shut down or restarted while the call was up"
        elif self.caller_gone.done():
            gone = self.caller_gone.result()
            reason = "caller hung up" if gone.cause in (None, 16, 0) else f"caller hung up (cause {gone.cause})"
        elif self.end_requested.done():
            reason, status = self.end_requested.result()
        elif agent_exc is not None:
            self.log.error("agent failed", exc_info=agent_exc, extra=self._log_extra())
            status, reason = "failed", f"agent error: {type(agent_exc).__name__}: {agent_exc}"
        elif agent_hung_up or (agent_task.done() and info is None and not self.media_gone.done()):
            reason = self.report.end_reason or "agent ended the call"
        elif self.media_gone.done():
            gone = self.media_gone.result()
            status, reason = "failed", f"media channel ended unexpectedly (cause {gone.cause} {gone.cause_txt})"
        elif info is not None:
            code = f", close code {info.code}" if info.code else ""
            status, reason = "failed", f"media connection dropped ({info.reason}{code})"
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
            self.log.warning("organization secret withheld", extra=self._log_extra(secret=use.name, host=use.host))
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
                        self.log.warning("hangup failed", extra=self._log_extra(error=e.message))
            try:
                await client.delete_bridge(self.bridge_id)
            except AriError:
                pass
            if self.session is not None:
                await self.session.close(1000, "call ended")
                try:
                    path = await asyncio.wait_for(asyncio.shield(self.session.recording), timeout=5)
                    recording_path = str(path) if path else None
                except TimeoutError:
                    self.log.warning("recording not written in time", extra=self._log_extra())
        except Exception:
            self.log.exception("teardown step failed", extra=self._log_extra())
        finally:
            if self.run_created and outcome is not None:
                outcome.transcript = [line.as_dict() for line in self.report.transcript]
                outcome.metrics = [
                    *self.report.metrics,
                    {"call_timings_ms": self.timings, "node_path": list(self.report.node_path)},
                ]
                outcome.variables = dict(self.report.variables)
                outcome.events = list(self.report.events)
                outcome.recording_path = recording_path
                outcome.recording_bytes = file_size(recording_path)
                try:
                    await self.deps.store.finish(self.run_id, outcome)
                except Exception:
                    self.log.exception("could not finish run", extra=self._log_extra())
            if outcome is not None:
                level = logging.INFO if outcome.status == "completed" else logging.WARNING
                self.log.log(
                    level,
                    "call ended",
                    extra=self._log_extra(status=outcome.status, end_reason=outcome.end_reason, timings=self.timings),
                )
            conn.forget(self)

    def _log_extra(self, **kw: Any) -> dict[str, Any]:
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
