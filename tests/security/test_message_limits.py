"""Issue 12, item 3: WebSocket messages are limited on both of our sockets.

* The media WebSocket (what Asterisk's chan_websocket dials) refuses a message above 64 KiB with
  close code 1009 on every path that reads it: the direct protocol's own frame parser, websockets'
  parser it hands unusual frames to (one huge frame, or a message in fragments), the media clock's
  tick reads, and the ASGI fallback. Before the fix such messages were taken up to 16 MiB.
* The ARI events WebSocket (a server at a tenant's ``ari_endpoint_url``) is read with a 1 MiB
  limit: a bigger event closes the socket (1009) and never reaches call handling. Before the fix
  16 MiB events were parsed and handled.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.unit.media.test_media_server import media_start_text, raw_upgrade
from tests.unit.media.test_media_server import serve as serve_media
from vr3ai.media.engine import MediaEngine, MediaTuning
from vr3ai.media.server import MAX_MEDIA_MESSAGE_BYTES, MediaRegistry
from vr3ai.media.session import MediaConfig
from vr3ai.telephony.ari.events import AriEventStream, ConnectionState

KEY = b"\x5a\x01\xf0\x3c"


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client frame in whichever length form its size needs (7, 16 or 64 bits)."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    body = (KEY * (n // 4 + 1))[:n]
    return head + KEY + bytes(a ^ b for a, b in zip(payload, body, strict=True))


async def close_code_from(reader: asyncio.StreamReader, within: float = 5.0) -> int | None:
    """The code of the server's close frame (server frames are unmasked); None on EOF without one."""
    data = b""
    async with asyncio.timeout(within):
        while True:
            pos = 0
            while len(data) - pos >= 2:
                opcode, n, head = data[pos] & 0x0F, data[pos + 1] & 0x7F, pos + 2
                if n == 126:
                    n, head = int.from_bytes(data[head : head + 2], "big"), head + 2
                elif n == 127:
                    n, head = int.from_bytes(data[head : head + 8], "big"), head + 8
                if len(data) - head < n:
                    break
                if opcode == 0x8:
                    return int.from_bytes(data[head : head + 2], "big")
                pos = head + n
            chunk = await reader.read(65536)
            if not chunk:
                return None
            data += chunk


OVERSIZED = {
    # One frame just over the limit (64-bit length form: always websockets' parser).
    "one-frame": [masked(0x2, b"\x7f" * (MAX_MEDIA_MESSAGE_BYTES + 1))],
    # Three fragments of 30,000 bytes: each small, the message 90,000 bytes.
    "fragments": [
        masked(0x2, b"\x7f" * 30_000, fin=False),
        masked(0x0, b"\x7f" * 30_000, fin=False),
        masked(0x0, b"\x7f" * 30_000),
    ],
    # Text is limited the same way.
    "text": [masked(0x1, b"A" * (MAX_MEDIA_MESSAGE_BYTES + 10))],
}


@pytest.mark.parametrize("path", ["direct", "direct+tick-reads", "asgi"])
@pytest.mark.parametrize("kind", sorted(OVERSIZED))
async def test_media_message_above_64k_closes_1009(path: str, kind: str) -> None:
    ticked = path == "direct+tick-reads"
    engine = MediaEngine(MediaTuning(tick_reads_from=1 if ticked else 0))
    registry = MediaRegistry(MediaConfig(status_interval_s=0), engine=engine)
    # The servers here run with uvicorn's default 16 MiB ws_max_size: the cap must not depend on it.
    async with serve_media(registry, "direct" if path.startswith("direct") else "websockets-sansio") as url:
        port = int(url.split(":")[2].split("/")[0])
        cid = f"big-{kind}-{path}"
        fut = registry.expect(cid)
        reader, writer = await raw_upgrade(port, cid.encode()[:16].ljust(16, b"k"))
        writer.write(masked(0x1, media_start_text(cid).encode()))
        session = await asyncio.wait_for(fut, 5)
        got: list[bytes] = []
        listening = asyncio.ensure_future(session.listen(got.append))
        if ticked:
            reader_of_clock = engine.tick_reader
            assert reader_of_clock is not None
            async with asyncio.timeout(3):
                while not reader_of_clock.active:  # noqa: ASYNC110 - server state, no event to await
                    await asyncio.sleep(0.01)
        small = b"\x55" * 160
        writer.write(masked(0x2, small))  # an ordinary frame first: it is delivered
        for frame in OVERSIZED[kind]:
            writer.write(frame)
        writer.write(masked(0x2, small))  # after the oversized message: never delivered
        await writer.drain()
        assert await close_code_from(reader) == 1009
        info = await asyncio.wait_for(session.closed, 5)
        assert info.code == 1009
        await asyncio.wait_for(listening, 2)
        assert len(got) == 1 and len(got[0]) == 320  # the first frame, decoded; nothing else
        writer.transport.abort()


async def test_media_messages_up_to_the_limit_still_pass() -> None:
    registry = MediaRegistry(MediaConfig(status_interval_s=0))
    async with serve_media(registry, "direct") as url:
        port = int(url.split(":")[2].split("/")[0])
        fut = registry.expect("fits")
        _reader, writer = await raw_upgrade(port, b"fits-fits-fits-k")
        writer.write(masked(0x1, media_start_text("fits").encode()))
        session = await asyncio.wait_for(fut, 5)
        got: list[bytes] = []
        listening = asyncio.ensure_future(session.listen(got.append))
        writer.write(masked(0x2, b"\x55" * 32_000, fin=False) + masked(0x0, b"\x55" * 32_000))
        writer.write(masked(0x8, (1000).to_bytes(2, "big")))
        await writer.drain()
        info = await asyncio.wait_for(session.closed, 5)
        await asyncio.wait_for(listening, 2)
        assert info.code == 1000
        assert [len(g) for g in got] == [128_000]
        writer.transport.abort()


# ---------------------------------------------------------------------------------------- ARI


class _PreflightOk:
    """The REST side of an Asterisk whose pre-flight passes (the events socket is what is tested)."""

    base_url = "http://127.0.0.1"

    async def info(self) -> dict[str, Any]:
        return {"system": {"version": "22.10.1"}}

    async def module(self, name: str) -> dict[str, Any]:
        return {"name": name, "status": "Running"}

    async def may_write(self) -> bool:
        return True


@asynccontextmanager
async def hostile_ari(events: list[str]) -> AsyncIterator[tuple[str, list[int | None]]]:
    """An "Asterisk" events WebSocket that sends ``events`` to each connection; yields its base URL
    and the close codes its clients sent."""
    codes: list[int | None] = []

    async def handler(ws: ServerConnection) -> None:
        try:
            for e in events:
                await ws.send(e)
            await ws.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            codes.append(ws.close_code)

    async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"http://127.0.0.1:{port}", codes


async def test_ari_event_above_1mib_is_refused() -> None:
    small = json.dumps({"type": "ChannelVarset", "variable": "X", "value": "1"})
    huge = json.dumps({"type": "StasisStart", "args": [], "padding": "x" * (1024 * 1024 + 100)})
    after = json.dumps({"type": "ChannelVarset", "variable": "Y", "value": "2"})
    seen: list[dict[str, Any]] = []

    async def connected() -> None:
        return None

    async with hostile_ari([small, huge, after]) as (url, codes):
        stream = AriEventStream(
            config_id="cfg",
            endpoint_url=url,
            app="vr3ai",
            password="pw",
            client=_PreflightOk(),  # type: ignore[arg-type]
            on_event=seen.append,
            on_connected=connected,
        )
        stream.start()
        try:
            async with asyncio.timeout(5):
                while not codes:  # noqa: ASYNC110 - the fake server's record, no event to await
                    await asyncio.sleep(0.01)
            assert codes[0] == 1009
            assert [e["type"] for e in seen][:1] == ["ChannelVarset"]
            assert all(e["type"] != "StasisStart" for e in seen)
            assert all(e.get("variable") != "Y" for e in seen)  # nothing after it on that socket
            async with asyncio.timeout(5):
                while stream.state == ConnectionState.CONNECTED:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert "larger than 1048576 bytes" in (stream.last_error or "")
        finally:
            await stream.stop()


async def test_ari_events_up_to_the_limit_still_pass() -> None:
    big_ok = json.dumps({"type": "ChannelVarset", "variable": "Z", "value": "v" * 900_000})
    seen: list[dict[str, Any]] = []

    async def connected() -> None:
        return None

    async with hostile_ari([big_ok]) as (url, _codes):
        stream = AriEventStream(
            config_id="cfg",
            endpoint_url=url,
            app="vr3ai",
            password="pw",
            client=_PreflightOk(),  # type: ignore[arg-type]
            on_event=seen.append,
            on_connected=connected,
        )
        stream.start()
        try:
            async with asyncio.timeout(5):
                while not seen:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert seen[0]["variable"] == "Z" and stream.state == ConnectionState.CONNECTED
        finally:
            await stream.stop()
