"""Everything VR3 AI holds for one ARI telephony configuration while it is active.

The pooled REST client, the events WebSocket, the live calls keyed by channel id, the reconcile
pass after every (re)connect, and a short memory of refused calls so that the configuration's
status explains them (``no matching phone number...``) without anyone reading logs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from datetime import UTC, datetime
from typing import Any

from vr3ai.core.runs import RunOutcome
from vr3ai.db.models import Workflow
from vr3ai.files import private_dir
from vr3ai.logs import RedactingLogger, Redactor
from vr3ai.telephony.ari.calls import OUTBOUND_MARK, Call
from vr3ai.telephony.ari.client import AriClient, AriError, safe_ws_uri
from vr3ai.telephony.ari.config import AriConfig
from vr3ai.telephony.ari.events import AriEventStream, ConnectionState, sanitize_event
from vr3ai.telephony.deps import CallDeps

log = logging.getLogger("vr3ai.telephony.ari.connection")

STATUS_TEXT_MAX = 500
"""Longest status text (last error, recent event) handed to pages and the API."""

MAX_REFUSING = 64
"""Hang-ups of flood-refused calls in flight at most; beyond that a refused channel is left to
Asterisk (a real one ends it when the caller gives up; reconcile removes what is left), so a
hostile server that never answers cannot make us pile up requests."""


class StartLimiter:
    """A token bucket for new calls of one configuration: ``rate`` per second on average, up to
    ``burst`` at once.

    Every StasisStart of an unknown channel costs a database lookup and, if routed, a run row; an
    Asterisk (or whoever answers at the configuration's ARI URL) may send them as fast as it likes.
    """

    def __init__(self, rate: float, burst: int, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.capacity = float(max(1, burst))
        self.clock = clock
        self.tokens = self.capacity
        self.updated = clock()

    def allow(self) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class AriConnection:
    provider = "ari"
    """The registry key of this kind of connection (``vr3ai.telephony.registry``)."""

    def __init__(self, deps: CallDeps, config: AriConfig) -> None:
        self.deps = deps
        self.config = config
        # Channel and bridge ids we mint carry this tag, so reconcile touches only our own leftovers
        # even when several configurations share one Asterisk.
        self.tag = config.id.replace("-", "")[:8]
        # This configuration's own passwords, and nobody else's: see vr3ai.logs.
        self.redactor = Redactor([config.app_password, config.media_password])
        self.log = RedactingLogger(log, self.redactor)
        self.client = AriClient(
            config.ari_endpoint_url, config.stasis_app_name, config.app_password, policy=deps.outbound
        )
        self.stream = AriEventStream(
            config_id=config.id,
            endpoint_url=config.ari_endpoint_url,
            app=config.stasis_app_name,
            password=config.app_password,
            client=self.client,
            on_event=self.on_event,
            on_connected=self.reconcile,
            policy=deps.outbound,
        )
        self.calls: dict[str, Call] = {}
        self.live: set[Call] = set()
        self.recent_events: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)
        self.reconcile_report: dict[str, Any] = {}
        self._stopping = False
        self.draining = False
        """Set on graceful shutdown: live calls go on, new ones are refused."""
        self._background: set[asyncio.Task[Any]] = set()
        self.start_limiter = StartLimiter(deps.call_starts_per_s, deps.call_starts_burst)
        self.flood_refused = 0
        """Calls refused by ``start_limiter`` since this connection started."""
        self._flood_unreported = 0
        self._refusing: set[asyncio.Task[Any]] = set()

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self.stream.start()

    async def stop(self, reason: str = "telephony configuration stopped") -> None:
        self._stopping = True
        for call in list(self.live):
            call.request_end(reason, "failed")
        tasks = [c.task for c in self.live if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for task in list(self._refusing):
            task.cancel()
        await self.stream.stop()
        await self.client.aclose()

    def status(self) -> dict[str, Any]:
        """What the API and the pages show. Texts are ours (no server's answer is quoted in them);
        redacting with this configuration's values and capping is the second line of defence."""
        ari = self.stream.status()
        if ari.get("last_error"):
            ari["last_error"] = self._shown(str(ari["last_error"]))
        return {
            "ari": ari,
            "active_calls": len(self.live),
            "recent_events": [{**e, "message": self._shown(str(e.get("message") or ""))} for e in self.recent_events],
            "reconcile": self.reconcile_report,
        }

    def _shown(self, text: str) -> str:
        return self.redactor.redact(text)[:STATUS_TEXT_MAX]

    def record_event(self, level: str, message: str) -> None:
        self.recent_events.append({"at": datetime.now(UTC).isoformat(), "level": level, "message": message})

    def recording_path(self, run_id: str) -> str:
        path = private_dir(self.deps.data_dir / "recordings")
        return str((path / f"{run_id}.wav").resolve())

    # --- event routing ----------------------------------------------------------------------------
    def on_event(self, raw: Any) -> None:
        event = sanitize_event(raw)
        if event is None:
            return
        etype = event["type"]
        channel = event.get("channel")
        cid = channel["id"] if channel else None
        if etype == "Dial":
            peer = event.get("peer")
            call = self.calls.get(peer["id"]) if peer else None
            if call is not None:
                call.feed(event)
            return
        if not isinstance(cid, str):
            return
        call = self.calls.get(cid)
        if call is not None:
            call.feed(event)
            return
        if etype == "StasisStart":
            # Every StasisStart of a channel we do not know costs work (a hang-up request, a lookup, a
            # run): all of them share the configuration's new-call rate, so no flood of any kind
            # (new calls, fake orphans, calls while draining) piles up tasks or rows.
            if not self.start_limiter.allow():
                self._refuse_flood(str(cid))
                return
            if self._stopping or self.draining:
                # Shutting down: refuse new calls at once rather than leave them ringing in Stasis.
                self.record_event("warning", "call refused: VR3 AI is shutting down")
                self._spawn(self._hangup_quietly(str(cid), "congestion"))
                return
            self._on_new_channel(event, channel or {})

    def _on_new_channel(self, event: dict[str, Any], channel: dict[str, Any]) -> None:
        cid = channel["id"]
        args = event["args"]
        if cid.startswith(("vr3m-", "vr3o-")) or (args and args[0] == OUTBOUND_MARK):
            # One of our own channels that no live call owns (left over from before a restart).
            self.log.warning("hanging up orphan channel", extra={"config_id": self.config.id, "channel_id": cid})
            self._spawn(self._hangup_quietly(cid))
            return
        call = Call(self, self.deps, direction="inbound", channel=channel)
        self._register(call)
        call.task = asyncio.create_task(call.run_inbound(), name=f"call-{call.run_id}")

    def _refuse_flood(self, cid: str) -> None:
        """Over the new-call rate: hang up at once, no database work, one report per second."""
        self.flood_refused += 1
        if len(self._refusing) < MAX_REFUSING:
            task = asyncio.create_task(self._hangup_quietly(cid, "congestion"))
            self._refusing.add(task)
            task.add_done_callback(self._refusing.discard)
        if self._flood_unreported == 0:
            asyncio.get_running_loop().call_later(1.0, self._report_flood)
        self._flood_unreported += 1

    def _report_flood(self) -> None:
        count, self._flood_unreported = self._flood_unreported, 0
        limit = self.start_limiter.rate
        msg = (
            f"{count} call(s) refused: more than {limit:g} new calls per second on this configuration "
            "(VR3AI_CALL_STARTS_PER_S)"
        )
        log.warning(msg, extra={"config_id": self.config.id, "refused": count})
        self.record_event("warning", msg)

    def _register(self, call: Call) -> None:
        self.live.add(call)
        for cid in call.channel_ids:
            self.calls[cid] = call

    def forget(self, call: Call) -> None:
        self.live.discard(call)
        for cid in call.channel_ids:
            if self.calls.get(cid) is call:
                del self.calls[cid]

    async def _best_effort(self, coro: Any) -> bool:
        # One object that cannot be removed must not stop the cleanup of the others.
        try:
            return bool(await coro)
        except AriError as e:
            extra = {"config_id": self.config.id, "error": e.message, "ari_message": e.remote}
            self.log.warning("reconcile step failed", extra=extra)
            return False

    def _spawn(self, coro: Any) -> None:
        # Keep a reference: the event loop only holds weak references to tasks.
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _hangup_quietly(self, cid: str, reason: str = "normal") -> None:
        try:
            await self.client.hangup(cid, reason)
        except AriError:
            pass

    # --- outbound ---------------------------------------------------------------------------------
    def prepare_outbound(self, run_id: str) -> Call:
        """Register an outbound call before its run row exists: reconcile then knows the run is live,
        and events for the channel (which may beat the originate's REST reply) find their owner."""
        call = Call(self, self.deps, direction="outbound", run_id=run_id)
        call.channel_id = self.outbound_channel_id(run_id)
        call.channel = {"id": call.channel_id}
        self._register(call)
        return call

    def outbound_channel_id(self, run_id: str) -> str:
        return f"vr3o-{self.tag}-{run_id.replace('-', '')[:20]}"

    def start_outbound(self, call: Call, workflow: Workflow, endpoint: str, caller_id: str | None) -> None:
        call.task = asyncio.create_task(call.run_outbound(workflow, endpoint, caller_id), name=f"call-{call.run_id}")

    # --- reconcile --------------------------------------------------------------------------------
    async def reconcile(self) -> None:
        """After every (re)connect: clean our leftovers in Asterisk and close runs that cannot finish."""
        t0 = time.monotonic()
        app = self.config.stasis_app_name
        live_channels = {cid for call in self.live for cid in call.channel_ids}
        live_bridges = {call.bridge_id for call in self.live}
        channels = await self.client.channels()
        present = {ch.get("id") for ch in channels}
        removed_channels = 0
        for ch in channels:
            cid = ch.get("id", "")
            dialplan = ch.get("dialplan") or {}
            in_our_app = dialplan.get("app_name") == "Stasis" and str(dialplan.get("app_data", "")).split(",")[0] == app
            ours = cid.startswith((f"vr3m-{self.tag}-", f"vr3o-{self.tag}-")) or in_our_app
            if ours and cid not in live_channels:
                removed_channels += int(await self._best_effort(self.client.hangup(cid)))
        removed_bridges = 0
        for bridge in await self.client.bridges():
            bid = bridge.get("id", "")
            if bid.startswith(f"vr3b-{self.tag}-") and bid not in live_bridges:
                removed_bridges += int(await self._best_effort(self.client.delete_bridge(bid)))
        # Live calls whose channels vanished while we were disconnected (e.g. Asterisk restarted).
        lost_calls = 0
        for call in list(self.live):
            if call.channel_id and call.channel_id not in present and call.task is not None:
                if call.direction == "outbound" and not call.answered_by_remote.is_set():
                    continue  # still dialing; its own events decide
                call.request_end("Asterisk lost the call while the ARI connection was down", "failed")
                lost_calls += 1
        # Runs of this configuration that no live call owns can never finish.
        live_runs = {call.run_id for call in self.live}
        closed_runs = 0
        for run in await self.deps.store.unfinished(self.config.id):
            if run.id in live_runs:
                continue
            done = await self.deps.store.finish(
                run.id,
                RunOutcome(
                    status="failed",
                    end_reason="call lost: VR3 AI or Asterisk restarted while the call was up",
                    events=[{"level": "error", "message": "closed by reconcile after (re)connect", "at_ms": None}],
                ),
            )
            closed_runs += int(done)
        self.reconcile_report = {
            "at": datetime.now(UTC).isoformat(),
            "removed_channels": removed_channels,
            "removed_bridges": removed_bridges,
            "ended_lost_calls": lost_calls,
            "closed_runs": closed_runs,
            "duration_ms": round((time.monotonic() - t0) * 1000, 1),
        }
        if removed_channels or removed_bridges or closed_runs or lost_calls:
            self.log.warning("reconcile cleaned up", extra={"config_id": self.config.id, **self.reconcile_report})

    # --- diagnostics helpers ----------------------------------------------------------------------
    async def media_unreachable_text(self) -> str:
        name = self.config.websocket_client_name
        ours = f"{self.deps.public_url().replace('http', 'ws', 1)}/api/v1/telephony/ws/ari"
        uri = await self.websocket_client_uri()
        where = f"the URI {uri}" if uri else f"the uri in websocket_client.conf [{name}]"
        return (
            f"Asterisk could not reach the media WebSocket at {where} (ChannelDestroyed cause 3, no route to "
            f"destination). This VR3 AI listens at {ours}: check the uri, that VR3 AI is reachable from "
            "Asterisk, and tls_enabled = yes for wss://."
        )

    async def websocket_client_uri(self) -> str | None:
        """Read the uri of our websocket_client section through ARI's sorcery config API, if exposed."""
        try:
            data = await self.client.request(
                "GET",
                f"/asterisk/config/dynamic/res_websocket_client/websocket_client/{self.config.websocket_client_name}",
            )
        except AriError:
            return None
        if isinstance(data, list):
            for item in data:
                if isinstance(item, dict) and item.get("attribute") == "uri":
                    return safe_ws_uri(item.get("value"))
        return None

    @property
    def connected(self) -> bool:
        return self.stream.state == ConnectionState.CONNECTED
