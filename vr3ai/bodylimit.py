"""A size limit on HTTP request bodies, enforced before anything parses them.

Why an ASGI middleware and not a check in the routes: FastAPI reads and parses a route's body
*before* it runs the route's dependencies, API-key authentication included, and the dashboard's
forms are read by Starlette as a whole. Without a limit anybody who can reach the port makes the
process hold and parse as much as they care to send. Here, around the whole application:

* a request whose ``Content-Length`` is above the limit is answered ``413`` at once, without
  reading a byte of its body (and the connection is closed, so the rest is not read either);
* a body without a length (``Transfer-Encoding: chunked``) or one longer than it announced is
  counted as the application reads it; past the limit the read fails with a 413
  (:class:`BodyTooLarge`, an ``HTTPException`` that FastAPI's body parsing and Starlette's form
  parsing let through), so at most the limit plus one chunk is ever held.

Why not FastAPI's own ``max_body_size`` (Starlette's ``RequestBodyLimitMiddleware``): it refuses a
too-long ``Content-Length`` only once the application reads the body or starts its response, in
plain text, and keeps the connection open, so the server goes on reading (and discarding) whatever
the client sends after it; here the refusal comes before the application runs, in the API's error
shape, and the connection is closed.

Limits (settings, bytes): ``VR3AI_MAX_BODY_BYTES`` for every request (1 MiB), and
``VR3AI_MAX_WORKFLOW_BODY_BYTES`` for the requests that carry a workflow definition (256 KiB):
``POST /api/v1/workflows``, ``PATCH /api/v1/workflows/{id}`` and the dashboard's workflow editor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_WORKFLOW_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class BodyRule:
    """Requests with one of ``methods`` on a path matching ``path`` get ``limit`` instead."""

    methods: frozenset[str]
    path: re.Pattern[str]
    limit: int


def workflow_rules(limit: int) -> list[BodyRule]:
    """The requests whose body is a workflow definition (API and dashboard editor)."""
    return [
        BodyRule(frozenset({"POST"}), re.compile(r"/api/v1/workflows/?"), limit),
        BodyRule(frozenset({"PATCH", "PUT"}), re.compile(r"/api/v1/workflows/[^/]+/?"), limit),
        BodyRule(frozenset({"POST"}), re.compile(r"/workflows(/[^/]+)?/?"), limit),
    ]


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large: at most {limit} bytes are accepted here")


def _message(limit: int) -> bytes:
    text = f"request body too large: at most {limit} bytes are accepted here"
    # The API's error shape ({"message", "detail"}); no input is echoed.
    return b'{"message":"%s","detail":"%s"}' % (text.encode(), text.encode())


class BodySizeLimit:
    """Pure ASGI middleware (see module doc): ``app.add_middleware(BodySizeLimit, default=...)``."""

    def __init__(self, app: ASGIApp, *, default: int, rules: Sequence[BodyRule] = ()) -> None:
        if default <= 0:
            raise ValueError("the body limit must be a positive number of bytes")
        self.app = app
        self.default = default
        self.rules = tuple(rules)

    def limit_for(self, method: str, path: str) -> int:
        for rule in self.rules:
            if method in rule.methods and rule.path.fullmatch(path):
                return min(rule.limit, self.default)
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("method", ""), scope.get("path", ""))
        declared: int | None = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None  # the HTTP server refuses malformed lengths before we run
        if declared is not None and declared > limit:
            await self._refuse(send, limit)
            return

        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message.get("status") == 413 and received > limit:
                    # The rest of an over-long body is not worth reading: close after the reply.
                    headers = list(message.get("headers", []))
                    headers.append((b"connection", b"close"))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            # Raised where nothing turned it into a response (a body read outside a route).
            if started:
                raise
            await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        body = _message(limit)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
