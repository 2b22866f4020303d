"""The media WebSocket endpoint Asterisk's chan_websocket dials: ``/api/v1/telephony/ws/ari``.

``vr3ai serve`` carries this socket without ASGI (:mod:`vr3ai.media.direct`, uvicorn's own
protocol object pushing frames into the session); the ASGI endpoint below is the fallback for
servers started without that protocol class. From MEDIA_START on both run :func:`serve_media`.

Flow per connection: accept (subprotocol ``media`` when offered) -> wait at most
``media_start_timeout`` (2 s) for MEDIA_START -> look its ``channel_id`` up in the
:class:`MediaRegistry` -> check the HTTP Basic credentials the call was registered with (every platform call has them:
:mod:`vr3ai.core.media_auth`) -> build a
:class:`~vr3ai.media.session.MediaSession`, resolve the call owner's future with it, and read the
socket until it closes.

Why a registry keyed by channel id, filled *before* the call owner asks Asterisk for the channel:
Asterisk dials the media socket from a detached thread right after building the REST response, so
MEDIA_START regularly arrives before the call owner has the externalMedia reply. The URL carries
nothing per call (``v()`` query parameters are sticky per websocket_client section), so the channel
id we choose and pass as ``channelId`` is the only reliable key.

Why credentials are checked after MEDIA_START and not during the upgrade: which credentials apply
depends on the call, and the call is only known from MEDIA_START. A failed check does not consume
the expectation, so a stranger who guessed a channel id cannot knock out the real call.

Handshake strictness (Asterisk validates the 101 response by hand): the reply must be
``HTTP/1.1 101``, carry ``Connection: Upgrade`` as the whole value, no ``Sec-WebSocket-Extensions``,
and a subprotocol only if Asterisk offered it. uvicorn's websockets-sansio protocol (the default
with websockets >= 14) does exactly that when the client offers no extension, which chan_websocket
never does; ``tests/unit/media/test_server.py`` replays Asterisk's exact request bytes to check it.

Why the transport sends "eagerly": the shared media clock services every session from one task and
must not await each socket. Starlette's ``send`` completes without suspending unless the TCP buffer
is above its high-water mark, so :class:`StarletteTransport` runs the send coroutine inline and only
falls back to a task (keeping order) when it actually has to wait.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import os
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, WebSocket

from vr3ai.media.engine import MediaEngine
from vr3ai.media.protocol import Malformed, MediaStart, detect_format, parse_event
from vr3ai.media.session import MediaConfig, MediaFormatError, MediaSession
from vr3ai.media.transport import Deliver, MediaTransport, pump

log = logging.getLogger("vr3ai.media.server")

MEDIA_WS_PATH = "/api/v1/telephony/ws/ari"
MEDIA_SUBPROTOCOL = "media"

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009

MAX_MEDIA_MESSAGE_BYTES = 64 * 1024
"""Largest media WebSocket message accepted; a larger one closes the socket with 1009. chan_websocket
sends one frame of audio per message (160 bytes of u-law per 20 ms; 7,680 at 192 kHz) and short
text commands: 64 KiB is far above anything it sends and bounds what a peer can make us hold."""

_CLOSE_TIMEOUT_S = 1.0
_MAX_BACKLOG = 500
"""Messages held while a send waits for the TCP buffer (10 s of frames): beyond that the peer is not
reading and further audio is dropped rather than hoarded."""


# ------------------------------------------------------------------------------------------------
# Transport adapter
# ------------------------------------------------------------------------------------------------


class AcceptedTransport(MediaTransport, Protocol):
    """An accepted media socket before its session exists: MEDIA_START is read with ``receive``."""

    async def receive(self) -> str | bytes | None:
        """Next message; ``None`` once the socket is closed."""
        ...


class StarletteTransport:
    """:class:`~vr3ai.media.session.MediaTransport` over a Starlette/FastAPI ``WebSocket``."""

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket
        self._backlog: deque[dict[str, Any]] | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._dead = False
        self._closed_in = False
        self._closed_out = False
        self._close_code: int | None = None
        self.suspended_sends = 0
        self.dropped_sends = 0

    @property
    def close_code(self) -> int | None:
        return self._close_code

    def send_text(self, text: str) -> None:
        self._submit({"type": "websocket.send", "text": text})

    def send_bytes(self, data: bytes) -> None:
        self._submit({"type": "websocket.send", "bytes": data})

    def _submit(self, message: dict[str, Any]) -> None:
        if self._dead or self._closed_out:
            return
        backlog = self._backlog
        if backlog is not None:
            if len(backlog) >= _MAX_BACKLOG and "bytes" in message:
                self.dropped_sends += 1
                return
            backlog.append(message)
            return
        coro = self._ws.send(message)
        try:
            yielded = coro.send(None)
        except StopIteration:
            return
        except Exception:
            self._dead = True
            log.debug("media socket send failed", exc_info=True)
            return
        # The send has to wait (back-pressure): finish it, then whatever queues behind it, in order.
        self.suspended_sends += 1
        self._backlog = deque()
        self._drainer = asyncio.get_running_loop().create_task(self._drain(coro, yielded))

    async def _drain(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        try:
            await _finish_started(coro, yielded)
            while self._backlog:
                await self._ws.send(self._backlog.popleft())
        except Exception:
            self._dead = True
            log.debug("media socket send failed", exc_info=True)
        finally:
            self._backlog = None
            self._drainer = None

    async def attach(self, deliver: Deliver, time: Callable[[], float]) -> None:
        await pump(self.receive, deliver, time)

    async def receive(self) -> str | bytes | None:
        if self._closed_in:
            return None
        try:
            message = await self._ws.receive()
        except RuntimeError:
            # Starlette refuses to receive after a disconnect it already reported.
            self._closed_in = True
            return None
        kind = message["type"]
        if kind == "websocket.receive":
            text = message.get("text")
            data = message.get("bytes")
            # A server run without vr3ai.server.uvicorn_config (which caps messages in the
            # parser) may hand over more: refuse it here all the same.
            size = len(text.encode()) if text is not None else len(data) if data is not None else 0
            if size > MAX_MEDIA_MESSAGE_BYTES:
                log.warning("media socket sent a message of %d bytes; closing with 1009", size)
                self._closed_in = True
                self._close_code = CLOSE_MESSAGE_TOO_BIG
                await self.close(CLOSE_MESSAGE_TOO_BIG, "message too big")
                return None
            if text is not None:
                return str(text)
            return bytes(data) if data is not None else b""
        self._closed_in = True
        code = message.get("code")
        self._close_code = int(code) if isinstance(code, int) else None
        return None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send the close frame after whatever is queued (HANGUP). Bounded: a peer that stopped
        reading blocks uvicorn's send until its TCP connection dies, and nobody may wait that long."""
        if self._closed_out:
            return
        self._closed_out = True
        drainer = self._drainer
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                if drainer is not None:
                    await asyncio.shield(drainer)
                await self._ws.close(code, reason)
        except TimeoutError:
            log.info("media peer is not reading; close frame not sent")
        except Exception:
            log.debug("media socket close failed", exc_info=True)
        finally:
            if drainer is not None and not drainer.done():
                drainer.cancel()


async def _finish_started(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    """Run a coroutine that was stepped by hand and suspended on ``yielded`` to completion.

    Mirrors what ``asyncio.Task`` does with an awaited future: wait until it is done, then resume the
    coroutine (which reads the future's result itself)."""
    try:
        while True:
            if isinstance(yielded, asyncio.Future):
                await asyncio.wait((yielded,))
            else:
                await asyncio.sleep(0)
            try:
                yielded = coro.send(None)
            except StopIteration:
                return
    except BaseException:
        coro.close()
        raise


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------


@dataclass
class Expectation:
    """A call waiting for its media socket (see :meth:`MediaRegistry.expect`)."""

    channel_id: str
    future: asyncio.Future[MediaSession]
    basic_auth: tuple[str, str] | None
    recording_path: Path | None
    config: MediaConfig | None


class MediaRegistry:
    """Calls waiting for their media socket, and the sessions that are live.

    The call owner registers the channel id it will pass as ``channelId`` *before* it POSTs
    externalMedia, then awaits the returned future (with its own timeout: cancelling the future,
    e.g. through ``asyncio.wait_for``, withdraws the expectation). The media socket's side:
    :meth:`lookup` (checks), :meth:`claim`, :meth:`started`, :meth:`ended`.

    ``engine``: the process's media engine (``vr3ai.app`` makes one); without one the registry
    makes its own."""

    def __init__(
        self,
        config: MediaConfig | None = None,
        *,
        engine: MediaEngine | None = None,
        media_start_timeout: float = 2.0,
        require_credentials: bool = False,
    ) -> None:
        self.config = config or MediaConfig()
        self.engine = engine if engine is not None else MediaEngine()
        self.require_credentials = require_credentials
        """Refuse to register a call without ``basic_auth``: the platform's registry sets it, so no
        call's media socket can ever be opened without the configuration's credentials."""
        self.media_start_timeout = media_start_timeout
        self._expected: dict[str, Expectation] = {}
        self._active: dict[str, MediaSession] = {}

    def expect(
        self,
        channel_id: str,
        basic_auth: tuple[str, str] | None = None,
        *,
        recording_path: str | os.PathLike[str] | None = None,
        config: MediaConfig | None = None,
    ) -> asyncio.Future[MediaSession]:
        """Register a channel id; the future resolves with its session once MEDIA_START arrives.

        ``basic_auth`` = (username, password) that Asterisk's websocket_client section sends; the
        upgrade's ``Authorization: Basic`` must then match. ``recording_path``: write a stereo WAV
        there when the call ends. The future fails with ``MediaFormatError`` if Asterisk announces a
        format we cannot handle."""
        if not channel_id or not isinstance(channel_id, str):
            raise ValueError("channel_id must be a non-empty string")
        if basic_auth is None and self.require_credentials:
            raise ValueError("media credentials are required: this configuration has no media username and password")
        if channel_id in self._expected or channel_id in self._active:
            raise ValueError(f"channel id already registered: {channel_id}")
        future: asyncio.Future[MediaSession] = asyncio.get_running_loop().create_future()
        self._expected[channel_id] = Expectation(
            channel_id,
            future,
            basic_auth,
            Path(recording_path) if recording_path is not None else None,
            config,
        )

        def _withdraw(fut: asyncio.Future[MediaSession]) -> None:
            exp = self._expected.get(channel_id)
            if fut.cancelled() and exp is not None and exp.future is fut:
                del self._expected[channel_id]

        future.add_done_callback(_withdraw)
        return future

    def cancel(self, channel_id: str) -> bool:
        """Withdraw an expectation (the call failed before its media connected)."""
        exp = self._expected.pop(channel_id, None)
        if exp is None:
            return False
        exp.future.cancel()
        return True

    def is_expected(self, channel_id: str) -> bool:
        return channel_id in self._expected

    @property
    def pending(self) -> list[str]:
        return list(self._expected)

    @property
    def active(self) -> dict[str, MediaSession]:
        """Live sessions by channel id (read-only view; do not mutate)."""
        return self._active

    def lookup(self, channel_id: str) -> Expectation | None:
        """The live expectation for ``channel_id``, left in place (a failed check must not
        consume it: a stranger who guessed a channel id cannot knock out the real call)."""
        exp = self._expected.get(channel_id)
        if exp is not None and exp.future.done():
            del self._expected[channel_id]
            return None
        return exp

    def claim(self, channel_id: str) -> Expectation | None:
        """Take the expectation for ``channel_id`` (its socket passed the checks)."""
        exp = self.lookup(channel_id)
        if exp is not None:
            del self._expected[channel_id]
        return exp

    def started(self, session: MediaSession) -> None:
        """``session`` is live (listed in :attr:`active` until :meth:`ended`)."""
        self._active[session.channel_id] = session

    def ended(self, session: MediaSession) -> None:
        if self._active.get(session.channel_id) is session:
            del self._active[session.channel_id]


def basic_auth_matches(header: str | None, expected: tuple[str, str]) -> bool:
    """Constant-time check of an ``Authorization: Basic`` header against (user, password)."""
    if not header:
        return False
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        presented = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    wanted = f"{expected[0]}:{expected[1]}".encode()
    return hmac.compare_digest(presented, wanted)


# ------------------------------------------------------------------------------------------------
# Endpoint
# ------------------------------------------------------------------------------------------------


async def handle_media_socket(websocket: WebSocket, registry: MediaRegistry) -> None:
    """Serve one chan_websocket connection from accept to close."""
    client = websocket.client
    peer = f"{client.host}:{client.port}" if client else "?"
    offered = list(websocket.scope.get("subprotocols") or [])
    authorization = websocket.headers.get("authorization")
    if MEDIA_SUBPROTOCOL not in offered:
        # Asterisk sends whatever websocket_client.conf `protocols` says; without `media` it still
        # works, but a reply naming a protocol it did not offer would fail its handshake check.
        log.info("media socket without subprotocol 'media'", extra={"peer": peer})
    try:
        await websocket.accept(subprotocol=MEDIA_SUBPROTOCOL if MEDIA_SUBPROTOCOL in offered else None)
    except Exception:
        log.info("media socket went away during the handshake", extra={"peer": peer})
        return
    await serve_media(StarletteTransport(websocket), registry, peer, authorization)


async def serve_media(
    transport: AcceptedTransport, registry: MediaRegistry, peer: str, authorization: str | None
) -> None:
    """An accepted media socket, from MEDIA_START to close, whatever carries it (ASGI or direct)."""
    try:
        first = await asyncio.wait_for(transport.receive(), registry.media_start_timeout)
    except TimeoutError:
        log.warning(
            "no MEDIA_START within %.1f s; closing media socket",
            registry.media_start_timeout,
            extra={"peer": peer},
        )
        await transport.close(CLOSE_PROTOCOL_ERROR, "MEDIA_START expected")
        return
    if first is None:
        log.info("media socket closed before MEDIA_START", extra={"peer": peer})
        return
    event = parse_event(first) if isinstance(first, str) else None
    if not isinstance(event, MediaStart):
        # e.g. a binary frame, or Asterisk < 22.7 whose MEDIA_START has no channel_id to correlate.
        why = event.reason if isinstance(event, Malformed) else type(event).__name__
        log.warning("first media message is not a usable MEDIA_START (%s); closing", why, extra={"peer": peer})
        await transport.close(CLOSE_PROTOCOL_ERROR, "MEDIA_START expected")
        return
    assert isinstance(first, str)
    channel_id = event.channel_id
    extra = {"peer": peer, "channel_id": channel_id}
    exp = registry.lookup(channel_id)
    if exp is None:
        log.warning("media socket for unknown channel id; closing", extra=extra)
        await transport.close(CLOSE_POLICY_VIOLATION, "unknown channel")
        return
    if exp.basic_auth is not None and not basic_auth_matches(authorization, exp.basic_auth):
        log.warning(
            "media socket failed Basic auth; closing",
            extra={**extra, "authorization_present": authorization is not None},
        )
        await transport.close(CLOSE_POLICY_VIOLATION, "unauthorized")
        return
    registry.claim(channel_id)
    try:
        session = MediaSession(
            transport,
            event,
            control_format=detect_format(first),
            config=exp.config or registry.config,
            engine=registry.engine,
            recording_path=exp.recording_path,
        )
    except MediaFormatError as exc:
        log.error("unsupported media format: %s", exc, extra={**extra, "format": event.format})
        if not exp.future.done():
            exp.future.set_exception(exc)
        await transport.close(CLOSE_UNSUPPORTED_DATA, "unsupported format")
        return
    registry.started(session)
    log.info(
        "media session started",
        extra={**extra, "format": event.format, "optimal_frame_size": event.optimal_frame_size, "ptime": event.ptime},
    )
    exp.future.set_result(session)
    try:
        await session.run()
    finally:
        registry.ended(session)


def media_router(registry: MediaRegistry, path: str = MEDIA_WS_PATH) -> APIRouter:
    """A router with the media WebSocket endpoint; ``app.include_router(media_router(registry))``."""
    router = APIRouter()

    @router.websocket(path)
    async def asterisk_media_socket(websocket: WebSocket) -> None:
        await handle_media_socket(websocket, registry)

    return router
