"""Small real servers on loopback for the security tests: each records what reached it.

Raw asyncio rather than a framework: the tests need exact control of the answer (a redirect to
another server, an error page) and a record of every connection, including ones that never sent
a complete request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

Answer = Callable[[str, str], tuple[int, dict[str, str], bytes]]
"""``(method, path) → (status, headers, body)``."""


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class RecordingServer:
    host: str
    port: int = 0
    connections: int = 0
    requests: list[Seen] = field(default_factory=list)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"


async def _serve_one(server: RecordingServer, answer: Answer, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
    server.connections += 1
    server.writers.add(writer)
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            await reader.readexactly(int(headers.get("content-length", "0") or 0))
            server.requests.append(Seen(method, path, headers))
            status, extra, body = answer(method, path)
            head_out = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
            head_out += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
            writer.write((head_out + "\r\n").encode() + body)
            await writer.drain()
    except ConnectionError:
        return
    finally:
        server.writers.discard(writer)
        writer.close()


@asynccontextmanager
async def recording_server(answer: Answer, host: str = "127.0.0.1") -> AsyncIterator[RecordingServer]:
    rec = RecordingServer(host)
    srv = await asyncio.start_server(lambda r, w: _serve_one(rec, answer, r, w), host, 0)
    rec.port = srv.sockets[0].getsockname()[1]
    try:
        yield rec
    finally:
        srv.close()
        for writer in list(rec.writers):  # keep-alive connections a client left open
            writer.close()
        await srv.wait_closed()


def ok_json(body: bytes = b"{}") -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, body
