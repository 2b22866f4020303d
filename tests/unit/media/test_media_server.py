"""The media endpoint on a real uvicorn server, with a ``websockets`` client playing Asterisk."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import importlib.util
import logging
import socket
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from vr3ai.media.codec import pcm16_to_ulaw, ulaw_to_pcm16
from vr3ai.media.direct import DirectTransport, media_ws_protocol
from vr3ai.media.engine import MediaEngine, MediaTuning
from vr3ai.media.interface import CallEnded, Dtmf, MarkHeard
from vr3ai.media.protocol import ControlFormat, DtmfEnd, MediaStart, format_event
from vr3ai.media.server import (
    MEDIA_WS_PATH,
    MediaRegistry,
    StarletteTransport,
    basic_auth_matches,
    media_router,
)
from vr3ai.media.session import MediaConfig, MediaFormatError, MediaSession
from vr3ai.media.tickread import TickReader
from vr3ai.media.uring import SendRing

USER, PASSWORD = "vr3ai-media", "media-secret"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

WS_IMPLS = ["direct", "websockets-sansio"] + (["wsproto"] if importlib.util.find_spec("wsproto") else [])
try:  # uvicorn's legacy websockets protocol (deprecated), if this websockets version still has it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import uvicorn.protocols.websockets.websockets_impl

    WS_IMPLS.append("websockets")
except Exception:  # pragma: no cover - depends on installed versions
    pass


@asynccontextmanager
async def serve(registry: MediaRegistry, ws: str = "direct") -> AsyncIterator[str]:
    """``direct``: the production path (vr3ai.media.direct, no ASGI); otherwise a uvicorn WebSocket
    implementation carrying the ASGI endpoint (the fallback)."""
    app = FastAPI()
    app.include_router(media_router(registry))
    impl: Any = media_ws_protocol(registry) if ws == "direct" else ws
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning", ws=impl)
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}{MEDIA_WS_PATH}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def media_start_text(channel_id: str, fmt: ControlFormat = ControlFormat.PLAIN, codec: str = "ulaw") -> str:
    size = {"ulaw": 160, "opus": 0, "slin16": 640}[codec]
    return format_event(MediaStart("vr3ai", "WebSocket/vr3ai/0x7f00", channel_id, codec, size, 20), fmt)


@asynccontextmanager
async def asterisk(url: str, auth: str | None = AUTH, query: str = "") -> AsyncIterator[ClientConnection]:
    """Connect like chan_websocket: subprotocol media, optional Basic auth, no compression offer."""
    headers = {"Authorization": auth} if auth else {}
    async with connect(
        url + query,
        subprotocols=[Subprotocol("media")],
        additional_headers=headers,
        compression=None,
        max_size=None,
    ) as ws:
        yield ws


async def closed_code(ws: ClientConnection, within: float = 5.0) -> int | None:
    try:
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
    return None  # pragma: no cover


async def recv_until(ws: ClientConnection, predicate: Any, within: float = 3.0) -> list[str | bytes]:
    got: list[str | bytes] = []
    async with asyncio.timeout(within):
        while True:
            msg = await ws.recv()
            got.append(msg)
            if predicate(msg):
                return got


# ------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("ws_impl", WS_IMPLS)
async def test_handshake_reply_satisfies_asterisk(ws_impl: str) -> None:
    """Replays the exact upgrade request of Asterisk 22.10 and applies its response checks."""
    registry = MediaRegistry()
    async with serve(registry, ws_impl) as url:
        port = int(url.split(":")[2].split("/")[0])
        key = base64.b64encode(b"0123456789abcdef").decode()
        request = (
            f"GET {MEDIA_WS_PATH}?call_ref=inbound-test&lang=en HTTP/1.1\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            f"Authorization: {AUTH}\r\n"
            "Sec-WebSocket-Protocol: media\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "\r\n"
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request.encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 101")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    assert [v.lower() for v in headers["upgrade"]] == ["websocket"]
    assert [v.lower() for v in headers["connection"]] == ["upgrade"]  # whole-value compare in Asterisk
    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
    assert headers["sec-websocket-accept"] == [accept.decode()]
    assert headers["sec-websocket-protocol"] == ["media"]
    assert "sec-websocket-extensions" not in headers


@pytest.mark.parametrize("ws_impl", ["direct", "websockets-sansio"])
async def test_full_call_through_real_server(ws_impl: str) -> None:
    registry = MediaRegistry(MediaConfig(status_interval_s=0))
    async with serve(registry, ws_impl) as url:
        fut = registry.expect("chan-1", (USER, PASSWORD))
        async with asterisk(url, query="?call_ref=x") as ws:
            assert ws.subprotocol == "media"
            await ws.send(media_start_text("chan-1"))
            session = await asyncio.wait_for(fut, 2)
            assert isinstance(session, MediaSession) and session.channel_id == "chan-1"
            assert registry.active == {"chan-1": session}
            assert registry.pending == []

            # Silence flows at real-time pace straight away: the 60 ms lead in one message, then
            # one frame per 20 ms tick (a late tick on a loaded box may coalesce two).
            t0 = time.monotonic()
            first = [await ws.recv() for _ in range(11)]
            elapsed = time.monotonic() - t0
            # The lead (60 ms) comes first; on a loaded box a late first tick may add a frame to it.
            assert len(first[0]) in (480, 640) and first[0] == b"\xff" * len(first[0])
            assert all(isinstance(m, bytes) and m and m == b"\xff" * len(m) and len(m) % 160 == 0 for m in first)
            assert 0.15 <= elapsed <= 1.5

            # Agent speech, then the mark right after its last frame.
            pcm = (np.sin(np.arange(1600) * 0.2) * 9000).astype("<i2").tobytes()
            session.play(pcm, mark="greeting")
            got = await recv_until(ws, lambda m: isinstance(m, str) and m.startswith("MARK_MEDIA"))
            texts = [m for m in got if isinstance(m, str)]
            frames = [m[i : i + 160] for m in got if isinstance(m, bytes) for i in range(0, len(m), 160)]
            audio = b"".join(f for f in frames if f != b"\xff" * 160)
            assert texts == ["FLUSH_MEDIA", "MARK_MEDIA m1"]  # fast start, then the mark
            assert audio == pcm16_to_ulaw(pcm)
            events = session.events()
            await ws.send("MEDIA_MARK_PROCESSED m1")
            ev = await asyncio.wait_for(anext(events), 2)
            assert isinstance(ev, MarkHeard) and ev.name == "greeting"

            # Caller audio and DTMF reach the agent.
            caller_frames = session.frames()
            caller = bytes(range(160))
            await ws.send(caller)
            assert await asyncio.wait_for(anext(caller_frames), 2) == ulaw_to_pcm16(caller)
            await ws.send(format_event(DtmfEnd("7", "chan-1")))
            ev = await asyncio.wait_for(anext(events), 2)
            assert isinstance(ev, Dtmf) and ev.digit == "7"

        # Asterisk side closed the socket (e.g. ARI DELETE of the media channel).
        info = await asyncio.wait_for(session.closed, 3)
        assert info.initiator == "remote" and info.code == 1000
        ev = await asyncio.wait_for(anext(events), 2)
        assert isinstance(ev, CallEnded)
        assert registry.active == {}


async def test_agent_hangup_sends_hangup_and_closes_1000() -> None:
    registry = MediaRegistry()
    async with serve(registry) as url:
        fut = registry.expect("chan-h")
        async with asterisk(url, auth=None) as ws:
            await ws.send(media_start_text("chan-h"))
            session = await asyncio.wait_for(fut, 2)
            await session.hangup("done")
            got: list[str | bytes] = []
            with pytest.raises(ConnectionClosed) as err:
                async with asyncio.timeout(3):
                    while True:
                        got.append(await ws.recv())
            assert "HANGUP" in got
            assert err.value.rcvd is not None and err.value.rcvd.code == 1000
        info = await asyncio.wait_for(session.closed, 3)
        assert info.reason == "hangup:done"


async def test_json_control_format_is_detected() -> None:
    registry = MediaRegistry()
    async with serve(registry) as url:
        fut = registry.expect("chan-j")
        async with asterisk(url, auth=None) as ws:
            await ws.send(media_start_text("chan-j", ControlFormat.JSON))
            session = await asyncio.wait_for(fut, 2)
            assert session.control_format is ControlFormat.JSON
            session.play(b"\x00\x00" * 160, mark="j")
            got = await recv_until(ws, lambda m: isinstance(m, str) and "MARK_MEDIA" in m)
            assert got[-1] == '{"command":"MARK_MEDIA","correlation_id":"m1"}'


async def test_unknown_channel_is_closed_1008(caplog: pytest.LogCaptureFixture) -> None:
    registry = MediaRegistry()
    async with serve(registry) as url:
        with caplog.at_level(logging.WARNING, logger="vr3ai.media.server"):
            async with asterisk(url) as ws:
                await ws.send(media_start_text("nobody-expects-me"))
                assert await closed_code(ws) == 1008
    rec = next(r for r in caplog.records if "unknown channel" in r.getMessage())
    assert rec.channel_id == "nobody-expects-me"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "auth", [None, "Basic " + base64.b64encode(b"vr3ai-media:wrong").decode(), "Bearer x", "Basic !!!notbase64"]
)
async def test_bad_or_missing_auth_is_closed_1008_and_keeps_expectation(
    auth: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    registry = MediaRegistry()
    async with serve(registry) as url:
        fut = registry.expect("chan-a", (USER, PASSWORD))
        with caplog.at_level(logging.WARNING, logger="vr3ai.media.server"):
            async with asterisk(url, auth=auth) as ws:
                await ws.send(media_start_text("chan-a"))
                assert await closed_code(ws) == 1008
        assert not fut.done() and registry.pending == ["chan-a"]
        assert PASSWORD not in caplog.text and "wrong" not in caplog.text
        # The real Asterisk connection still gets through.
        async with asterisk(url) as ws:
            await ws.send(media_start_text("chan-a"))
            session = await asyncio.wait_for(fut, 2)
            assert session.channel_id == "chan-a"


async def test_no_media_start_within_2s_is_closed(caplog: pytest.LogCaptureFixture) -> None:
    registry = MediaRegistry()
    assert registry.media_start_timeout == 2.0
    async with serve(registry) as url:
        with caplog.at_level(logging.WARNING, logger="vr3ai.media.server"):
            async with asterisk(url) as ws:
                t0 = time.monotonic()
                code = await closed_code(ws, within=5)
                waited = time.monotonic() - t0
    assert code == 1002
    assert 1.9 <= waited <= 4.0
    assert any("MEDIA_START" in r.getMessage() for r in caplog.records)


async def test_first_message_not_media_start_is_closed() -> None:
    registry = MediaRegistry()
    async with serve(registry) as url:
        async with asterisk(url) as ws:
            await ws.send(b"\xff" * 160)
            assert await closed_code(ws) == 1002


async def test_unsupported_format_fails_the_expectation() -> None:
    registry = MediaRegistry()
    async with serve(registry) as url:
        fut = registry.expect("chan-opus")
        async with asterisk(url, auth=None) as ws:
            await ws.send(media_start_text("chan-opus", codec="opus"))
            assert await closed_code(ws) == 1003
        with pytest.raises(MediaFormatError):
            await asyncio.wait_for(fut, 1)


async def test_cancelled_expectations_reject_the_socket() -> None:
    registry = MediaRegistry()
    async with serve(registry) as url:
        registry.expect("chan-c")
        assert registry.cancel("chan-c") is True
        assert registry.cancel("chan-c") is False
        fut = registry.expect("chan-t")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(fut, 0.05)  # the owner gave up: cancelling withdraws it
        assert registry.pending == []
        for cid in ("chan-c", "chan-t"):
            async with asterisk(url, auth=None) as ws:
                await ws.send(media_start_text(cid))
                assert await closed_code(ws) == 1008


async def test_duplicate_expectation_refused() -> None:
    registry = MediaRegistry()
    registry.expect("dup")
    with pytest.raises(ValueError):
        registry.expect("dup")
    with pytest.raises(ValueError):
        registry.expect("")


async def test_many_concurrent_calls_are_paced() -> None:
    registry = MediaRegistry(MediaConfig(status_interval_s=0))
    n = 20
    async with serve(registry) as url:

        async def one_call(i: int) -> tuple[int, float]:
            cid = f"load-{i}"
            fut = registry.expect(cid)
            async with asterisk(url, auth=None) as ws:
                await ws.send(media_start_text(cid))
                session = await asyncio.wait_for(fut, 3)

                async def drain() -> None:
                    with contextlib.suppress(ConnectionClosed):
                        async for msg in ws:
                            if isinstance(msg, bytes):
                                assert len(msg) % 160 == 0
                                await ws.send(b"\xff" * 160)  # and the caller talks back

                reader = asyncio.ensure_future(drain())
                session.play(b"\x10\x00" * 8000)  # 1 s of agent audio
                await asyncio.sleep(0.2)
                n0, t0 = session.stats.frames_out, time.monotonic()
                await asyncio.sleep(1.0)
                sent = session.stats.frames_out - n0
                rate = sent / (time.monotonic() - t0)
                reader.cancel()
                return sent, rate

        results = await asyncio.gather(*(one_call(i) for i in range(n)))
    for sent, rate in results:
        # Real time: ~50 frames per second; a late loop skips (fewer), it never dumps (more).
        assert sent <= 56, results
        assert rate >= 25, results


# ------------------------------------------------------------------------------------------------ unit


def test_basic_auth_matches() -> None:
    assert basic_auth_matches(AUTH, (USER, PASSWORD))
    assert basic_auth_matches("basic " + AUTH.split()[1], (USER, PASSWORD))
    assert not basic_auth_matches(None, (USER, PASSWORD))
    assert not basic_auth_matches(AUTH, (USER, "other"))
    assert not basic_auth_matches("Basic", (USER, PASSWORD))
    assert not basic_auth_matches("Basic ###", (USER, PASSWORD))


class _SlowSocket:
    """A Starlette-like WebSocket whose send blocks while ``gate`` is closed."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.out: list[Any] = []

    async def send(self, message: dict[str, Any]) -> None:
        await self.gate.wait()
        self.out.append(message.get("bytes", message.get("text")))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.out.append(("close", code))


async def test_transport_sends_inline_and_keeps_order_under_backpressure() -> None:
    sock = _SlowSocket()
    tr = StarletteTransport(sock)  # type: ignore[arg-type]
    tr.send_bytes(b"a")
    assert sock.out == [b"a"]  # completed inline, no task involved
    sock.gate.clear()
    tr.send_bytes(b"b")
    tr.send_text("MARK_MEDIA m1")
    tr.send_bytes(b"c")
    assert sock.out == [b"a"] and tr.suspended_sends == 1
    sock.gate.set()
    await asyncio.sleep(0.01)
    assert sock.out == [b"a", b"b", "MARK_MEDIA m1", b"c"]
    tr.send_bytes(b"d")
    assert sock.out[-1] == b"d"  # back to inline sends
    sock.gate.clear()
    tr.send_text("HANGUP")
    close = asyncio.ensure_future(tr.close(1000))
    await asyncio.sleep(0.01)
    sock.gate.set()
    await close
    assert sock.out[-2:] == ["HANGUP", ("close", 1000)]  # close waits for queued sends


def _masked_text(text: str) -> bytes:
    payload = text.encode()
    key = b"\x11\x22\x33\x44"
    head = b"\x81" + (bytes([0x80 | len(payload)]) if len(payload) < 126 else b"\xfe" + len(payload).to_bytes(2, "big"))
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def raw_upgrade(
    port: int, seed: bytes, subprotocol: bool = True, rcvbuf: int = 0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A bare TCP connection upgraded to the media WebSocket, as Asterisk does it; ``rcvbuf``:
    a small receive buffer, set before connecting (so the window is small from the start)."""
    if rcvbuf:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(seed).decode()
    proto = "Sec-WebSocket-Protocol: media\r\n" if subprotocol else ""
    writer.write(
        (
            f"GET {MEDIA_WS_PATH} HTTP/1.1\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nHost: 127.0.0.1:{port}\r\n{proto}Sec-WebSocket-Key: {key}\r\n\r\n"
        ).encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


async def test_hangup_is_bounded_when_asterisk_stops_reading() -> None:
    registry = MediaRegistry(MediaConfig(status_interval_s=0))
    async with serve(registry) as url:
        port = int(url.split(":")[2].split("/")[0])
        fut = registry.expect("wedged")
        _reader, writer = await raw_upgrade(port, b"fedcba9876543210")
        writer.write(_masked_text(media_start_text("wedged")))  # like Asterisk: after the 101
        session = await asyncio.wait_for(fut, 5)
        # From here on the peer reads nothing: fill every buffer until sends have to wait.
        transport = session._transport
        assert isinstance(transport, DirectTransport)
        for _ in range(2000):
            transport.send_bytes(b"\xff" * 16000)
            if transport.suspended_sends:
                break
            await asyncio.sleep(0)
        assert transport.suspended_sends
        t0 = time.monotonic()
        await asyncio.wait_for(session.hangup("bye"), 5)
        info = await asyncio.wait_for(session.closed, 5)
        assert time.monotonic() - t0 < 3.5
        assert info.reason == "hangup:bye"
        for _ in range(100):
            if not registry.active:
                break
            await asyncio.sleep(0.01)
        assert registry.active == {}
        writer.transport.abort()


def _masked(opcode: int, payload: bytes, fin: bool = True, key: bytes = b"\x5a\x01\xf0\x3c") -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def test_direct_frame_parsing_split_batched_and_handed_over() -> None:
    """The media path's own frame parser: frames split at every byte, several in one segment, and
    the hand-over to websockets' parser at the first frame it does not take (a fragmented one)."""
    registry = MediaRegistry(MediaConfig(status_interval_s=0))
    async with serve(registry) as url:
        port = int(url.split(":")[2].split("/")[0])
        fut = registry.expect("split")
        _reader, writer = await raw_upgrade(port, b"split-frames-key")
        start = _masked(0x1, media_start_text("split").encode())
        for i in range(len(start)):  # one byte per segment
            writer.write(start[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)
        session = await asyncio.wait_for(fut, 5)
        frames = session.frames()
        events = session.events()
        a, b = bytes(range(160)), bytes(range(95, 255))
        big = bytes(range(256)) * 4  # 1024 bytes: the 16-bit length form
        writer.write(_masked(0x2, a) + _masked(0x2, b) + _masked(0x2, big)[:700])
        await writer.drain()
        assert await asyncio.wait_for(anext(frames), 2) == ulaw_to_pcm16(a)
        assert await asyncio.wait_for(anext(frames), 2) == ulaw_to_pcm16(b)
        writer.write(_masked(0x2, big)[700:] + _masked(0x1, format_event(DtmfEnd("5", "split")).encode()))
        assert await asyncio.wait_for(anext(frames), 2) == ulaw_to_pcm16(big)
        ev = await asyncio.wait_for(anext(events), 2)
        assert isinstance(ev, Dtmf) and ev.digit == "5"
        # A fragmented binary message: websockets' parser takes over from here and reassembles it.
        writer.write(_masked(0x2, a[:100], fin=False) + _masked(0x0, a[100:]) + _masked(0x2, b))
        assert await asyncio.wait_for(anext(frames), 2) == ulaw_to_pcm16(a)
        assert await asyncio.wait_for(anext(frames), 2) == ulaw_to_pcm16(b)
        writer.write(_masked(0x8, (1000).to_bytes(2, "big")))
        info = await asyncio.wait_for(session.closed, 3)
        assert info.initiator == "remote" and info.code == 1000
        writer.transport.abort()


async def test_direct_path_closes_1007_on_invalid_utf8_text() -> None:
    registry = MediaRegistry(MediaConfig(status_interval_s=0))
    async with serve(registry) as url:
        port = int(url.split(":")[2].split("/")[0])
        fut = registry.expect("bad-utf8")
        reader, writer = await raw_upgrade(port, b"utf8-frames-key!", subprotocol=False)
        writer.write(_masked(0x1, media_start_text("bad-utf8").encode()))
        session = await asyncio.wait_for(fut, 5)
        writer.write(_masked(0x1, b"\xff\xfe MARK_MEDIA"))
        info = await asyncio.wait_for(session.closed, 3)
        assert info.code == 1007
        data = b""
        while b"\x88" not in data:  # skip the silence the session streamed, find the close frame
            chunk = await asyncio.wait_for(reader.read(65536), 3)
            assert chunk
            data += chunk
        close = data[data.index(b"\x88") :]
        assert int.from_bytes(close[2:4], "big") == 1007
        writer.transport.abort()


async def test_invalid_upgrade_on_the_media_path_gets_websockets_refusal() -> None:
    registry = MediaRegistry()
    async with serve(registry) as url:
        port = int(url.split(":")[2].split("/")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(  # no Sec-WebSocket-Key
            (
                f"GET {MEDIA_WS_PATH} HTTP/1.1\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nHost: 127.0.0.1:{port}\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 400")
        await asyncio.wait_for(reader.read(), 5)  # read() returns at EOF: the server closed the connection
        writer.close()
    assert registry.active == {}


# ------------------------------------------------------------------------------------------------ tick reads


def _tick_reader(registry: MediaRegistry) -> TickReader:
    reader = registry.engine.tick_reader
    assert reader is not None
    return reader


async def _wait_for(predicate: Any, within: float = 3.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polling state the server changes, no event to await
            await asyncio.sleep(0.01)


async def _ticked_call(
    url: str, registry: MediaRegistry, cid: str
) -> tuple[MediaSession, asyncio.StreamReader, asyncio.StreamWriter, TickReader]:
    """A raw Asterisk-like connection whose session is up and read by the clock's ticks."""
    port = int(url.split(":")[2].split("/")[0])
    fut = registry.expect(cid)
    reader, writer = await raw_upgrade(port, f"tick-{cid}".encode()[:16].ljust(16, b"k"))
    writer.write(_masked(0x1, media_start_text(cid).encode()))
    session = await asyncio.wait_for(fut, 5)
    tr = _tick_reader(registry)
    await _wait_for(lambda: tr.active)
    return session, reader, writer, tr


async def test_tick_reads_carry_a_whole_call_and_hand_the_close_back() -> None:
    """Above the threshold the clock reads the socket (no loop wake-up per frame): frames split
    across reads and batched in one read, text events, and the peer's close all arrive exactly
    as through the loop, and the socket goes back to the loop for its close handshake."""
    registry = MediaRegistry(MediaConfig(status_interval_s=0), engine=MediaEngine(MediaTuning(tick_reads_from=1)))
    async with serve(registry) as url:
        session, reader, writer, tr = await _ticked_call(url, registry, "ticked")
        got: list[bytes] = []
        listening = asyncio.ensure_future(session.listen(got.append))
        a, b = bytes(range(160)), bytes(range(95, 255))
        writer.write(_masked(0x2, a) + _masked(0x2, b)[:50])
        await writer.drain()
        await _wait_for(lambda: len(got) == 1)
        dtmf = _masked(0x1, format_event(DtmfEnd("9", "ticked")).encode())
        writer.write(_masked(0x2, b)[50:] + _masked(0x2, a) + dtmf)
        await writer.drain()
        events = session.events()
        ev = await asyncio.wait_for(anext(events), 2)
        assert isinstance(ev, Dtmf) and ev.digit == "9"
        assert got == [ulaw_to_pcm16(a), ulaw_to_pcm16(b), ulaw_to_pcm16(a)]
        assert tr.reads >= 2 and len(tr) == 1
        # Agent audio still goes out while the clock reads.
        session.play(b"\x10\x00" * 800, mark="m")
        data = b""
        while b"MARK_MEDIA" not in data:
            chunk = await asyncio.wait_for(reader.read(65536), 3)
            assert chunk
            data += chunk
        writer.write(_masked(0x8, (1000).to_bytes(2, "big")))
        info = await asyncio.wait_for(session.closed, 3)
        assert info.initiator == "remote" and info.code == 1000
        await asyncio.wait_for(listening, 2)
        assert len(tr) == 0 and not tr.active  # released: the loop completes the close
        rest = await asyncio.wait_for(reader.read(), 3)  # our close frame, then EOF
        assert b"\x88" in rest
        writer.transport.abort()


async def test_tick_reads_peer_vanishing_is_seen_through_the_loop() -> None:
    registry = MediaRegistry(MediaConfig(status_interval_s=0), engine=MediaEngine(MediaTuning(tick_reads_from=1)))
    async with serve(registry) as url:
        session, _reader, writer, tr = await _ticked_call(url, registry, "vanish")
        writer.write(_masked(0x2, b"\xff" * 160))
        await writer.drain()
        writer.transport.abort()  # TCP reset, no close frame: EOF/error handed back to the loop
        info = await asyncio.wait_for(session.closed, 3)
        assert info.initiator == "remote" and info.code == 1006
        assert len(tr) == 0


async def test_tick_reads_start_at_the_threshold_and_stop_below_half() -> None:
    registry = MediaRegistry(MediaConfig(status_interval_s=0), engine=MediaEngine(MediaTuning(tick_reads_from=4)))
    async with serve(registry) as url:
        port = int(url.split(":")[2].split("/")[0])
        conns = []
        sessions = []
        for i in range(4):
            fut = registry.expect(f"n{i}")
            r, w = await raw_upgrade(port, f"tick-threshold-{i}".encode()[:16].ljust(16, b"x"))
            w.write(_masked(0x1, media_start_text(f"n{i}").encode()))
            sessions.append(await asyncio.wait_for(fut, 5))
            conns.append((r, w))
            tr = _tick_reader(registry)
            await asyncio.sleep(0.05)
            assert tr.active == (i == 3)
        got: list[bytes] = []
        listening = asyncio.ensure_future(sessions[3].listen(got.append))
        for _r, w in conns[:3]:
            w.write(_masked(0x8, (1000).to_bytes(2, "big")))
        for s in sessions[:3]:
            await asyncio.wait_for(s.closed, 3)
        await _wait_for(lambda: not tr.active)  # 1 < 4 // 2: back to the loop
        w = conns[3][1]
        w.write(_masked(0x2, bytes(range(160))))
        await _wait_for(lambda: len(got) == 1)
        assert got == [ulaw_to_pcm16(bytes(range(160)))]
        assert tr.switches == 2
        w.write(_masked(0x8, (1000).to_bytes(2, "big")))
        await asyncio.wait_for(sessions[3].closed, 3)
        await asyncio.wait_for(listening, 2)
        for _r, w in conns:
            w.transport.abort()


# ------------------------------------------------------------------------------------------------ ring sends


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each complete unmasked frame in ``data``, as Asterisk parses them."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while len(data) - pos >= 2:
        n, head = data[pos + 1] & 0x7F, pos + 2
        if n == 126:
            n, head = int.from_bytes(data[head : head + 2], "big"), head + 2
        elif n == 127:
            n, head = int.from_bytes(data[head : head + 8], "big"), head + 8
        if len(data) - head < n:
            break
        out.append((data[pos] & 0x0F, data[head : head + n]))
        pos = head + n
    return out


@pytest.mark.skipif(SendRing.create(2) is None, reason="io_uring not available here")
async def test_ring_sends_keep_audio_and_marks_whole_and_in_order_through_a_full_socket() -> None:
    """The clock's frames leave in one io_uring submission per tick. When Asterisk stops reading
    and the socket fills up, what a send did not take is buffered by the loop's transport, later
    frames queue behind it, and once Asterisk reads again the stream is whole and in order:
    every byte of agent audio once, the mark right after the audio's last frame."""
    registry = MediaRegistry(
        MediaConfig(status_interval_s=0), engine=MediaEngine(MediaTuning(tick_reads_from=0, ring_sends=True))
    )
    async with serve(registry) as url:
        port = int(url.split(":")[2].split("/")[0])
        fut = registry.expect("ring")
        reader, writer = await raw_upgrade(port, b"ring-sends-test!", rcvbuf=2048)
        writer.write(_masked(0x1, media_start_text("ring").encode()))
        session = await asyncio.wait_for(fut, 5)
        batch = registry.engine.send_batch
        assert batch is not None
        tr = session._transport
        assert isinstance(tr, DirectTransport) and tr.ring_fd >= 0
        tr._tcp.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        writer.transport.pause_reading()  # Asterisk stops reading
        sends0, short0 = batch.ring_sends, batch.short_sends
        # 4 s of a pattern whose u-law bytes are never silence (0xff), then a mark.
        pcm = (np.arange(32000) % 200 * 40 + 1000).astype("<i2").tobytes()
        session.play(pcm, mark="end")
        await _wait_for(lambda: batch.short_sends > short0 and tr._tcp.get_write_buffer_size() > 0, 10)
        # While the transport still holds bytes, what a tick sends queues behind them: through the
        # ring it could overtake them the moment the socket has room again.
        clock, held = registry.engine.clock, tr._tcp.get_write_buffer_size()
        clock.servicing = True
        try:
            tr.send_bytes(b"\xff" * 160)  # as a session's service() would (silence: not in the check)
        finally:
            clock.servicing = False
        assert tr.ring_slot == -1 and tr._tcp.get_write_buffer_size() > held
        writer.transport.resume_reading()
        data = await reader.read(65536)
        while not any(op == 1 and p.startswith(b"MARK_MEDIA") for op, p in _server_frames(data)):
            chunk = await asyncio.wait_for(reader.read(65536), 8)
            assert chunk
            data += chunk
        # One item per 20 ms frame (a message may carry several) or text message, in wire order.
        items: list[bytes | str] = []
        for op, p in _server_frames(data):
            if op == 2:
                assert p and len(p) % 160 == 0
                items += [p[k : k + 160] for k in range(0, len(p), 160)]
            else:
                items.append(p.decode())
        audio = [i for i, x in enumerate(items) if isinstance(x, bytes) and x != b"\xff" * 160]
        played = b"".join(items[i] for i in audio)  # type: ignore[misc]
        assert played == pcm16_to_ulaw(pcm)  # 4 s = 200 whole frames: nothing lost, doubled or reordered
        mark = next(i for i, x in enumerate(items) if isinstance(x, str) and x.startswith("MARK_MEDIA"))
        assert mark == audio[-1] + 1
        assert batch.ring_sends > sends0 + 50
        await session.hangup("done")
        await asyncio.wait_for(session.closed, 3)
        writer.transport.abort()


async def test_without_io_uring_frames_are_written_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the kernel refuses rings the same call works through the transport's writes."""
    monkeypatch.setattr(SendRing, "create", classmethod(lambda cls, entries=256: None))
    registry = MediaRegistry(MediaConfig(status_interval_s=0), engine=MediaEngine(MediaTuning(ring_sends=True)))
    async with serve(registry) as url, asterisk(url, auth=None) as ws:
        fut = registry.expect("noring")
        await ws.send(media_start_text("noring"))
        session = await asyncio.wait_for(fut, 3)
        assert registry.engine.send_batch is None
        session.play(b"\x10\x00" * 1600, mark="m")
        got = await recv_until(ws, lambda m: isinstance(m, str) and m.startswith("MARK_MEDIA"))
        frames = [m[k : k + 160] for m in got if isinstance(m, bytes) for k in range(0, len(m), 160)]
        assert b"".join(f for f in frames if f != b"\xff" * 160) == pcm16_to_ulaw(b"\x10\x00" * 1600)


# ------------------------------------------------------------------------------------------------ our protocol


async def test_a_websocket_upgrade_for_another_path_is_refused_with_404() -> None:
    """The media socket is the only WebSocket we serve: the protocol uvicorn hands upgrades to
    refuses any other path (no session, no registry entry)."""
    registry = MediaRegistry()
    async with serve(registry) as url:
        port = int(url.split(":")[2].split("/")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(b"other-path-key!!").decode()
        writer.write(
            (
                "GET /api/v1/other/ws HTTP/1.1\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nHost: 127.0.0.1:{port}\r\nSec-WebSocket-Key: {key}\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 404")
        await asyncio.wait_for(reader.read(), 5)  # then EOF
        writer.close()
    assert registry.active == {} and registry.pending == []


async def test_closing_the_engine_closes_open_media_sockets_with_1012() -> None:
    """uvicorn does not know the media sockets it handed over: the engine closes what is still
    open when the app shuts down (1012, service restart, as uvicorn did)."""
    registry = MediaRegistry(MediaConfig(status_interval_s=0))
    async with serve(registry) as url, asterisk(url, auth=None) as ws:
        fut = registry.expect("shutdown")
        await ws.send(media_start_text("shutdown"))
        session = await asyncio.wait_for(fut, 3)
        await registry.engine.aclose()
        assert await closed_code(ws) == 1012
        info = await asyncio.wait_for(session.closed, 3)
        assert info.code == 1012
        assert len(registry.engine.clock) == 0


def test_unmask_matches_rfc6455() -> None:
    from vr3ai.media.direct import unmask

    key = b"\x5a\x01\xf0\x3c"
    for n in (0, 1, 2, 3, 4, 5, 159, 160, 161, 1024, 65537):
        payload = bytes(range(256)) * (n // 256 + 1)
        payload = payload[:n]
        assert unmask(payload, key) == bytes(b ^ key[i % 4] for i, b in enumerate(payload))
