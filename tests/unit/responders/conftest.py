"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 for the LLM responder tests.

Raw asyncio rather than a web framework: the tests need control over the bytes (chunk boundaries
in the middle of an SSE line, stalls, abrupt closes) that a framework would smooth over. It speaks
just enough HTTP/1.1: keep-alive, Content-Length request bodies, chunked responses.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    """A real ``chat.completion.chunk`` object."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def text_chunks(*pieces: str) -> list[dict[str, Any]]:
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": p}) for p in pieces]
    out.append(chunk({}, "stop"))
    return out


def tool_call_chunks(name: str, call_id: str = "call_1", text: str = "", args: str = "{}") -> list[dict[str, Any]]:
    """A tool call the way OpenAI streams it: id and name first, then arguments in pieces."""
    out = [chunk({"role": "assistant", "content": text or None})]
    half = len(name) // 2
    out.append(chunk({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                      "function": {"name": name[:half], "arguments": ""}}]}))
    out.append(chunk({"tool_calls": [{"index": 0, "function": {"name": name[half:]}}]}))
    for i in range(0, len(args), 2):
        out.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 2]}}]}))
    out.append(chunk({}, "tool_calls"))
    return out


@dataclass
class Script:
    """One response. ``events``: SSE payloads (dict → JSON, str → as is); ``[DONE]`` is appended."""

    events: list[Any] = field(default_factory=list)
    status: int = 200
    body: bytes | None = None
    content_type: str = "text/event-stream"
    gate_after: int | None = None
    """Pause after this many events until ``gate`` is set (proves the client streams)."""
    gate: asyncio.Event | None = None
    stall_s: float = 0.0
    """Sleep this long after sending the headers (timeouts)."""
    split_lines: bool = False
    """Send every SSE line in two TCP writes, cut in the middle of the JSON."""
    done: bool = True


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    json: dict[str, Any]


class ScriptedLLM:
    def __init__(self) -> None:
        self.scripts: list[Script] = []
        self.requests: list[Request] = []
        self.disconnects = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def add(self, *scripts: Script) -> None:
        self.scripts.extend(scripts)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                _method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(Request(path, headers, json.loads(body) if body else {}))
                script = self.scripts.pop(0) if self.scripts else Script(text_chunks("Okay."))
                if not await self._play(script, reader, writer):
                    return
        except (ConnectionError, asyncio.CancelledError):
            self.disconnects += 1
        finally:
            writer.close()

    async def _play(self, script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if script.body is not None:
            writer.write(
                f"HTTP/1.1 {script.status} X\r\nContent-Type: {script.content_type}\r\n"
                f"Content-Length: {len(script.body)}\r\n\r\n".encode() + script.body
            )
            await writer.drain()
            return True
        writer.write(
            f"HTTP/1.1 {script.status} OK\r\nContent-Type: {script.content_type}\r\n"
            "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        await writer.drain()
        if script.stall_s:
            await asyncio.sleep(script.stall_s)
        events = list(script.events) + (["[DONE]"] if script.done else [])
        for i, event in enumerate(events):
            if script.gate_after is not None and i == script.gate_after and script.gate is not None:
                # Wait for the test, but notice a client that hangs up meanwhile (barge-in).
                gate = asyncio.ensure_future(script.gate.wait())
                eof = asyncio.ensure_future(reader.read(1))
                done, _ = await asyncio.wait({gate, eof}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
                if eof in done and eof.result() == b"":
                    gate.cancel()
                    self.disconnects += 1
                    return False
                eof.cancel()
            payload = event if isinstance(event, str) else json.dumps(event)
            data = f"data: {payload}\n\n".encode()
            pieces = [data[: len(data) // 2], data[len(data) // 2 :]] if script.split_lines else [data]
            for piece in pieces:
                try:
                    writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    await writer.drain()
                except ConnectionError:
                    self.disconnects += 1
                    return False
                if script.split_lines:
                    await asyncio.sleep(0.005)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


@pytest.fixture
async def llm_server() -> AsyncIterator[ScriptedLLM]:
    server = ScriptedLLM()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
