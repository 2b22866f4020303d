"""The media WebSocket, served by our own small asyncio protocol on the HTTP server's port.

Why not ASGI: at 25 concurrent calls, profiles put about half of the platform's CPU in carrying
each 20 ms frame through ASGI: uvicorn's WebSocket protocol builds a message dict, queues it,
pauses the socket's reading (an epoll change) until the app's ``receive`` takes it and resumes
reading (another), Starlette wraps and unwraps it, and our reader task wakes up once per frame. At
100 calls that is 5,000 round trips a second on 2 cores. Here:

* inbound frames are handed to the :class:`~vr3ai.media.session.MediaSession` by a plain call from
  ``data_received``, with their arrival time: no queue, no task wake-up, no flow-control toggling.
  The frames chan_websocket sends (complete, masked, text or binary, and pongs) are parsed here in
  a few lines; the first frame that is anything else (close, fragmented, reserved bits, above
  :data:`~vr3ai.media.server.MAX_MEDIA_MESSAGE_BYTES`, a protocol error) hands that byte and all
  later ones to ``websockets``' sans-I/O :class:`~websockets.server.ServerProtocol`;
* outbound audio is framed by hand (a server frame is 2-4 header bytes and the payload, never
  masked) and written to the TCP transport; control messages likewise.

Why our own protocol around ``websockets``' public sans-I/O API: it does the opening handshake
(its 101 reply, "Connection: Upgrade" and no extensions, passes Asterisk's strict check), the close
handshake, pings, the message size limit and every frame we do not parse ourselves, through its
documented methods only (``receive_data``, ``events_received``, ``data_to_send``, ``accept``,
``send_response``, ``send_close``, ``send_ping``, ``fail``). Before this, the media path subclassed
uvicorn's own WebSocket protocol and used about 16 of its private attributes, code that uvicorn
changes between releases.

How it shares the port: uvicorn's ``ws`` setting takes the protocol class for upgraded WebSocket
connections (``uvicorn.Config(ws=...)``, a documented setting whose type is ``type[asyncio.Protocol]``;
:func:`vr3ai.server.uvicorn_config`). uvicorn parses the HTTP request, sees ``Upgrade: websocket``
and hands the connection over: it makes the protocol (the keyword arguments it passes describe its
own state; we take nothing from them), calls ``connection_made`` with the TCP transport and
``data_received`` with the request's bytes. From there on the connection is ours alone: the call
owner closes it (HANGUP), and :meth:`MediaEngine.aclose` closes what is left at shutdown. A request
for any other WebSocket path is answered 404 (the media socket is the only WebSocket we serve).
The alternative, a listener of ours in front of uvicorn handing other connections on, needs either
uvicorn's HTTP protocol objects or a byte proxy: more code, and the same dependency.

The transport enrolls with the process's :class:`~vr3ai.media.engine.MediaEngine` at the
handshake. Reading: by the event loop (``data_received``), or, once the process carries
``MediaTuning.tick_reads_from`` media sockets, by the engine's tick reader once per tick
(:mod:`vr3ai.media.tickread`: the transport is its ``TickReadable``). Either way the bytes reach
the same parser, with their arrival time, which the session is handed with each message.

Writing: what sessions send while the media clock services them is collected and sent with one
io_uring submission per tick (the engine's :mod:`vr3ai.media.uring` batch,
``MediaTuning.ring_sends``: the transport is its ``RingWritable``); anything else, and everything
where io_uring is not available, is written to the TCP transport at once. A socket whose transport
still buffers bytes is written through the transport, so nothing overtakes them.

Back-pressure: a peer that stops reading makes the TCP write buffer grow; past ``_MAX_BUFFERED``
(about 15 s of u-law audio) further audio is dropped and counted, control messages still go.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, cast
from urllib.parse import unquote

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from vr3ai.media.engine import MediaEngine
from vr3ai.media.server import MAX_MEDIA_MESSAGE_BYTES, MEDIA_SUBPROTOCOL, MEDIA_WS_PATH, MediaRegistry, serve_media
from vr3ai.media.transport import Deliver

log = logging.getLogger("vr3ai.media.direct")

_MAX_BUFFERED = 256 * 1024
_MAX_FAST_FRAME = MAX_MEDIA_MESSAGE_BYTES
"""Larger frames (and anything unusual) go to websockets' parser, which refuses any message above
:data:`~vr3ai.media.server.MAX_MEDIA_MESSAGE_BYTES` (also one sent in fragments) with close code 1009."""
_MAX_REQUEST = 16 * 1024
"""Bytes of an upgrade request we wait for before letting websockets judge it (it refuses long
lines and too many headers itself)."""
_CLOSE_TIMEOUT_S = 1.0
_PING_INTERVAL_S = 20.0
_PING_TIMEOUT_S = 20.0
"""Keepalive as uvicorn's WebSocket protocols did it: a ping every 20 s, the connection failed
(1011) when its pong has not come 20 s later (a peer gone without a FIN)."""
CLOSE_INVALID_DATA = 1007
CLOSE_INTERNAL_ERROR = 1011

_HEAD_7 = struct.Struct("!BB").pack
_HEAD_16 = struct.Struct("!BBH").pack
_HEAD_64 = struct.Struct("!BBQ").pack
_from = int.from_bytes
_REPEAT = tuple(_from(b"\x01\x00\x00\x00" * words, "little") for words in range(65))
"""For 0-64 words: the integer that, times a 4-byte key, repeats it that many times."""


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return _HEAD_7(opcode, n) + payload
    if n < 65536:
        return _HEAD_16(opcode, 126, n) + payload  # a 20 ms u-law frame (160 bytes) lands here
    return _HEAD_64(opcode, 127, n) + payload


def unmask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte masking ``key`` repeated (RFC 6455 5.3), as two Python
    integers: one XOR over the whole payload, linear in its size (websockets' C helper for this
    is not part of its public API). Up to 256 bytes in whole words (a 20 ms frame: 160 of u-law,
    320 of slin are the next branch), the repeated key is the key times a constant."""
    n = len(payload)
    if n <= 256 and not n & 3:
        return (_from(payload, "little") ^ _from(key, "little") * _REPEAT[n >> 2]).to_bytes(n, "little")
    stream = key * (n >> 2) if not n & 3 else (key * ((n >> 2) + 1))[:n]
    return (_from(payload, "little") ^ _from(stream, "little")).to_bytes(n, "little")


def _select_subprotocol(_conn: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    # Without `media` Asterisk still works, but a reply naming a protocol it did not offer would
    # fail its handshake check: accept either way, name it only if offered.
    return Subprotocol(MEDIA_SUBPROTOCOL) if MEDIA_SUBPROTOCOL in offered else None


class DirectTransport:
    """:class:`~vr3ai.media.transport.MediaTransport` on :class:`MediaWebSocketProtocol`, with push."""

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
        self._enrolled = False
        self.ring_fd = -1
        self.ring_slot = -1

    @property
    def close_code(self) -> int | None:
        return self._close_code

    def enroll(self) -> None:
        """The handshake completed: the engine reads this socket on its tick from its threshold
        on, and batches what sessions send while the clock services them."""
        fd = self.tick_fd()
        if fd is not None:
            self.ring_fd = fd
        self._enrolled = True
        self._engine.enroll(self)

    # ---------------------------------------------------------------- from the protocol
    def deliver(self, msg: str | bytes, arrived_at: float) -> None:
        if self._closed_in or self._closed_out or self._failed:
            return  # past our close frame: discarded until the peer's reply
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
        self._leave_engine()
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
        """Next message before the session attaches (MEDIA_START); None once closed."""
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
        if self._enrolled:
            self._engine.carries_session(self)
        try:
            await self._ended
        finally:
            self._sink = None
            self._leave_engine()

    def _leave_engine(self) -> None:
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

    def shutdown(self) -> None:
        """The server is stopping (:meth:`MediaEngine.aclose`): close with 1012 (service restart)."""
        if not self._closed_out and not self._closed_in:
            self._closed_out = True
            self._proto.send_close(1012, "server shutting down")


class MediaWebSocketProtocol(asyncio.Protocol):
    """One media WebSocket connection, from the upgrade request on (see module doc).

    Use :func:`media_ws_protocol` to get the class bound to a registry, and pass it to
    ``uvicorn.Config(ws=...)``."""

    media_registry: ClassVar[MediaRegistry]
    media_path: ClassVar[str] = MEDIA_WS_PATH

    def __init__(self, **_server_state: Any) -> None:
        # uvicorn passes its own config and state as keyword arguments: nothing here needs them.
        self.loop = asyncio.get_running_loop()
        engine = self.media_registry.engine
        self._engine = engine
        self._time = engine.clock.time
        self.conn = ServerProtocol(select_subprotocol=_select_subprotocol, max_size=MAX_MEDIA_MESSAGE_BYTES)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.peer = "?"
        self._request = b""
        self._direct: DirectTransport | None = None
        self._pending = b""
        self._parser_owns = False  # once bytes went to websockets' parser, it gets all later ones
        self._fragments: list[bytes] = []
        self._fragments_text = False
        self._close_sent = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_due: bytes | None = None
        self._task: asyncio.Task[None] | None = None
        self.write_paused = False
        """The TCP transport asked us to stop writing; a plain attribute because every frame sent
        checks it."""

    # ---------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False

    def data_received(self, data: bytes) -> None:
        if self._direct is None:
            self._handshake(data)
        else:
            self.received(data, self._time())

    def eof_received(self) -> bool | None:
        self.conn.receive_eof()
        self._flush_conn()
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.write_paused = False  # the buffer will never drain now
        for timer in (self._close_timer, self._ping_timer):
            if timer is not None:
                timer.cancel()
        self._close_timer = self._ping_timer = None
        d = self._direct
        if d is not None:
            d.peer_closed(1006)

    # ---------------------------------------------------------------- the opening handshake
    def _handshake(self, data: bytes) -> None:
        if self.conn.state is not State.CONNECTING:
            return  # refused: the rest is discarded until the connection closes
        buf = self._request + data
        end = buf.find(b"\r\n\r\n")
        if end < 0 and len(buf) < _MAX_REQUEST:
            self._request = buf
            return
        # Only the request goes to websockets: frames after it are ours to parse.
        cut = end + 4 if end >= 0 else len(buf)
        self._request = b""
        self.conn.receive_data(buf[:cut])
        request = next((e for e in self.conn.events_received() if isinstance(e, Request)), None)
        if request is None:
            self._flush_conn()  # websockets' refusal of a request it could not parse
            return
        if unquote(request.path.partition("?")[0]) != self.media_path:
            response = self.conn.reject(404, "Not Found\n")
        else:
            response = self.conn.accept(request)
        self.conn.send_response(response)
        self._flush_conn()
        if response.status_code != 101:
            return
        if MEDIA_SUBPROTOCOL not in (response.headers.get("Sec-WebSocket-Protocol") or ""):
            log.info("media socket without subprotocol 'media'", extra={"peer": self.peer})
        self._direct = DirectTransport(self, self._engine)
        self._direct.enroll()
        self._ping_timer = self.loop.call_later(_PING_INTERVAL_S, self._keepalive)
        self._task = self.loop.create_task(self._serve(request.headers.get("Authorization")))
        if cut < len(buf):
            self.received(buf[cut:], self._time())

    async def _serve(self, authorization: str | None) -> None:
        assert self._direct is not None
        try:
            await serve_media(self._direct, self.media_registry, self.peer, authorization)
        except Exception:
            log.exception("media socket handler failed", extra={"peer": self.peer})
        finally:
            if self._close_timer is None:
                self.transport.close()

    # ---------------------------------------------------------------- frames
    def received(self, data: bytes, now: float) -> None:
        """Bytes of the media socket that arrived at ``now`` (read by the loop or by the tick)."""
        d = self._direct
        assert d is not None
        if self._parser_owns:
            self._to_parser(data, now)
            return
        if (
            not self._pending
            and data[:2] == b"\x82\xfe"  # one final masked binary frame with a 16-bit length...
            and len(data) == 8 + (n := int.from_bytes(data[2:4], "big"))  # ...and nothing else
            and 126 <= n <= _MAX_FAST_FRAME
        ):
            # What a read finds almost every time: one 20 ms audio frame (a call, every 20 ms).
            d.deliver(unmask(data[8:], data[4:8]), now)
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
                self._to_parser(buf[pos:], now)
                return
            if end - head < 4 + n:
                break
            payload = unmask(buf[head + 4 : head + 4 + n], buf[head : head + 4])
            pos = head + 4 + n
            if opcode == 0x2:
                d.deliver(payload, now)
            elif opcode == 0x1:
                self._deliver_text(payload, now)
            else:
                self._on_pong(payload)
            if self.transport.is_closing():
                return
        if pos < end:
            self._pending = buf[pos:]

    def _to_parser(self, data: bytes, now: float) -> None:
        """websockets' parser from here on: fragments, control frames, errors, the close."""
        d = self._direct
        assert d is not None
        conn = self.conn
        conn.receive_data(data)
        for event in conn.events_received():
            if not isinstance(event, Frame):
                continue
            opcode = event.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                self._fragments = [bytes(event.data)]
                self._fragments_text = opcode is Opcode.TEXT
            elif opcode is Opcode.CONT:
                self._fragments.append(bytes(event.data))
            elif opcode is Opcode.PONG:
                self._on_pong(bytes(event.data))
                continue
            elif opcode is Opcode.CLOSE:
                if self._close_sent:
                    self._cancel_close_timer()  # the peer answered our close
                rcvd = conn.close_rcvd
                d.peer_closed(rcvd.code if rcvd is not None else 1005)
                continue
            else:
                continue  # PING: websockets queued the pong
            if event.fin:
                payload = b"".join(self._fragments)
                self._fragments = []
                if self._fragments_text:
                    self._deliver_text(payload, now)
                else:
                    d.deliver(payload, now)
        if conn.close_expected() and conn.close_rcvd is None:
            # websockets failed the connection (a protocol error, a message above the limit).
            sent = conn.close_sent
            self._close_sent = True
            d.peer_closed(sent.code if sent is not None else 1002)
        self._flush_conn()

    def _deliver_text(self, data: bytes, now: float) -> None:
        d = self._direct
        assert d is not None
        try:
            text = data.decode()
        except UnicodeDecodeError:
            # A broken peer, not our failure: say so once, close with 1007 (invalid data).
            log.warning("media socket sent a text frame that is not UTF-8; closing with 1007")
            d.peer_closed(CLOSE_INVALID_DATA)
            self.send_close(CLOSE_INVALID_DATA, "invalid UTF-8")
            return
        d.deliver(text, now)

    # ---------------------------------------------------------------- writing and closing
    def _flush_conn(self) -> None:
        """Write what websockets has to send; an empty chunk means: end the TCP connection."""
        for chunk in self.conn.data_to_send():
            if chunk:
                if not self.transport.is_closing():
                    self.transport.write(chunk)
            else:
                self._cancel_close_timer()
                self.transport.close()

    def send_close(self, code: int, reason: str) -> None:
        """Our close frame, behind everything written so far; the TCP connection is closed when the
        peer answers or after 1 s if it does not."""
        if self._close_sent or self.transport.is_closing() or self.conn.state is not State.OPEN:
            return
        self._close_sent = True
        self.conn.send_close(code, reason)
        self._flush_conn()
        if not self.transport.is_closing():
            self._close_timer = self.loop.call_later(_CLOSE_TIMEOUT_S, self.transport.close)

    def _cancel_close_timer(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None

    def _keepalive(self) -> None:
        self._ping_timer = None
        if self._close_sent or self.transport.is_closing() or self.conn.state is not State.OPEN:
            return
        if self._ping_due is not None:
            log.info("media socket did not answer a ping within %.0f s; closing", _PING_TIMEOUT_S)
            self._close_sent = True
            self.conn.fail(CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
            self._flush_conn()
            self.transport.close()
            return
        self._ping_due = os.urandom(4)
        self.conn.send_ping(self._ping_due)
        self._flush_conn()
        self._ping_timer = self.loop.call_later(_PING_TIMEOUT_S, self._keepalive)

    def _on_pong(self, payload: bytes) -> None:
        if self._ping_due is not None and payload == self._ping_due:
            self._ping_due = None
            if self._ping_timer is not None:
                self._ping_timer.cancel()
            self._ping_timer = self.loop.call_later(_PING_INTERVAL_S, self._keepalive)


def media_ws_protocol(registry: MediaRegistry, path: str = MEDIA_WS_PATH) -> type[MediaWebSocketProtocol]:
    """The protocol class for ``uvicorn.Config(ws=...)``, bound to the app's media registry."""
    attrs = {"media_registry": registry, "media_path": path}
    return type("BoundMediaWebSocketProtocol", (MediaWebSocketProtocol,), attrs)
