"""Fuzz the media WebSocket (issue "bad input") on a real uvicorn, with ``websockets`` (and raw TCP)
playing a misbehaving Asterisk: ≥10,000 cases in total.

* Before MEDIA_START, one short connection per case: junk text, truncated/mistyped MEDIA_START,
  binary first, unknown channel ids, wrong credentials, unsupported formats, nothing at all, abrupt
  disconnects, and raw WebSocket frames a library client would never send (invalid UTF-8 text,
  unmasked, reserved opcodes, bad close codes, absurd lengths).
* In a session (valid MEDIA_START for an expected channel), one case per message: plain and JSON
  control events with odd values, junk text (> 128 bytes, odd unicode, deep JSON), binary frames of
  every size 0..1024, random sizes up to the 64 KiB message limit and its boundaries, while a
  server-side agent plays, marks, flushes and hangs up at random; sessions end every way a socket
  can end, one of them a message over the limit (1009).

Asserted: the server never stops serving (a fresh valid call works at the end), every session ends
and leaves the registry and the media clock empty, the expected close code is used for each refusal,
no task is left pending, and nothing is logged at ERROR with a traceback.

Reproduce with ``VR3AI_FUZZ_SEED=<seed>``; message contents are seeded, network timing is not.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import os
import random
import struct
import time
import traceback
import wave
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from vr3ai.media.direct import media_ws_protocol
from vr3ai.media.interface import CallEnded, Dtmf, MarkHeard
from vr3ai.media.protocol import (
    Answer,
    ControlFormat,
    DtmfEnd,
    ErrorEvent,
    FlushMedia,
    GetStatus,
    MarkMedia,
    MediaBufferingCompleted,
    MediaMarkProcessed,
    MediaStart,
    MediaXoff,
    MediaXon,
    QueueDrained,
    Status,
    format_event,
    parse_event,
)
from vr3ai.media.server import MAX_MEDIA_MESSAGE_BYTES, MEDIA_WS_PATH, MediaRegistry, media_router
from vr3ai.media.session import MediaConfig, MediaFormatError, MediaSession, MediaSessionClosed

from .ari_rig import TracebackCatcher, in_our_code

SEED = int(os.environ.get("VR3AI_FUZZ_SEED", "20261126"))
PRE_CASES = int(os.environ.get("VR3AI_FUZZ_MEDIA_PRE_CASES", "2000"))
SESSION_CASES = int(os.environ.get("VR3AI_FUZZ_MEDIA_SESSION_CASES", "10000"))
SWEEP = [*range(0, 1025), *range(1025, 65_537, 61), 65534, 65535, 65536]
"""Binary sizes sent in order on one session: every size to 1 KiB, then a stride of 61 bytes (coprime
with every frame size) to the 64 KiB message limit, and its boundaries (Asterisk's own limit is
65,535). Larger messages end the session (1009): the ``oversize`` ending."""
USER, PASSWORD = "vr3ai-media", "media-secret"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
MEDIA_START_TIMEOUT = 1.0
FORMATS = {"ulaw": (160, 1), "alaw": (160, 1), "slin": (320, 2), "slin16": (640, 2), "slin48": (1920, 2)}
ODD_TEXT = [
    "\u202e\u0644\u0627 RTL",
    "😀" * 40,
    "\x00\x01\x02",
    "\ufeffMEDIA_XON",
    "MEDIA_XON\x00",
    "Ω≈ç√∫",
    "\u0301" * 50,
    "\t\n\r ",
    "\ufffd" * 10,
    "e\u0301" * 30,
    "\U0010ffff",
    "MEDIA_START" + "\u00a0" * 3,
]


# ------------------------------------------------------------------------------------------------
# Server and clients
# ------------------------------------------------------------------------------------------------


@asynccontextmanager
async def serve(registry: MediaRegistry) -> AsyncIterator[tuple[str, int, asyncio.Task[None]]]:
    app = FastAPI()
    app.include_router(media_router(registry))
    # log_config=None: uvicorn's own loggers propagate to the root, where the test sees tracebacks.
    # The production path: the media socket served by vr3ai.media.direct, not through ASGI.
    ws = media_ws_protocol(registry)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_config=None, ws=ws)
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(), name="fuzz-uvicorn")
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}{MEDIA_WS_PATH}", port, task
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@asynccontextmanager
async def asterisk(url: str, auth: str | None = AUTH, subprotocol: bool = True) -> AsyncIterator[ClientConnection]:
    """Connect like chan_websocket: subprotocol media, optional Basic auth, no compression, no pings."""
    headers = {"Authorization": auth} if auth else {}
    async with connect(
        url,
        subprotocols=["media"] if subprotocol else None,  # type: ignore[list-item]
        additional_headers=headers,
        compression=None,
        max_size=None,
        ping_interval=None,
        open_timeout=10,
        close_timeout=2,
    ) as ws:
        yield ws


async def close_code(ws: ClientConnection, within: float = 5.0) -> int | None:
    """Drain until the server closes; the code it sent (None if the TCP connection just dropped)."""
    try:
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
    except TimeoutError:
        return -1


def media_start(
    channel_id: str,
    fmt: str = "ulaw",
    size: int | None = None,
    ptime: int = 20,
    control: ControlFormat = ControlFormat.PLAIN,
) -> str:
    size = FORMATS.get(fmt, (160, 1))[0] if size is None else size
    return format_event(MediaStart("vr3ai", "WebSocket/vr3ai/0x7f00", channel_id, fmt, size, ptime), control)


@dataclass
class Findings:
    failures: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    def fail(self, text: str) -> None:
        self.failures.append(text)


# ------------------------------------------------------------------------------------------------
# Generators
# ------------------------------------------------------------------------------------------------


class TextGen:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def junk(self) -> str:
        r = self.rng
        pick = r.randrange(12)
        if pick == 0:
            return ""
        if pick == 1:
            return r.choice(ODD_TEXT)
        if pick == 2:
            return "".join(chr(r.randrange(32, 0x2FFF)) for _ in range(r.randint(1, 200)))
        if pick == 3:
            return r.choice(["x" * 129, "MEDIA_XOFF " + "y" * 200, "A" * 65_000, "{" + " " * 5000 + "}"])
        if pick == 4:
            return json.dumps(self.json_value(0))
        if pick == 5:
            return r.choice(
                [
                    "[" * 50_000,
                    '{"event":' * 7_000,  # 63,000 bytes: under the 64 KiB message limit
                    '{"event": "MEDIA_XON"',
                    "{}",
                    "[]",
                    "null",
                    '{"event": null}',
                    '{"event": 5}',
                    '{"event": ""}',
                    '{"event": "media_start"}',
                ]
            )
        if pick == 6:
            name = r.choice(
                [
                    "MEDIA_START",
                    "STATUS",
                    "DTMF_END",
                    "MEDIA_MARK_PROCESSED",
                    "ERROR",
                    "QUEUE_DRAINED",
                    "MEDIA_XOFF",
                    "MEDIA_XON",
                    "MEDIA_BUFFERING_COMPLETED",
                    "HANGUP",
                    "BOGUS",
                ]
            )
            fields = " ".join(self.plain_field() for _ in range(r.randint(0, 8)))
            return f"{name} {fields}"
        if pick == 7:
            obj = {"event": r.choice(["MEDIA_START", "STATUS", "DTMF_END", "MEDIA_MARK_PROCESSED", "ERROR", "X"])}
            for key in r.sample(
                [
                    "channel_id",
                    "format",
                    "optimal_frame_size",
                    "ptime",
                    "queue_length",
                    "xon_level",
                    "xoff_level",
                    "queue_full",
                    "bulk_media",
                    "media_paused",
                    "digit",
                    "correlation_id",
                    "error_text",
                    "channel_variables",
                    "connection_id",
                ],
                r.randint(0, 8),
            ):
                obj[key] = self.json_value(1)
            return json.dumps(obj)
        if pick == 8:
            return " ".join(
                r.choice(["MEDIA_START", ":", "::", "a:", ":b", "k:v", "channel_id:", "\u00a0"])
                for _ in range(r.randint(1, 10))
            )
        if pick == 9:
            text = media_start(f"c-{r.randrange(10**6)}", control=r.choice(list(ControlFormat)))
            return text[: r.randrange(len(text))]
        if pick == 10:
            return r.choice(ODD_TEXT) * r.randint(1, 20)
        return "".join(chr(r.randrange(0x20, 0x7F)) for _ in range(r.randint(1, 60)))

    def plain_field(self) -> str:
        r = self.rng
        key = r.choice(["channel_id", "format", "optimal_frame_size", "ptime", "digit", "queue_length", "x", ""])
        value = r.choice(["", "1", "-1", "99999999999", "999999999999", "ulaw", "opus", "abc", "1.5", "0x10", "#"])
        return f"{key}:{value}" if r.random() < 0.9 else key

    def json_value(self, depth: int) -> Any:
        r = self.rng
        pick = r.randrange(9 if depth < 3 else 6)
        if pick == 0:
            return None
        if pick == 1:
            return r.choice([True, False])
        if pick == 2:
            return r.choice([0, -1, 1, 160, 2**31, -(2**63), 10**30, 1.5, -0.0])
        if pick in (3, 4, 5):
            return r.choice(["", "ulaw", "slin16", "opus", "#", "1", "\u00e9\u00e8", "x" * 300, "true", "false"])
        if pick in (6, 7):
            return [self.json_value(depth + 1) for _ in range(r.randint(0, 3))]
        return {
            r.choice(["a", "event", "channel_id", "digit"]): self.json_value(depth + 1) for _ in range(r.randint(0, 3))
        }

    def control_event(self, channel_id: str, marks: list[str], control: ControlFormat) -> str:
        """A well-formed event Asterisk could send, with plausible and implausible values."""
        r = self.rng
        cid = r.choice([channel_id, channel_id, None, "someone-else"])
        big = r.choice([0, 1, 50, 800, 900, 1000, -5, 99_999_999_999, -99_999_999_999])
        pick = r.randrange(10)
        if pick == 0:
            ev: Any = Status(cid, big, 800, 900, r.random() < 0.2, r.random() < 0.2, r.random() < 0.2)
        elif pick == 1:
            ev = MediaMarkProcessed(
                r.choice(marks) if marks and r.random() < 0.7 else r.choice(["m0", "m999", "zz"]), cid
            )
        elif pick == 2:
            ev = DtmfEnd(r.choice("0123456789ABCD*#"), cid)
        elif pick == 3:
            ev = MediaXoff(cid)
        elif pick == 4:
            ev = MediaXon(cid)
        elif pick == 5:
            ev = QueueDrained(cid)
        elif pick == 6:
            ev = MediaBufferingCompleted(r.choice(["buf-1", "m1", "x"]), cid)
        elif pick == 7:
            ev = ErrorEvent(r.choice(["Unable to parse JSON command", "", "x" * 200]), cid)
        elif pick == 8:
            fmt = r.choice(list(FORMATS))
            ev = MediaStart("vr3ai", "WebSocket/vr3ai/0x1", r.choice([channel_id, "other"]), fmt, FORMATS[fmt][0], 20)
        else:
            return r.choice(
                [
                    "MEDIA_MARK_PROCESSED",
                    "DTMF_END digit:",
                    "DTMF_END digit:12",
                    "STATUS queue_length:x",
                    "MEDIA_XOFF channel_id",
                    "ERROR",
                    "QUEUE_DRAINED extra:field:more",
                ]
            )
        try:
            return format_event(ev, control if r.random() < 0.9 else r.choice(list(ControlFormat)))
        except (TypeError, ValueError):
            return "MEDIA_XON"

    def binary_size(self) -> int:
        r = self.rng
        pick = r.random()
        if pick < 0.55:
            return r.randint(0, 2000)
        if pick < 0.85:
            return r.randint(2000, 65535)
        return r.choice([65534, 65535, 65536, r.randint(60000, 65536)])


# ------------------------------------------------------------------------------------------------
# Pre-MEDIA_START cases
# ------------------------------------------------------------------------------------------------


class PreStartFuzzer:
    def __init__(self, url: str, port: int, registry: MediaRegistry, seed: int, findings: Findings) -> None:
        self.url = url
        self.port = port
        self.registry = registry
        self.rng = random.Random(seed)
        self.text = TextGen(self.rng)
        self.findings = findings
        self.expected_ids: list[str] = []
        self.futures: list[asyncio.Future[MediaSession]] = []
        self.sessions: list[MediaSession] = []
        self.seq = 0

    def plan(self) -> Callable[[], Any]:
        """Draw one case (all randomness here, so the plan is the same whatever the timing)."""
        r, t = self.rng, self.text
        self.seq += 1
        n = self.seq
        kind = r.choices(
            [
                "junk",
                "binary",
                "unknown_id",
                "bad_auth",
                "bad_format",
                "blast",
                "silence",
                "abort",
                "early_close",
                "start_then_abort",
                "no_subprotocol",
                "raw",
                "twins",
            ],
            [26, 10, 14, 6, 7, 8, 1, 5, 4, 5, 3, 11, 3],
        )[0]
        if kind == "junk":
            first = t.junk()
            return lambda: self.send_first(kind, first)
        if kind == "binary":
            data = os.urandom(t.binary_size())
            return lambda: self.send_first(kind, data)
        if kind == "unknown_id":
            cid = r.choice([f"nobody-{n}", "\u00e9t\u00e9-" + str(n), "x" * r.choice([1, 200, 10_000]), f"vr3m-{n}"])
            control = r.choice(list(ControlFormat))
            text = media_start(cid, r.choice(list(FORMATS)), control=control)
            return lambda: self.send_first(kind, text)
        if kind == "bad_auth":
            cid = f"auth-{n}"
            auth = r.choice(
                [
                    None,
                    "Basic " + base64.b64encode(b"vr3ai-media:wrong").decode(),
                    "Bearer x",
                    "Basic !!!",
                    "Basic " + base64.b64encode(b"no-colon").decode(),
                    AUTH.lower(),
                ]
            )
            return lambda: self.bad_auth(cid, auth)
        if kind == "bad_format":
            cid = f"fmt-{n}"
            fmt, size, ptime = r.choice(
                [
                    ("opus", 0, 20),
                    ("g722", 160, 20),
                    ("slin16", 641, 20),
                    ("ulaw", 0, 20),
                    ("ulaw", -160, 20),
                    ("slin", 3, 20),
                    ("", 160, 20),
                    ("gsm", 33, 20),
                    ("ulaw", 160, 30),  # size does not match ptime
                    ("ulaw", 160, 1000),
                    ("ulaw", 8, 20),  # 1 ms frames
                    ("ulaw", 160_000, 20),  # 20 s frames
                ]
            )
            control = r.choice(list(ControlFormat))
            return lambda: self.bad_format(cid, fmt, size, ptime, control)
        if kind == "blast":
            msgs: list[str | bytes] = [t.junk() or "x"]
            for _ in range(r.randint(1, 20)):
                msgs.append(t.junk() if r.random() < 0.6 else os.urandom(r.randint(0, 3000)))
            return lambda: self.blast(msgs)
        if kind == "silence":
            return self.silence
        if kind == "abort":
            return self.abort_at_once
        if kind == "early_close":
            code = r.choice([1000, 1001, 1011, 3000, 4999])
            return lambda: self.early_close(code)
        if kind == "start_then_abort":
            cid = f"short-{n}"
            fmt = r.choice(list(FORMATS))
            control = r.choice(list(ControlFormat))
            return lambda: self.start_then_abort(cid, fmt, control)
        if kind == "no_subprotocol":
            text = media_start(f"nosub-{n}")
            return lambda: self.no_subprotocol(text)
        if kind == "twins":
            cid = f"twin-{n}"
            return lambda: self.twins(cid)
        frame = self.raw_frame(n)
        return lambda: self.raw(frame)

    def expect(self, cid: str, auth: tuple[str, str] | None = None) -> asyncio.Future[MediaSession]:
        """Register like a call owner; what is still pending at the end is withdrawn (its timeout)."""
        fut = self.registry.expect(cid, auth)
        self.expected_ids.append(cid)
        self.futures.append(fut)
        return fut

    async def send_first(self, kind: str, first: str | bytes) -> None:
        expected = 1002
        if _wire_size(first) > MAX_MEDIA_MESSAGE_BYTES:
            expected = 1009  # refused by size before anything reads it
        elif isinstance(first, str):
            ev = parse_event(first)
            if isinstance(ev, MediaStart):
                expected = 1008  # a well-formed MEDIA_START nobody expects
        async with asterisk(self.url) as ws:
            await ws.send(first)
            code = await close_code(ws)
        self.check(kind, code, expected, first)

    async def bad_auth(self, cid: str, auth: str | None) -> None:
        fut = self.expect(cid, (USER, PASSWORD))
        async with asterisk(self.url, auth=auth) as ws:
            await ws.send(media_start(cid))
            code = await close_code(ws)
        self.check("bad_auth", code, 1008, auth)
        if fut.done() or cid not in self.registry.pending:
            self.findings.fail(f"bad_auth {auth!r}: the expectation was consumed")

    async def bad_format(self, cid: str, fmt: str, size: int, ptime: int, control: ControlFormat) -> None:
        fut = self.expect(cid)
        text = media_start(cid, fmt, size, ptime, control)
        ev = parse_event(text)
        async with asterisk(self.url) as ws:
            await ws.send(text)
            code = await close_code(ws)
        if not isinstance(ev, MediaStart):
            self.check("bad_format(malformed)", code, 1002, text)
            return
        self.check("bad_format", code, 1003, text)
        try:
            await asyncio.wait_for(asyncio.shield(fut), 1)
            self.findings.fail(f"bad_format {text!r}: the call owner got a session")
        except MediaFormatError:
            pass
        except Exception as exc:
            self.findings.fail(f"bad_format {text!r}: owner's future failed with {exc!r}")

    async def blast(self, msgs: list[str | bytes]) -> None:
        async with asterisk(self.url) as ws:
            try:
                for m in msgs:
                    await ws.send(m)
            except ConnectionClosed:
                pass
            code = await close_code(ws)
        first = msgs[0]
        expected = 1008 if isinstance(first, str) and isinstance(parse_event(first), MediaStart) else 1002
        if _wire_size(first) > MAX_MEDIA_MESSAGE_BYTES:
            expected = 1009
        elif code == 1009 and any(_wire_size(m) > MAX_MEDIA_MESSAGE_BYTES for m in msgs):
            # A message over the size limit read in the same segment as the first one is refused
            # (1009) before the first one is judged.
            expected = 1009
        self.check("blast", code, expected, first)

    async def silence(self) -> None:
        async with asterisk(self.url) as ws:
            code = await close_code(ws, within=MEDIA_START_TIMEOUT + 5)
        self.check("silence", code, 1002, None)

    async def abort_at_once(self) -> None:
        async with asterisk(self.url) as ws:
            ws.transport.abort()
        self.findings.outcomes["abort"] += 1

    async def early_close(self, code: int) -> None:
        async with asterisk(self.url) as ws:
            await ws.close(code)
        self.findings.outcomes["early_close"] += 1

    async def start_then_abort(self, cid: str, fmt: str, control: ControlFormat) -> None:
        fut = self.expect(cid, (USER, PASSWORD))
        async with asterisk(self.url) as ws:
            await ws.send(media_start(cid, fmt, control=control))
            session = await asyncio.wait_for(fut, 5)
            ws.transport.abort()
        info = await asyncio.wait_for(session.closed, 5)
        self.sessions.append(session)
        if info.initiator != "remote":
            self.findings.fail(f"start_then_abort: close info {info}")
        self.findings.outcomes["start_then_abort"] += 1

    async def twins(self, cid: str) -> None:
        """Two sockets claim the same expected channel at once: exactly one gets the call."""
        fut = self.expect(cid)
        async with asterisk(self.url) as a, asterisk(self.url) as b:
            await asyncio.gather(a.send(media_start(cid)), b.send(media_start(cid)))
            session = await asyncio.wait_for(fut, 5)
            codes = await asyncio.gather(close_code(a, within=0.5), close_code(b, within=0.5))
        await asyncio.wait_for(session.closed, 5)
        self.sessions.append(session)
        if sorted(codes) != [-1, 1008]:  # -1: the winner stays open until we leave
            self.findings.fail(f"twins: close codes {codes}, expected one 1008 and one open socket")
        self.findings.outcomes["twins"] += 1

    async def no_subprotocol(self, text: str) -> None:
        async with asterisk(self.url, subprotocol=False) as ws:
            if ws.subprotocol is not None:
                self.findings.fail(f"server chose subprotocol {ws.subprotocol!r} that was not offered")
            await ws.send(text)
            code = await close_code(ws)
        self.check("no_subprotocol", code, 1008, text)

    # --- raw frames ---------------------------------------------------------------------------------
    def raw_frame(self, n: int) -> bytes:
        r = self.rng
        pick = r.randrange(9)
        if pick == 0:
            return _frame(0x1, b"\xff\xfe\xfd" + os.urandom(r.randint(0, 20)))  # invalid UTF-8 text
        if pick == 1:
            return _frame(0x1, b"MEDIA_XON", mask=False)  # clients must mask
        if pick == 2:
            return _frame(r.choice([0x3, 0x4, 0x5, 0xB, 0xF]), b"x")  # reserved opcode
        if pick == 3:
            return _frame(0x8, struct.pack("!H", r.choice([0, 999, 1005, 1006, 1015, 2999, 5000])))  # bad close
        if pick == 4:
            return bytes([0x82, 0xFF]) + struct.pack("!Q", 2**62) + os.urandom(4)  # absurd length
        if pick == 5:
            whole = _frame(0x1, media_start(f"raw-{n}").encode())
            return whole[: r.randint(1, len(whole) - 1)]  # truncated, then EOF
        if pick == 6:
            text = media_start(f"frag-{n}").encode()
            cut = r.randint(1, len(text) - 1)
            return _frame(0x1, text[:cut], fin=False) + _frame(0x0, text[cut:])  # valid fragments
        if pick == 7:
            return _frame(0x9, b"ping") + _frame(0x1, b"not a media start")
        return bytes([0x81 | 0x70]) + _frame(0x1, b"MEDIA_XON")[1:]  # RSV bits without extension

    async def raw(self, frame: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                (
                    f"GET {MEDIA_WS_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                    f"Sec-WebSocket-Protocol: media\r\nAuthorization: {AUTH}\r\n\r\n"
                ).encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            if not head.startswith(b"HTTP/1.1 101"):
                self.findings.fail(f"raw: handshake refused: {head[:60]!r}")
                return
            writer.write(frame)
            await writer.drain()
            if self.rng.random() < 0.5:
                writer.write_eof()
            # The server must end the connection by itself: a close frame (protocol error, unknown
            # channel, or MEDIA_START timeout) or dropping TCP.
            code = await asyncio.wait_for(server_close(reader), MEDIA_START_TIMEOUT + 5)
            self.findings.outcomes[f"raw:{code}"] += 1
        except TimeoutError:
            self.findings.fail(f"raw: server kept the connection open after {frame[:24]!r}")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    def check(self, kind: str, code: int | None, expected: int, first: Any) -> None:
        self.findings.outcomes[f"{kind}:{code}"] += 1
        if code != expected:
            self.findings.fail(f"{kind}: close code {code}, expected {expected}, first message {_short(first)}")


def _wire_size(msg: str | bytes) -> int:
    return len(msg.encode() if isinstance(msg, str) else msg)


async def server_close(reader: asyncio.StreamReader) -> int | None:
    """Read server frames (unmasked) until a close frame (its code) or EOF (None)."""
    try:
        while True:
            b0, b1 = await reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await reader.readexactly(8))[0]
            payload = await reader.readexactly(n)
            if b0 & 0x0F == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def _frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


# ------------------------------------------------------------------------------------------------
# In-session cases
# ------------------------------------------------------------------------------------------------


class SessionFuzzer:
    def __init__(self, url: str, registry: MediaRegistry, seed: int, findings: Findings, tmp: Path) -> None:
        self.url = url
        self.registry = registry
        self.rng = random.Random(seed)
        self.text = TextGen(self.rng)
        self.findings = findings
        self.tmp = tmp
        self.messages = 0
        self.sessions = 0
        self.seq = 0

    def plan(self, n_messages: int, sizes: list[int] | None = None) -> Callable[[], Any]:
        """Draw everything random for one session now; return the coroutine factory that plays it."""
        r, t = self.rng, self.text
        self.seq += 1
        cid = f"fuzz-{self.seq}-{r.getrandbits(32):08x}"
        fmt = r.choice(list(FORMATS))
        size = FORMATS[fmt][0]
        ptime = r.choice([20, 20, 20, 0, -5])  # <= 0: derived from the frame size
        control = r.choice(list(ControlFormat))
        config = MediaConfig(
            target_lead_ms=r.choice([20.0, 60.0, 200.0]),
            send_silence=r.random() < 0.8,
            fast_start=r.random() < 0.8,
            max_inbound_frames=r.choice([1, 5, 50]),
            status_interval_s=r.choice([0.0, 0.1, 5.0]),
            resync_threshold_ms=r.choice([0.0, 40.0]),
        )
        # Process-wide, switched as each session starts: 1: sockets are read by the clock's ticks
        # (vr3ai.media.tickread) whenever one is up; 16: only while 16 fuzz sessions are (rarely);
        # 0: never. Mixed, so the reader also switches sockets between the clock and the loop
        # while frames fly.
        tick_reads_from = r.choice([0, 1, 1, 16])
        record = r.random() < 0.3
        auth = r.random() < 0.5
        reader_mode = r.choices(["echo", "drain", "stall"], [6, 3, 1])[0]
        agent_seed = r.getrandbits(32)
        ending = r.choices(
            ["close", "close_odd", "abort", "server_close", "agent_hangup", "oversize"],
            [6, 2, 3, 2, 2, 0.2 if sizes is None else 0],
        )[0]
        script: list[tuple[str, Any]] = []
        if sizes is not None:
            script = [("bin", os.urandom(s)) for s in sizes]
        else:
            for _ in range(n_messages):
                pick = r.random()
                if pick < 0.38:
                    script.append(("bin", os.urandom(t.binary_size())))
                elif pick < 0.78:
                    script.append(("event", r.getrandbits(32)))
                else:
                    script.append(("text", t.junk()))
                if r.random() < 0.15:
                    script.append(("pause", r.choice([0, 0, 0.001, 0.005, 0.02])))
        return lambda: self.play(
            cid,
            fmt,
            size,
            ptime,
            control,
            config,
            record,
            auth,
            reader_mode,
            agent_seed,
            ending,
            script,
            tick_reads_from,
        )

    async def play(
        self,
        cid: str,
        fmt: str,
        size: int,
        ptime: int,
        control: ControlFormat,
        config: MediaConfig,
        record: bool,
        auth: bool,
        reader_mode: str,
        agent_seed: int,
        ending: str,
        script: list[tuple[str, Any]],
        tick_reads_from: int,
    ) -> None:
        rec_path = self.tmp / f"{cid}.wav" if record else None
        self.registry.engine.retune(tick_reads_from=tick_reads_from)
        fut = self.registry.expect(cid, (USER, PASSWORD) if auth else None, recording_path=rec_path, config=config)
        marks: list[str] = []
        # Events are drawn while playing (they may name marks the server has sent by then), from
        # the session's own rng so that the other sessions' timing cannot shift them.
        events = TextGen(random.Random(agent_seed ^ 1))
        async with asterisk(self.url, auth=AUTH if auth else None) as ws:
            await ws.send(media_start(cid, fmt, size, ptime, control))
            session = await asyncio.wait_for(fut, 5)
            self.sessions += 1
            agent = asyncio.create_task(fuzz_agent(session, random.Random(agent_seed)), name=f"fuzz-agent-{cid}")
            reader = asyncio.create_task(asterisk_reader(ws, reader_mode, marks, control), name=f"fuzz-read-{cid}")
            try:
                for kind, item in script:
                    if kind == "pause":
                        await asyncio.sleep(item)
                        continue
                    if kind == "event":
                        item = events.control_event(cid, marks, control)
                    await ws.send(item)
                    self.messages += 1
                    if self.messages % 8 == 0:
                        await asyncio.sleep(0)
                # One reader at a time on a websockets connection: end() may read the close.
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                await self.end(ws, session, ending)
            except ConnectionClosed as exc:
                if not session.closed.done() or session.closed.result().initiator != "local":
                    self.findings.fail(f"session {cid}: server closed the socket mid-stream: {exc!r}")
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        try:
            info = await asyncio.wait_for(asyncio.shield(session.closed), 5)
            self.findings.outcomes[f"session_end:{info.initiator}:{info.code}"] += 1
        except TimeoutError:
            self.findings.fail(f"session {cid}: did not end after its socket closed ({ending})")
        try:
            await asyncio.wait_for(asyncio.shield(session.recording), 10)
        except TimeoutError:
            self.findings.fail(f"session {cid}: recording future never resolved")
        if rec_path is not None and session.recording.done() and session.recording.result() is None:
            self.findings.fail(f"session {cid}: recording requested but not written")
        try:
            await asyncio.wait_for(agent, 3)
        except TimeoutError:
            self.findings.fail(f"session {cid}: the agent's frames()/events() did not end after CallEnded")
        except Exception as exc:
            self.findings.fail(f"session {cid}: agent (CallAudio user) got {exc!r}")
        for _ in range(100):
            if cid not in self.registry.active:
                break
            await asyncio.sleep(0.01)
        else:
            self.findings.fail(f"session {cid}: still in registry.active after it ended")

    async def end(self, ws: ClientConnection, session: MediaSession, ending: str) -> None:
        if ending == "close":
            await ws.close(1000)
        elif ending == "close_odd":
            await ws.close(self.rng.choice([1001, 1011, 3000, 4000]))
        elif ending == "abort":
            ws.transport.abort()
        elif ending == "server_close":
            await session.close(1000, "owner ended the call")
            await close_code(ws)
        elif ending == "agent_hangup":
            await session.hangup("fuzz")
            await close_code(ws)
        else:
            # Larger than the media message limit (64 KiB): the server closes with 1009, possibly
            # while the frame is still being written.
            try:
                await ws.send(b"\x00" * (MAX_MEDIA_MESSAGE_BYTES + 1))
            except ConnectionClosed:
                pass
            code = await close_code(ws, within=10)
            # None: the server's close frame lost the race with its TCP reset while we were still
            # writing the frame; either way the server refused the frame and ended the session.
            if code not in (1009, None):
                self.findings.fail(f"oversize frame: close code {code}, expected 1009")


async def asterisk_reader(ws: ClientConnection, mode: str, marks: list[str], control: ControlFormat) -> None:
    """What chan_websocket does with what we send: reads it (or stalls), and learns mark ids."""
    if mode == "stall":
        await asyncio.Event().wait()
    try:
        async for msg in ws:
            if isinstance(msg, str):
                ev = _command_mark(msg)
                if ev:
                    marks.append(ev)
                    if mode == "echo" and len(marks) % 2:
                        await ws.send(format_event(MediaMarkProcessed(ev, None), control))
    except ConnectionClosed:
        pass


def _command_mark(text: str) -> str | None:
    if text.startswith("MARK_MEDIA "):
        return text.split(" ", 1)[1]
    if text.startswith("{") and "MARK_MEDIA" in text:
        try:
            value = json.loads(text).get("correlation_id")
        except ValueError:
            return None
        return value if isinstance(value, str) else None
    return None


async def fuzz_agent(session: MediaSession, rng: random.Random) -> None:
    """A CallAudio user doing everything an agent may do, at random, until CallEnded; then both
    iterators must end on their own (the caller bounds how long that may take)."""
    inbox: asyncio.Queue[Any] = asyncio.Queue()

    async def pump_events() -> None:
        # Never cancel an anext() of events(): that would close the generator. Read it here instead.
        seen_end = False
        async for ev in session.events():
            if seen_end:
                raise AssertionError(f"event after CallEnded: {ev!r}")
            seen_end = isinstance(ev, CallEnded)
            inbox.put_nowait(ev)
        if not seen_end:
            raise AssertionError("events() ended without CallEnded")

    async def consume_frames() -> None:
        async for _ in session.frames():
            if rng.random() < 0.1:
                await asyncio.sleep(rng.choice([0, 0.01, 0.05]))

    pump = asyncio.create_task(pump_events())
    frames_task = asyncio.create_task(consume_frames()) if rng.random() < 0.7 else None
    while True:
        try:
            ev = await asyncio.wait_for(inbox.get(), rng.choice([0.005, 0.02, 0.05]))
        except TimeoutError:
            ev = None
        if isinstance(ev, CallEnded):
            break
        if isinstance(ev, Dtmf | MarkHeard):
            continue
        if pump.done():
            break  # the pump failed; its exception is raised below
        act = rng.randrange(10)
        if act <= 2:
            n = rng.choice([0, 1, 3, 159, 160, 320, 1601, 16000])
            session.play(os.urandom(n), mark=rng.choice([None, None, f"u{rng.randrange(9)}", "", "é x:y"]))
        elif act == 3:
            session.flush()
        elif act == 4:
            session.heard_ms_of(rng.choice(["u1", "nope", ""]))
            session.queued_ms()
            session.clock_ms()
        elif act == 5:
            try:
                await session.get_status(within_s=0.05)
            except (TimeoutError, MediaSessionClosed):
                pass
        elif act == 6:
            session.send_command(rng.choice([GetStatus(), FlushMedia(), Answer(), MarkMedia("x1")]))
        elif act == 7 and rng.random() < 0.02:
            await session.hangup("agent is done")
    await pump
    if frames_task is not None:
        await frames_task


# ------------------------------------------------------------------------------------------------
# The test
# ------------------------------------------------------------------------------------------------


async def run_pool(factories: list[Callable[[], Any]], concurrency: int, findings: Findings, label: str) -> None:
    queue = list(reversed(factories))

    async def worker() -> None:
        while queue:
            factory = queue.pop()
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(factory(), 30)
            except ConnectionClosed as exc:
                late = time.monotonic() - t0 >= MEDIA_START_TIMEOUT
                if late and exc.rcvd is not None and exc.rcvd.code == 1002 and label == "pre-start":
                    # This client (on a loaded box) took longer than the MEDIA_START timeout to send:
                    # the server was right to close. Not the case we meant to test; counted.
                    findings.outcomes["slow_client_timed_out"] += 1
                else:
                    findings.fail(f"{label}: client-side {exc!r}")
            except (InvalidHandshake, OSError, TimeoutError) as exc:
                findings.fail(f"{label}: client-side {exc!r}")
            except AssertionError:
                raise
            except Exception as exc:
                findings.fail(f"{label}: {exc!r}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def fresh_call_works(url: str, registry: MediaRegistry, cid: str) -> None:
    fut = registry.expect(cid, (USER, PASSWORD))
    async with asterisk(url) as ws:
        await ws.send(media_start(cid))
        session = await asyncio.wait_for(fut, 5)
        frame = await asyncio.wait_for(ws.recv(), 2)
        assert isinstance(frame, bytes) and len(frame) % 160 == 0 and frame
        events = session.events()
        await ws.send(format_event(DtmfEnd("5", cid)))
        ev = await asyncio.wait_for(anext(events), 2)
        assert isinstance(ev, Dtmf) and ev.digit == "5"
    info = await asyncio.wait_for(session.closed, 5)
    assert (info.initiator, info.code) == ("remote", 1000)


@pytest.fixture
def quiet_warnings() -> Iterator[None]:
    """Thousands of expected warnings ("unknown channel id", "not a MEDIA_START"): only ERROR+ matters."""
    loggers = [logging.getLogger(name) for name in ("vr3ai", "uvicorn", "websockets")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@pytest.mark.usefixtures("quiet_warnings")
async def test_media_websocket_survives_10k_fuzz_cases(tmp_path: Path) -> None:
    catcher = TracebackCatcher()
    errors: list[logging.LogRecord] = []

    class ErrorList(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record)

    error_list = ErrorList(logging.ERROR)
    root = logging.getLogger()
    root.addHandler(catcher)
    root.addHandler(error_list)
    baseline = set(asyncio.all_tasks())
    findings = Findings()
    registry = MediaRegistry(media_start_timeout=MEDIA_START_TIMEOUT)
    t0 = time.monotonic()
    pre = sess = None
    try:
        async with serve(registry) as (url, port, server_task):
            pre = PreStartFuzzer(url, port, registry, SEED, findings)
            await run_pool([pre.plan() for _ in range(PRE_CASES)], 12, findings, "pre-start")
            t_pre = time.monotonic() - t0
            await fresh_call_works(url, registry, "after-pre-start")

            sess = SessionFuzzer(url, registry, SEED + 1, findings, tmp_path)
            plans = [sess.plan(0, sizes=SWEEP)]
            planned = len(SWEEP)
            while planned < SESSION_CASES:
                n = sess.rng.randint(20, 400)
                plans.append(sess.plan(n))
                planned += n
            await run_pool(plans, 8, findings, "session")
            # Sessions the server-side agent hangs up early deliver fewer messages than planned (more
            # of them on a loaded box): top up until the promised number of cases really ran.
            for _ in range(20):
                missing = SESSION_CASES - sess.messages
                if missing <= 0:
                    break
                extra = []
                while missing > 0:
                    n = sess.rng.randint(20, 400)
                    extra.append(sess.plan(n))
                    missing -= n
                await run_pool(extra, 8, findings, "session")
            await fresh_call_works(url, registry, "after-sessions")

            for cid in pre.expected_ids:  # the call owner's timeout would withdraw these
                registry.cancel(cid)
            for fut in pre.futures:
                if fut.done() and not fut.cancelled():
                    fut.exception()
            assert registry.active == {}, f"sessions still active: {list(registry.active)[:10]}"
            assert registry.pending == [], f"expectations left: {registry.pending[:10]}"
            for _ in range(100):
                if len(registry.engine.clock) == 0:
                    break
                await asyncio.sleep(0.02)
            assert len(registry.engine.clock) == 0, "the media clock still services sessions"
            leftovers = await _pending_tasks(baseline | {server_task}, 5)
            assert not leftovers, f"tasks pending while the server idles: {leftovers[:10]}"
        leftovers = await _pending_tasks(baseline, 5)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        root.removeHandler(catcher)
        root.removeHandler(error_list)
    elapsed = time.monotonic() - t0
    total = PRE_CASES + (sess.messages if sess else 0)
    print(
        f"\nmedia fuzz: seed={SEED} cases={total} (pre-start connections {PRE_CASES} in {t_pre:.1f}s, in-session "
        f"messages {sess.messages if sess else 0} over {sess.sessions if sess else 0} sessions) in {elapsed:.1f}s\n"
        f"  outcomes={dict(sorted(findings.outcomes.items()))}\n"
        f"  ERROR records: {Counter(r.getMessage().splitlines()[0][:80] for r in errors)}\n"
        f"  third-party tracebacks: {Counter(f'{r.name}: {r.getMessage()[:60]}' for r in catcher.records)}"
    )
    assert not leftovers, f"tasks pending after shutdown: {leftovers[:10]}"
    assert not findings.failures, f"{len(findings.failures)} failures:\n" + "\n".join(findings.failures[:25])
    ours = [r for r in catcher.records if _from_our_code(r)]
    tracebacks = [f"{r.name}: {r.getMessage()[:200]}\n{_tb(r)}" for r in ours]
    assert not tracebacks, "logged at ERROR with a traceback:\n" + "\n".join(tracebacks[:5])
    assert total >= PRE_CASES + SESSION_CASES


def _from_our_code(record: logging.LogRecord) -> bool:
    """A traceback logged by vr3ai, or one that passes through vr3ai (incl. uvicorn's "Exception in
    ASGI application" for anything escaping the endpoint). uvicorn's own protocol-error logs (e.g.
    invalid UTF-8 from the client) are third-party noise, reported separately."""
    if record.name.startswith("vr3ai") or "ASGI application" in record.getMessage():
        return True
    exc = record.exc_info[1] if record.exc_info else None
    frames = traceback.extract_tb(exc.__traceback__) if exc is not None else []
    return any(in_our_code(f.filename) for f in frames)


def _tb(record: logging.LogRecord) -> str:
    exc = record.exc_info[1] if record.exc_info else None
    return "".join(traceback.format_exception(exc))[-2000:] if exc is not None else ""


async def _pending_tasks(exclude: set[asyncio.Task[Any]], within_s: float) -> list[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    me = asyncio.current_task()
    while True:
        pending = [t for t in asyncio.all_tasks() if t not in exclude and t is not me and not t.done()]
        if not pending or loop.time() > deadline:
            return [t.get_name() + " " + repr(t.get_coro())[:80] for t in pending]
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------------------------
# Regressions for bugs this fuzz found (fixed in session.py while it was being written)
# ------------------------------------------------------------------------------------------------


async def test_odd_sized_slin_frame_does_not_corrupt_the_recording(tmp_path: Path) -> None:
    registry = MediaRegistry(media_start_timeout=MEDIA_START_TIMEOUT)
    path = tmp_path / "rec.wav"
    tone = (np.full(160, 1000, dtype="<i2")).tobytes()  # 20 ms of slin at a constant 1000
    async with serve(registry) as (url, _port, _task):
        fut = registry.expect("odd-rec", recording_path=path)
        async with asterisk(url, auth=None) as ws:
            await ws.send(media_start("odd-rec", "slin"))
            session = await asyncio.wait_for(fut, 5)
            await ws.send(b"\x01" * 321)  # one odd-sized message from a broken peer
            for _ in range(25):
                await ws.send(tone)
        assert await asyncio.wait_for(session.recording, 10) == path
    with wave.open(str(path)) as wav:
        left = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)[:, 0]
    assert int((left == 1000).sum()) >= 160 * 20, sorted(set(left.tolist()))[:5]


class _NullTransport:
    close_code = None

    def send_text(self, text: str) -> None:
        pass

    def send_bytes(self, data: bytes) -> None:
        pass

    async def receive(self) -> str | bytes | None:
        return None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


async def test_absurd_optimal_frame_size_is_refused() -> None:
    # 1 MB (125 s of u-law per frame) is harmless to allocate here and already absurd; the real
    # danger, 99,999,999,999, must never be tried on a shared machine.
    start = MediaStart("vr3ai", "WebSocket/vr3ai/0x1", "huge", "ulaw", 1_000_000, 20)
    with pytest.raises(MediaFormatError):
        MediaSession(_NullTransport(), start)


async def test_get_status_pending_when_the_socket_closes_raises_session_closed() -> None:
    """Found by the fuzz agent: the pending GET_STATUS future used to be cancelled when the session
    ended, so a caller that was never cancelled got CancelledError (and the fuzz test died of it)."""
    registry = MediaRegistry(media_start_timeout=MEDIA_START_TIMEOUT)
    async with serve(registry) as (url, _port, _task):
        fut = registry.expect("status-close")
        async with asterisk(url, auth=None) as ws:
            await ws.send(media_start("status-close"))
            session = await asyncio.wait_for(fut, 5)
            asking = asyncio.create_task(session.get_status(within_s=10))
            await asyncio.sleep(0.05)
        await asyncio.wait_for(session.closed, 5)
        with pytest.raises(MediaSessionClosed):
            await asyncio.wait_for(asking, 5)
        assert not asking.cancelled()
