"""Test doubles for fuzzing the ARI control plane without an Asterisk.

* :class:`FakeAriClient` stands in for ``AriClient``: it records every request and, driven by its own
  seeded ``random.Random``, succeeds or fails the way a real Asterisk 22 does under races (404 gone,
  409 not in Stasis, 422 not bridgeable, 500, 0 = no HTTP answer). Channels the test declared gone
  answer 404 like the real thing, because "the caller hung up a millisecond ago" is the race that
  matters most.
* :class:`FakeMediaRegistry` stands in for ``vr3ai.media.server.MediaRegistry``: ``expect()`` hands
  out futures the test resolves with a :class:`FakeSession`, fails, or leaves pending.
* :class:`FakeSession` implements ``CallAudio`` plus the call owner's optional hooks (``end``,
  ``save_recording``, ``close``) and counts how it was closed, so leaks show up.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from vr3ai.media.interface import CallEnded, CallEvent, Dtmf
from vr3ai.telephony.ari.client import HANGUP_REASONS, AriError

FAIL_STATUSES = (404, 409, 422, 500, 0)


@dataclass
class Request:
    method: str
    target: str
    args: dict[str, Any] = field(default_factory=dict)
    result: str = "ok"


class FakeAriClient:
    """Records requests; each one fails with probability ``fail_rate`` (random status)."""

    def __init__(self, rng: random.Random, *, fail_rate: float = 0.1, yield_rate: float = 0.3) -> None:
        self.rng = rng
        self.fail_rate = fail_rate
        self.yield_rate = yield_rate
        self.base_url = "http://fake-asterisk:8088/ari"
        self.username = "vr3ai"
        self.requests: list[Request] = []
        self.gone: set[str] = set()
        """Channel ids that no longer exist in the fake Asterisk (404 for everything)."""
        self.channel_list: list[dict[str, Any]] = []
        self.bridge_list: list[dict[str, Any]] = []
        self.on_media_hangup: Any = None
        """Callback(channel_id): Asterisk closes the media socket when its channel is deleted."""
        self.closed = False
        self.on_external_media: Any = None
        """Callback(channel_id) run before the externalMedia reply: Asterisk regularly connects the
        media socket (and the media channel enters Stasis) before the REST reply is read."""
        self.fail_next: dict[str, int] = {}
        """Force the next request of a method name to fail with this status (explicit tests)."""

    async def _step(self, name: str, target: str, args: dict[str, Any], gone_status: int | None = 404) -> None:
        # A real request suspends at least once; sometimes more, so other tasks interleave.
        await asyncio.sleep(0)
        if self.rng.random() < self.yield_rate:
            for _ in range(self.rng.randint(1, 3)):
                await asyncio.sleep(0)
        req = Request(name, target, args)
        self.requests.append(req)
        forced = self.fail_next.pop(name, None)
        if forced is not None:
            req.result = str(forced)
            raise AriError(forced, f"forced failure of {name}", name, target)
        if gone_status is not None and target in self.gone:
            req.result = str(gone_status)
            raise AriError(gone_status, "Channel not found", name, target)
        if self.rng.random() < self.fail_rate:
            status = self.rng.choice(FAIL_STATUSES)
            req.result = str(status)
            raise AriError(status, "fake failure" if status else "timed out talking to fake", name, target)

    def count(self, name: str, target: str | None = None) -> int:
        return sum(1 for r in self.requests if r.method == name and (target is None or r.target == target))

    async def aclose(self) -> None:
        self.closed = True

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        ok_missing: bool = False,
    ) -> Any:
        try:
            await self._step("request", path, {"method": method, "params": params}, gone_status=None)
        except AriError as e:
            if e.status == 404 and ok_missing:
                return None
            raise
        if "websocket_client" in path:
            return [{"attribute": "uri", "value": "ws://127.0.0.1:8000/api/v1/telephony/ws/ari"}]
        return None

    async def info(self) -> dict[str, Any]:
        await self._step("info", "", {}, gone_status=None)
        return {"system": {"version": "22.10.1"}}

    async def module(self, name: str) -> dict[str, Any] | None:
        await self._step("module", name, {}, gone_status=None)
        return {"name": name, "status": "Running"}

    async def may_write(self) -> bool:
        await self._step("may_write", "", {}, gone_status=None)
        return True

    async def channels(self) -> list[dict[str, Any]]:
        await self._step("channels", "", {}, gone_status=None)
        return list(self.channel_list)

    async def channel(self, channel_id: str) -> dict[str, Any] | None:
        try:
            await self._step("channel", channel_id, {})
        except AriError as e:
            if e.status == 404:
                return None
            raise
        return {"id": channel_id, "state": "Up"}

    async def answer(self, channel_id: str) -> None:
        await self._step("answer", channel_id, {})

    async def hangup(self, channel_id: str, reason: str = "normal") -> bool:
        assert reason in HANGUP_REASONS, reason
        try:
            await self._step("hangup", channel_id, {"reason": reason})
        except AriError as e:
            if e.status == 404:
                return False
            raise
        self.gone.add(channel_id)
        if self.on_media_hangup is not None:
            self.on_media_hangup(channel_id)
        return True

    async def external_media(
        self,
        *,
        app: str,
        channel_id: str,
        external_host: str,
        fmt: str = "ulaw",
        transport_data: str | None = None,
        variables: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        await self._step("external_media", channel_id, {"app": app, "external_host": external_host}, None)
        if self.on_external_media is not None:
            self.on_external_media(channel_id)
        return {"id": channel_id, "name": f"WebSocket/{external_host}/0x1", "state": "Down"}

    async def originate(
        self,
        *,
        endpoint: str,
        app: str,
        app_args: str,
        channel_id: str,
        caller_id: str | None = None,
        timeout_s: int = 30,
        formats: str | None = "ulaw",
    ) -> dict[str, Any]:
        await self._step("originate", channel_id, {"endpoint": endpoint, "app_args": app_args}, None)
        return {"id": channel_id, "state": "Down"}

    async def bridges(self) -> list[dict[str, Any]]:
        await self._step("bridges", "", {}, gone_status=None)
        return list(self.bridge_list)

    async def create_bridge(self, bridge_id: str, name: str = "") -> dict[str, Any]:
        await self._step("create_bridge", bridge_id, {"name": name}, None)
        return {"id": bridge_id, "bridge_type": "mixing", "channels": []}

    async def add_channels(self, bridge_id: str, channel_ids: list[str]) -> None:
        await self._step("add_channels", bridge_id, {"channels": list(channel_ids)}, None)
        for cid in channel_ids:
            if cid in self.gone:
                # Asterisk: 400 "channel not found" for a channel that no longer exists.
                raise AriError(400, "Channel not found", "add_channels", bridge_id)

    async def delete_bridge(self, bridge_id: str) -> bool:
        try:
            await self._step("delete_bridge", bridge_id, {})
        except AriError as e:
            if e.status == 404:
                return False
            raise
        return True


# --------------------------------------------------------------------------------------------------
# Media side
# --------------------------------------------------------------------------------------------------


@dataclass
class FakeCloseInfo:
    code: int | None
    reason: str
    initiator: str


class FakeSession:
    """``CallAudio`` with nothing behind it, shaped like ``MediaSession`` for the call owner
    (``closed`` and ``recording`` futures, ``close(code, reason)``); ends when the owner closes it,
    the agent hangs up, or the test drops it as Asterisk would."""

    sample_rate = 8000

    def __init__(self, channel_id: str, recording_path: Any = None) -> None:
        self.channel_id = channel_id
        self.recording_path = recording_path
        loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[FakeCloseInfo] = loop.create_future()
        self.recording: asyncio.Future[Any] = loop.create_future()
        self._events: asyncio.Queue[CallEvent | None] = asyncio.Queue()
        self._frames: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.close_calls = 0
        self.played = 0

    # --- CallAudio --------------------------------------------------------------------------------
    async def frames(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._frames.get()
            if item is None:
                return
            yield item

    async def events(self) -> AsyncIterator[CallEvent]:
        while True:
            item = await self._events.get()
            if item is None:
                return
            yield item

    def play(self, pcm: bytes, mark: str | None = None) -> None:
        self.played += len(pcm)

    def flush(self) -> int:
        return 0

    def heard_ms_of(self, mark: str) -> int | None:
        return None

    def queued_ms(self) -> int:
        return 0

    def clock_ms(self) -> int:
        return 0

    async def hangup(self, reason: str) -> None:
        await asyncio.sleep(0)
        self._finish(FakeCloseInfo(1000, f"hangup:{reason}", "local"))

    # --- what the call owner uses -------------------------------------------------------------------
    async def close(self, code: int = 1000, reason: str = "closed") -> None:
        self.close_calls += 1
        await asyncio.sleep(0)
        self._finish(FakeCloseInfo(code, f"local:{reason}", "local"))

    # --- test side ------------------------------------------------------------------------------------
    def caller_audio(self, pcm: bytes) -> None:
        if not self.closed.done():
            self._frames.put_nowait(pcm)

    def dtmf(self, digit: str) -> None:
        if not self.closed.done():
            self._events.put_nowait(Dtmf(digit, 0))

    def remote_close(self, code: int = 1000) -> None:
        """Asterisk closed the socket (media channel deleted, or the network dropped)."""
        self._finish(FakeCloseInfo(code, f"remote:{code}", "remote"))

    def _finish(self, info: FakeCloseInfo) -> None:
        if self.closed.done():
            return
        self.closed.set_result(info)
        self._events.put_nowait(CallEnded(info.reason, 0))
        self._events.put_nowait(None)
        self._frames.put_nowait(None)
        # The real session writes its WAV in a worker thread after the socket closed.
        self.recording.set_result(self.recording_path)


@dataclass
class _Expectation:
    channel_id: str
    future: asyncio.Future[Any]
    basic_auth: tuple[str, str] | None
    recording_path: Any


class FakeMediaRegistry:
    """Same contract as ``MediaRegistry.expect/cancel``; the test decides when Asterisk connects."""

    def __init__(self) -> None:
        self.expected: dict[str, _Expectation] = {}
        self.sessions: dict[str, FakeSession] = {}
        self.expect_calls: list[str] = []
        self.cancel_calls: list[str] = []

    def expect(
        self,
        channel_id: str,
        basic_auth: tuple[str, str] | None = None,
        *,
        recording_path: Any = None,
        config: Any = None,
    ) -> asyncio.Future[Any]:
        if not channel_id or not isinstance(channel_id, str):
            raise ValueError("channel_id must be a non-empty string")
        exp = self.expected.get(channel_id)
        if (exp is not None and not exp.future.done()) or channel_id in self.sessions:
            raise ValueError(f"channel id already registered: {channel_id}")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.expected[channel_id] = _Expectation(channel_id, future, basic_auth, recording_path)
        self.expect_calls.append(channel_id)
        return future

    def cancel(self, channel_id: str) -> bool:
        self.cancel_calls.append(channel_id)
        exp = self.expected.pop(channel_id, None)
        if exp is None:
            return False
        exp.future.cancel()
        return True

    @property
    def pending(self) -> list[str]:
        """Expectations nobody resolved or withdrew yet."""
        return [cid for cid, exp in self.expected.items() if not exp.future.done()]

    def connect(self, channel_id: str) -> FakeSession | None:
        """Asterisk's media socket arrives with MEDIA_START for ``channel_id``."""
        exp = self.expected.get(channel_id)
        if exp is None or exp.future.done():
            return None
        del self.expected[channel_id]
        session = FakeSession(channel_id, exp.recording_path)
        self.sessions[channel_id] = session
        exp.future.set_result(session)
        return session

    def refuse(self, channel_id: str, exc: BaseException) -> bool:
        """MEDIA_START arrived but the session could not be built (e.g. unsupported format)."""
        exp = self.expected.pop(channel_id, None)
        if exp is None or exp.future.done():
            return False
        exp.future.set_exception(exc)
        return True

    def media_channel_gone(self, channel_id: str) -> None:
        session = self.sessions.get(channel_id)
        if session is not None:
            session.remote_close(1000)

    def open_sessions(self) -> list[FakeSession]:
        return [s for s in self.sessions.values() if not s.closed.done()]
