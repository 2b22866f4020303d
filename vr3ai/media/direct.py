"""The media WebSocket served straight from uvicorn's protocol object, without ASGI.

Why: at 25 concurrent calls, profiles put about half of the platform's CPU in carrying each 20 ms
frame through ASGI: uvicorn's websockets-sansio protocol builds a message dict, queues it, pauses
the socket's reading (an epoll change) until the app's ``receive`` takes it and resumes reading
(another), Starlette wraps and unwraps it, and our reader task wakes up once per frame. At 100
calls that is 5,000 round trips a second on 2 cores. Here the same uvicorn protocol class (same
port, same URL, same handshake code) takes the connection over when the path is the media path:

* inbound frames are handed to the :class:`~vr3ai.media.session.MediaSession` by a plain call from
  ``data_received`` (the session's ``attach`` push mode): no queue, no task wake-up, no
  flow-control toggling. The frames chan_websocket sends (complete, masked, text or binary, and
  pongs) are parsed here in a few lines (unmasking in C); the first frame that is anything else
  (close, fragmented, reserved bits, oversized, a protocol error) hands that byte and all later
  ones to ``websockets``' sans-I/O parser, which handles the rest of the connection as before;
* outbound audio is framed by hand (a server frame is 2-4 header bytes and the payload, never
  masked) and written to the TCP transport; control messages likewise. The close handshake, pings
  and protocol errors stay with ``websockets``/uvicorn.

Every other WebSocket path (there is none today) and every HTTP request still go through ASGI.
The ASGI endpoint in :mod:`vr3ai.media.server` stays as the fallback for servers started without
this protocol class; both share :func:`vr3ai.media.server.serve_media` from MEDIA_START on, so the
checks (expected channel id, Basic auth, format) are the same code.

The transport enrolls with the process's :class:`~vr3ai.media.engine.MediaEngine` at the
handshake. Reading: by the event loop (``data_received``), or, once the process carries
``MediaTuning.tick_reads_from`` media sockets, by the engine's tick reader once per tick
(:mod:`vr3ai.media.tickread`: the transport is its ``TickReadable``). Either way the bytes reach
the same parser, with their arrival time, which the session is handed with each message.

Writing: what sessions send while the media clock services them is collected and sent with one
io_uring submission per tick (the engine's :mod:`vr3ai.media.uring` batch,
``MediaTuning.ring_sends``: the transport is its ``RingWritable``); anything else, and everything
where io_uring is not available, is written to the TCP transport at once. A socket whose transport still buffers bytes
is written through the transport, so nothing overtakes them.

Back-pressure: a peer that stops reading makes the TCP write buffer grow; past ``_MAX_BUFFERED``
(about 15 s of u-law audio) further audio is dropped and counted, control messages still go.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import unquote

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode, apply_mask
from websockets.http11 import Request

from vr3ai.media.engine import MediaEngine
from vr3ai.media.server import MAX_MEDIA_MESSAGE_BYTES, MEDIA_SUBPROTOCOL, MEDIA_WS_PATH, MediaRegistry, serve_media
from vr3ai.media.transport import Deliver

log = logging.getLogger("vr3ai.media.direct")

_MAX_BUFFERED = 256 * 1024
_MAX_FAST_FRAME = MAX_MEDIA_MESSAGE_BYTES
"""Larger frames (and anything unusual) go to websockets' parser, which refuses any message above
:data:`~vr3ai.media.server.MAX_MEDIA_MESSAGE_BYTES` (also one sent in fragments) with close code
1009 (set on the connection in ``handle_connect``)."""
_CLOSE_TIMEOUT_S = 1.0
CLOSE_INVALID_DATA = 1007


_HEAD_7 = struct.Struct("!BB").pack
_HEAD_16 = struct.Struct("!BBH").pack
_HEAD_64 = struct.Struct("!BBQ").pack


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return _HEAD_7(opcode, n) + payload
    if n < 65536:
        return _HEAD_16(opcode, 126, n) + payload  # a 20 ms u-law frame (160 bytes) lands here
    return _HEAD_64(opcode, 127, n) + payload


class DirectTransport:
    """:class:`~vr3ai.media.session.MediaTransport` on the uvicorn protocol object, with push."""

    def __init__(self, proto: MediaWebSocketProtocol, engine: MediaEngine) -> None:
        self._proto = proto
        self._tcp = proto.transport
        loop = proto.loop
        self._inbox: deque[tuple[str | bytes, float]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Deliver | None = None
        self._ended: asyncio.Future[None] = loop.create_future()
        self._failed = False
        self._closed_in = False
        self._closed_out = False
        self._close_code: int | None = None
        self.dropped_sends = 0
        self.suspended_sends = 0
        self._engine = engine
        self._clock = engine.clock
        self.time = engine.clock.time
        self._enrolled = False
        self.ring_fd = -1
        self.ring_slot = -1

    def enroll(self) -> None:
        """The handshake completed: the engine reads this socket on its tick from its threshold
        on, and batches what sessions send while the clock services them."""
        fd = self.tick_fd()
        if fd is not None:
            self.ring_fd = fd
        self._enrolled = True
        self._engine.enroll(self)

    @property
    def close_code(self) -> int | None:
        return self._close_code

    # ---------------------------------------------------------------- from the protocol
    def deliver(self, msg: str | bytes, arrived_at: float) -> None:
        if self._closed_in or self._closed_out or self._failed:
            return  # past our close frame: discard, as uvicorn does, until the peer's reply
        sink = self._sink
        if sink is None:
            self._inbox.append((msg, arrived_at))
            self._wake()
            return
        try:
            sink(msg, arrived_at)
        except Exception as exc:
            # Ends the session's run() with this error (it logs it and closes with 1011).
            self._failed = True
            self._sink = None
            if not self._ended.done():
                self._ended.set_exception(exc)

    def peer_closed(self, code: int | None) -> None:
        self._leave_tick_reads()
        if self._closed_in:
            return
        self._closed_in = True
        self._close_code = code
        self._wake()
        if not self._ended.done():
            self._ended.set_result(None)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # ---------------------------------------------------------------- MediaTransport
    async def receive(self) -> str | bytes | None:
        while True:
            if self._inbox:
                return self._inbox.popleft()[0]
            if self._closed_in:
                return None
            self._waiter = self._proto.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def attach(self, deliver: Deliver, time: Callable[[], float]) -> None:
        """Deliver every further message by calling ``deliver`` from the parser (as the loop or
        the engine's tick read it); returns when the socket is closed, raises what ``deliver``
        raised. ``time`` is not needed: arrival times come from the engine's clock."""
        while self._inbox:
            deliver(*self._inbox.popleft())
        if self._closed_in:
            return
        self._sink = deliver
        try:
            await self._ended
        finally:
            self._sink = None
            self._leave_tick_reads()

    def _leave_tick_reads(self) -> None:
        if self._enrolled:
            self._enrolled = False
            self.ring_fd = -1
            self._engine.release(self)

    # ---------------------------------------------------------------- TickReadable
    def tick_fd(self) -> int | None:
        tcp = self._tcp
        if tcp.is_closing() or tcp.get_extra_info("sslcontext") is not None:
            return None
        sock = tcp.get_extra_info("socket")
        return sock.fileno() if sock is not None else None

    def pause_loop_reading(self) -> None:
        self._tcp.pause_reading()

    def resume_loop_reading(self) -> None:
        if not self._tcp.is_closing():
            self._tcp.resume_reading()

    def tick_sink(self) -> Callable[[bytes, float], None]:
        return self._proto.received

    # ---------------------------------------------------------------- RingWritable
    def write_direct(self, data: bytes) -> None:
        if not self._tcp.is_closing():
            self._tcp.write(data)

    def ring_lost(self) -> None:
        log.error("media socket aborted: a send of its frames never completed")
        self._tcp.abort()  # the session ends as a lost connection (1006) and the call with it

    def _write(self, data: bytes) -> None:
        batch = self._engine.send_batch
        if (
            batch is not None
            and batch.enabled
            and self.ring_fd >= 0
            and self._clock.servicing
            # Bytes still buffered by the transport go first: only an empty buffer may be
            # bypassed (and it stays empty until the batch is sent, at the end of this tick).
            and (self.ring_slot >= 0 or not self._tcp.get_write_buffer_size())
        ):
            batch.add(self, data)
        else:
            self._tcp.write(data)

    def send_bytes(self, data: bytes) -> None:
        if self._closed_out or self._closed_in or self._tcp.is_closing():
            return
        if self._proto.write_paused:
            self.suspended_sends += 1
            if self._tcp.get_write_buffer_size() > _MAX_BUFFERED:
                self.dropped_sends += 1
                return
        n = len(data)
        # The 20 ms u-law frame (160 bytes) is framed here without a call: this runs per call per tick.
        self._write(_HEAD_16(0x82, 126, n) + data if 126 <= n < 65536 else _frame(0x82, data))

    def send_text(self, text: str) -> None:
        if self._closed_out or self._closed_in or self._tcp.is_closing():
            return
        self._write(_frame(0x81, text.encode()))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Queue the close frame behind everything sent so far; the TCP connection is closed when
        the peer answers, or after 1 s if it does not (a peer that stopped reading)."""
        if self._closed_out:
            return
        self._closed_out = True
        if not self._closed_in:
            self._proto.send_close(code, reason)


class MediaWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol that serves the media path itself (see module doc).

    Use :func:`media_ws_protocol` to get the class bound to a registry, and pass it to
    ``uvicorn.Config(ws=...)``."""

    media_registry: ClassVar[MediaRegistry]
    _time: Callable[[], float]
    media_path: ClassVar[str] = MEDIA_WS_PATH
    _direct: DirectTransport | None = None
    _pending: bytes = b""
    _now: float = 0.0
    """Arrival time of the bytes websockets' parser is handling (its handlers are called back)."""
    _parser_owns: bool = False  # once bytes went to websockets' parser, it gets all later ones
    write_paused: bool = False
    """The TCP transport asked us to stop writing (``writable`` cleared); a plain attribute because
    every frame sent checks it."""

    def pause_writing(self) -> None:
        self.write_paused = True
        super().pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        super().resume_writing()

    def data_received(self, data: bytes) -> None:
        d = self._direct
        if d is None or self._parser_owns:
            super().data_received(data)
            return
        self.received(data, self._time())

    def received(self, data: bytes, now: float) -> None:
        """Bytes of the media socket that arrived at ``now`` (read by the loop or by the tick)."""
        d = self._direct
        assert d is not None
        if self._parser_owns:
            self._now = now
            super().data_received(data)
            return
        if (
            not self._pending
            and data[:2] == b"\x82\xfe"  # one final masked binary frame with a 16-bit length...
            and len(data) == 8 + (n := int.from_bytes(data[2:4], "big"))  # ...and nothing else
            and 126 <= n <= _MAX_FAST_FRAME
        ):
            # What a read finds almost every time: one 20 ms audio frame (a call, every 20 ms).
            d.deliver(apply_mask(data[8:], data[4:8]), now)
            return
        buf = self._pending + data if self._pending else data
        self._pending = b""
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = pos + 2
            if n == 126:
                if end - head < 2:
                    break
                n = int.from_bytes(buf[head : head + 2], "big")
                head += 2
            opcode = b0 & 0x0F
            if (
                (b0 & 0xF0) != 0x80  # not final, or reserved bits
                or not b1 & 0x80  # client frames must be masked
                or n == 127
                or n > _MAX_FAST_FRAME
                or opcode not in (0x1, 0x2, 0xA)
                or (opcode == 0xA and n > 125)
            ):
                self._parser_owns = True
                self._now = now
                super().data_received(buf[pos:])
                return
            if end - head < 4 + n:
                break
            payload = apply_mask(buf[head + 4 : head + 4 + n], buf[head : head + 4])
            pos = head + 4 + n
            if opcode == 0x2:
                d.deliver(payload, now)
            elif opcode == 0x1:
                self._deliver_text(payload, now)
            else:
                self.handle_pong(Frame(Opcode.PONG, payload))
            if self.transport.is_closing():
                return
        if pos < end:
            self._pending = buf[pos:]

    def handle_connect(self, event: Request) -> None:
        if unquote(event.path.partition("?")[0]) != self.media_path:
            super().handle_connect(event)
            return
        response = self.conn.accept(event)
        if response.status_code != 101:
            super().handle_connect(event)  # not a valid upgrade: uvicorn sends websockets' reply
            return
        self.request = event
        self.response = response
        self.handshake_initiated = True
        # Whatever uvicorn's ws_max_size says: the parser, which gets every frame the fast path
        # does not take (and all frames once it owns the stream), refuses bigger messages with 1009.
        self.conn.max_message_size = min(self.conn.max_message_size or MAX_MEDIA_MESSAGE_BYTES, MAX_MEDIA_MESSAGE_BYTES)
        offered = [t.strip() for h in event.headers.get_all("Sec-WebSocket-Protocol") for t in h.split(",")]
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        if MEDIA_SUBPROTOCOL not in offered:
            # Without `media` Asterisk still works, but a reply naming a protocol it did not offer
            # would fail its handshake check.
            log.info("media socket without subprotocol 'media'", extra={"peer": peer})
        # The same reply as uvicorn's ASGI accept: "Connection: Upgrade" as the whole value, no
        # extensions (chan_websocket offers none), the subprotocol only if offered.
        del self.response.headers["Date"]
        self.response.headers.update(
            (name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in self.default_headers
        )
        if MEDIA_SUBPROTOCOL in offered:
            self.response.headers["Sec-WebSocket-Protocol"] = MEDIA_SUBPROTOCOL
        self.handshake_complete = True
        self.conn.send_response(self.response)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.start_keepalive()
        engine = self.media_registry.engine
        self._time = engine.clock.time
        self._direct = DirectTransport(self, engine)
        self._direct.enroll()
        task = self.loop.create_task(self._serve(peer, event.headers.get("Authorization")))
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)

    async def _serve(self, peer: str, authorization: str | None) -> None:
        assert self._direct is not None
        try:
            await serve_media(self._direct, self.media_registry, peer, authorization)
        except Exception:
            log.exception("media socket handler failed", extra={"peer": peer})
        finally:
            if self.close_timer is None:
                self.transport.close()

    # ---------------------------------------------------------------- frames
    def handle_text(self, event: Frame) -> None:
        if self._direct is None:
            super().handle_text(event)
        elif event.fin:
            self._deliver_text(event.data, self._now)
        else:
            self.curr_msg_data_type = "text"
            self.frames = [event.data]  # type: ignore[list-item]

    def handle_bytes(self, event: Frame) -> None:
        if self._direct is None:
            super().handle_bytes(event)
        elif event.fin:
            self._direct.deliver(bytes(event.data), self._now)
        else:
            self.curr_msg_data_type = "bytes"
            self.frames = [event.data]  # type: ignore[list-item]

    def handle_cont(self, event: Frame) -> None:
        d = self._direct
        if d is None:
            super().handle_cont(event)
            return
        self.frames.append(event.data)  # type: ignore[arg-type]
        if event.fin:
            data = b"".join(self.frames)
            self.frames = []
            if self.curr_msg_data_type == "text":
                self._deliver_text(data, self._now)
            else:
                d.deliver(data, self._now)

    def _deliver_text(self, data: Any, now: float) -> None:
        d = self._direct
        assert d is not None
        try:
            text = bytes(data).decode()
        except UnicodeDecodeError:
            # A broken peer, not our failure: say so once, close with 1007 (invalid data).
            log.warning("media socket sent a text frame that is not UTF-8; closing with 1007")
            self._protocol_close(CLOSE_INVALID_DATA, "invalid UTF-8")
            return
        d.deliver(text, now)

    def _protocol_close(self, code: int, reason: str) -> None:
        d = self._direct
        if d is not None:
            d.peer_closed(code)
        self.send_close(code, reason)

    def send_close(self, code: int, reason: str) -> None:
        """Our close frame, behind everything written so far; the TCP connection is closed when the
        peer answers (handle_close) or after 1 s if it does not."""
        if self.close_sent or self.transport.is_closing():
            return
        try:
            self.conn.send_close(code, reason)
        except InvalidState:
            return
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.close_timer = self.loop.call_later(_CLOSE_TIMEOUT_S, self.transport.close)

    # ---------------------------------------------------------------- endings
    def handle_close(self, event: Frame) -> None:
        super().handle_close(event)
        d = self._direct
        if d is not None:
            rcvd = self.conn.close_rcvd
            d.peer_closed(rcvd.code if rcvd is not None else 1005)

    def handle_parser_exception(self) -> None:
        super().handle_parser_exception()
        d = self._direct
        if d is not None:
            sent = self.conn.close_sent
            d.peer_closed(sent.code if sent is not None else 1002)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.write_paused = False  # as uvicorn sets ``writable``: the buffer will never drain now
        d = self._direct
        if d is not None:
            d.peer_closed(1006)


def media_ws_protocol(registry: MediaRegistry, path: str = MEDIA_WS_PATH) -> type[MediaWebSocketProtocol]:
    """The protocol class for ``uvicorn.Config(ws=...)``, bound to the app's media registry."""
    attrs = {"media_registry": registry, "media_path": path}
    return type("BoundMediaWebSocketProtocol", (MediaWebSocketProtocol,), attrs)
