"""The media half of one call: recording quota, mixing bridge, ``externalMedia``, the media
WebSocket and bridging the caller to it.

It runs in its call's own task and acts on the facts that call records (``Call.feed``): it is the
call owner's helper, not a second owner. Split from ``calls.py`` so the call's flow (route, run,
answer or originate, converse, teardown) reads in one screenful per step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

from vr3ai.agent.base import RunReport
from vr3ai.logs import RedactingLogger
from vr3ai.telephony.ari.client import AriError
from vr3ai.telephony.ari.host import CallHost
from vr3ai.telephony.ari.outcome import CallFailed, ChannelGone
from vr3ai.telephony.deps import CallDeps

if TYPE_CHECKING:
    from vr3ai.media.session import MediaSession


class CallSide(Protocol):
    """What the media leg uses of its call (``calls.Call``): ids, facts, the report, the log."""

    conn: CallHost
    deps: CallDeps
    log: RedactingLogger
    report: RunReport
    run_id: str
    organization_id: str
    channel_id: str
    media_id: str
    bridge_id: str
    session: MediaSession | None
    caller_gone: asyncio.Future[ChannelGone]
    media_gone: asyncio.Future[ChannelGone]
    end_requested: asyncio.Future[tuple[str, str]]
    media_in_stasis: asyncio.Event

    def mark(self, name: str) -> None: ...

    def log_extra(self, **kw: Any) -> dict[str, Any]: ...


class MediaLeg:
    def __init__(self, call: CallSide) -> None:
        self.call = call
        self._recording_check: asyncio.Task[str | None] | None = None

    def start_recording_check(self) -> None:
        # Runs while the call is answered (inbound) or rings (outbound): the quota costs no setup time.
        call = self.call
        self._recording_check = asyncio.create_task(
            call.deps.store.recording_refusal(call.organization_id), name=f"recording-quota-{call.run_id}"
        )
        # A call that fails before it is bridged never awaits the check: retrieve its outcome anyway.
        self._recording_check.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _recording_target(self) -> str | None:
        """Where to record this call, or None (with a run event) when the organization's recording
        quota is used up: the call goes on, unrecorded."""
        call = self.call
        check = self._recording_check
        try:
            refusal = await check if check is not None else None
        except Exception:
            call.log.exception("recording quota check failed; recording the call", extra=call.log_extra())
            refusal = None
        if refusal is not None:
            call.report.event("warning", refusal)
            return None
        return call.conn.recording_path(call.run_id)

    async def close_session(self) -> str | None:
        """Close the adopted session (if any) and wait briefly for its recording: its path, or None."""
        call = self.call
        if call.session is None:
            return None
        await call.session.close(1000, "call ended")
        try:
            path = await asyncio.wait_for(asyncio.shield(call.session.recording), timeout=5)
        except TimeoutError:
            call.log.warning("recording not written in time", extra=call.log_extra())
            return None
        return str(path) if path else None

    @asynccontextmanager
    async def bridged(self, connect_timeout_s: float) -> AsyncIterator[MediaSession]:
        """The call's media session, connected (within ``connect_timeout_s`` of the request) and
        bridged with the caller; on leaving, a media expectation that never connected is withdrawn
        and a session the call never adopted is closed."""
        call = self.call
        cfg = call.conn.config
        media_future = call.deps.media.expect(
            call.media_id, basic_auth=cfg.media_auth(), recording_path=await self._recording_target()
        )
        try:
            await self._request_media()
            await self._wait_media(media_future, connect_timeout_s)
            call.session = media_future.result()
            call.mark("media_connected")
            await self._add_to_bridge()
            call.mark("bridged")
            yield call.session
        finally:
            if not media_future.done():
                call.deps.media.cancel(call.media_id)
            elif not media_future.cancelled():
                exc = media_future.exception()  # retrieved, so asyncio does not log it as lost
                if exc is None and call.session is None:
                    # Connected, but the call failed before adopting it: close it here, since
                    # teardown only knows adopted sessions.
                    orphan = media_future.result()
                    await orphan.close(1000, "call setup failed")

    async def _request_media(self) -> None:
        call = self.call
        cfg = call.conn.config
        client = call.conn.client
        try:
            await client.create_bridge(call.bridge_id, name=f"vr3ai-{call.run_id[:8]}")
        except AriError as e:
            raise CallFailed(f"could not create the mixing bridge: {e.message} (HTTP {e.status})") from None
        call.mark("bridge_created")
        try:
            await client.external_media(
                app=cfg.stasis_app_name, channel_id=call.media_id, external_host=cfg.websocket_client_name
            )
        except AriError as e:
            if e.status == 400 and "external_host" in e.remote:
                raise CallFailed(
                    f"Asterisk has no websocket_client named '{cfg.websocket_client_name}' (HTTP 400). "
                    "Check websocket_client.conf and the WebSocket Client Name of this configuration "
                    "(then: module reload res_websocket_client.so)."
                ) from None
            raise CallFailed(f"externalMedia failed: {e.message} (HTTP {e.status})") from None
        call.mark("external_media_requested")

    async def _wait_media(self, media_future: asyncio.Future[Any], timeout_s: float) -> None:
        call = self.call
        stasis = asyncio.ensure_future(call.media_in_stasis.wait())
        deadline = time.monotonic() + timeout_s
        try:
            while not (media_future.done() and call.media_in_stasis.is_set()):
                _raise_if_media_refused(media_future)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CallFailed(
                        f"the media WebSocket did not connect within {timeout_s:.0f} s "
                        f"(websocket_client '{call.conn.config.websocket_client_name}')"
                    )
                waiters = {call.caller_gone, call.media_gone, call.end_requested}
                if not media_future.done():
                    waiters.add(media_future)
                if not call.media_in_stasis.is_set():
                    waiters.add(stasis)
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if call.caller_gone.done():
                    raise CallFailed("caller hung up during call setup", status="completed")
                if call.end_requested.done():
                    raise CallFailed(call.end_requested.result()[0])
                if call.media_gone.done():
                    gone = call.media_gone.result()
                    if gone.cause == 3:
                        raise CallFailed(await call.conn.media_unreachable_text())
                    raise CallFailed(f"media channel ended during setup: cause {gone.cause} {gone.cause_txt}")
                _raise_if_media_refused(media_future)
            _raise_if_media_refused(media_future)
        finally:
            stasis.cancel()

    async def _add_to_bridge(self) -> None:
        # Both channels must be in Stasis (the media channel's StasisStart was awaited); a 422 can
        # still race the caller hanging up, so retry briefly before giving up.
        call = self.call
        for attempt in range(3):
            try:
                await call.conn.client.add_channels(call.bridge_id, [call.channel_id, call.media_id])
                return
            except AriError as e:
                if call.caller_gone.done():
                    raise CallFailed("caller hung up during call setup", status="completed") from None
                if e.status in (409, 422) and attempt < 2:
                    await asyncio.sleep(0.05)
                    continue
                raise CallFailed(f"could not bridge the call: {e.message} (HTTP {e.status})") from None


def _raise_if_media_refused(media_future: asyncio.Future[Any]) -> None:
    if media_future.done() and not media_future.cancelled() and media_future.exception() is not None:
        raise CallFailed(f"media connection refused: {media_future.exception()}")
