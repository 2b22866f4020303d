"""A hostile "Asterisk": a real HTTP server on 127.0.0.1 that a tenant points its ``ari_endpoint_url``
at and that answers every request with text of its choosing (e.g. candidate passwords of other
tenants), to see what of it comes back to that tenant."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Answer = Callable[[str, str], tuple[int, Any]]
"""(method, path) → (status, JSON body)."""


@dataclass
class HostileServer:
    answer: Answer
    url: str = ""
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    """(method, path, Authorization header) of every request received."""

    async def _dispatch(self, request: Request) -> Response:
        self.requests.append((request.method, request.url.path, request.headers.get("authorization", "")))
        status, body = self.answer(request.method, request.url.path)
        return Response(json.dumps(body), status_code=status, media_type="application/json")

    def asgi(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self._dispatch, methods=["GET", "POST", "DELETE", "PUT"])])


@asynccontextmanager
async def run_hostile(answer: Answer) -> AsyncIterator[HostileServer]:
    server_state = HostileServer(answer)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    server_state.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(server_state.asgi(), log_config=None, access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for "started"
        await asyncio.sleep(0.01)
    try:
        yield server_state
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
