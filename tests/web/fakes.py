"""Test doubles: a telephony manager whose state the test sets, and a fake ARI HTTP server.

The fake ARI answers exactly the requests diagnostics make, with the status codes and messages a
real Asterisk 22 gives (see ../shared/reference/asterisk-groundtruth.md); the real-Asterisk tests
check the same paths against the real thing.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vr3ai.core.quota import QuotaExceeded
from vr3ai.db.models import Workflow
from vr3ai.services import Services
from vr3ai.telephony.manager import CallRefused


class FakeTelephony:
    """Stands in for ``TelephonyManager``: records notifications, reports ``states[config_id]``."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.changed: list[str] = []
        self.deleted: list[str] = []
        self.states: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.calls: list[dict[str, str]] = []
        self.refuse: CallRefused | None = None
        self.conns: dict[str, Any] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def config_changed(self, config_id: str) -> None:
        self.changed.append(config_id)

    async def config_deleted(self, config_id: str) -> None:
        self.deleted.append(config_id)

    def status(self, config_id: str) -> dict[str, Any]:
        ari = self.states.get(
            config_id, {"state": "connected", "since": "2026-01-01T00:00:00+00:00", "last_error": None}
        )
        return {"ari": ari, "active_calls": 0, "recent_events": self.events.get(config_id, [])}

    def connection(self, config_id: str) -> Any:
        return self.conns.get(config_id)

    async def place_call(
        self, *, organization_id: str, workflow_id: str, config_id: str, to: str, from_extension: str | None = None
    ) -> str:
        if self.refuse is not None:
            raise self.refuse
        async with self.services.db.session() as s:
            wf = await s.get(Workflow, workflow_id)
        if wf is None or wf.organization_id != organization_id:
            raise CallRefused("workflow not found", 404)
        try:
            run = await self.services.runs.create(
                organization_id=organization_id,
                workflow_id=workflow_id,
                telephony_configuration_id=config_id,
                direction="outbound",
                context={
                    "caller_number": "6001",
                    "called_number": to,
                    "direction": "outbound",
                    "call_id": "fake-channel",
                    "provider": "ari",
                },
            )
        except QuotaExceeded as e:
            raise CallRefused(f"quota: {e.reason}", 429) from None
        self.calls.append(
            {"workflow_id": workflow_id, "config_id": config_id, "to": to, "from": from_extension, "run_id": run.id}
        )
        return run.id


@dataclass
class FakeAri:
    """A pretend Asterisk ARI. Tweak the fields, then point a configuration at ``url``."""

    user: str = "vr3ai"
    password: str = "vr3ai-secret"
    version: str = "22.10.1"
    modules: dict[str, str] = field(
        default_factory=lambda: {
            "res_ari.so": "Running",
            "chan_websocket.so": "Running",
            "res_websocket_client.so": "Running",
        }
    )
    applications: set[str] = field(default_factory=lambda: {"vr3ai"})
    ws_clients: dict[str, dict[str, str]] = field(
        default_factory=lambda: {"vr3ai": {"uri": "ws://127.0.0.1:8000/api/v1/telephony/ws/ari", "tls_enabled": "no"}}
    )
    expose_config: bool = True
    ari_loaded: bool = True
    read_only: bool = False
    """True: the user has read_only = yes (Asterisk answers every non-GET with 403 before routing)."""
    """False: the HTTP server answers but res_ari is not loaded (404 for every /ari path)."""
    url: str = ""
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    channels_created: list[str] = field(default_factory=list)

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return header == expected

    async def _dispatch(self, request: Request) -> Response:
        path = request.url.path
        self.requests.append((request.method, path, dict(request.query_params)))
        if not path.startswith("/ari/") or not self.ari_loaded:
            return Response("Not Found", status_code=404)
        if not self._authorized(request):
            return JSONResponse(
                {"error": "Authentication required"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="Asterisk REST Interface"'},
            )
        rest = path[len("/ari") :]
        q = request.query_params
        if self.read_only and request.method != "GET":
            return JSONResponse({"message": "Write access denied"}, status_code=403)
        if rest == "/asterisk/info":
            return JSONResponse({"system": {"version": self.version, "entity_id": "02:fc:00:00:00:01"}})
        if rest.startswith("/asterisk/modules/"):
            name = rest.rsplit("/", 1)[1]
            if name not in self.modules:
                return JSONResponse({"message": "Module could not be found in running modules"}, status_code=404)
            return JSONResponse(
                {"name": name, "description": "", "use_count": 0, "status": self.modules[name], "support_level": "core"}
            )
        if rest.startswith("/applications/"):
            name = rest.rsplit("/", 1)[1]
            if name not in self.applications:
                return JSONResponse({"message": "Application not found"}, status_code=404)
            return JSONResponse({"name": name, "channel_ids": [], "bridge_ids": []})
        if rest.startswith("/asterisk/config/dynamic/res_websocket_client/websocket_client/"):
            name = rest.rsplit("/", 1)[1]
            if not self.expose_config or name not in self.ws_clients:
                return JSONResponse({"message": "Could not find object"}, status_code=404)
            attrs = {
                "type": "websocket_client",
                "protocols": "media",
                "password": "media-secret-in-asterisk",
                **self.ws_clients[name],
            }
            return JSONResponse([{"attribute": k, "value": v} for k, v in attrs.items()])
        if rest == "/channels/externalMedia" and request.method == "POST":
            # Asterisk's validation order (resource_channels.c): app, encapsulation, external_host, format.
            if not q.get("app"):
                return JSONResponse({"message": "app cannot be empty"}, status_code=400)
            if q.get("transport") == "websocket" and q.get("encapsulation") != "none":
                return JSONResponse(
                    {"message": "encapsulation must be 'none' for websocket transport"}, status_code=400
                )
            if q.get("external_host") not in self.ws_clients:
                return JSONResponse(
                    {"message": "external_host must be a valid websocket_client connection id."}, status_code=400
                )
            if not q.get("format"):
                return JSONResponse({"message": "format cannot be empty"}, status_code=400)
            cid = q.get("channelId") or "1795663512.0"
            self.channels_created.append(cid)
            return JSONResponse({"id": cid, "name": f"WebSocket/{q.get('external_host')}/0x1", "state": "Down"})
        if rest.startswith(("/channels/", "/bridges/")) and request.method == "DELETE":
            return Response(status_code=404)
        return JSONResponse({"message": "not implemented in FakeAri"}, status_code=501)

    def asgi(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self._dispatch, methods=["GET", "POST", "DELETE"])])


@asynccontextmanager
async def run_fake_ari(ari: FakeAri | None = None) -> AsyncIterator[FakeAri]:
    ari = ari or FakeAri()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    ari.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(ari.asgi(), log_config=None, access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for "started"
        await asyncio.sleep(0.01)
    try:
        yield ari
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@dataclass
class FakeConnection:
    """What diagnostics need of a live ``AriConnection``: ``connected`` and the channel → call map."""

    connected: bool = True
    calls: dict[str, Any] = field(default_factory=dict)


class FakeMedia:
    """A media registry whose pretend Asterisk connects (``mode="connect"``), never arrives
    (``"silent"``), gives up with ChannelDestroyed cause 3 (``"unreachable"``), or is answered and
    then closed by the media server (``"refused"``, wrong Basic credentials)."""

    def __init__(self, conn: FakeConnection, mode: str = "connect") -> None:
        self.conn = conn
        self.mode = mode
        self.expected: list[tuple[str, Any]] = []
        self.cancelled: list[str] = []

    def expect(self, channel_id: str, basic_auth: Any = None) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.expected.append((channel_id, basic_auth))

        async def act() -> None:
            await asyncio.sleep(0.05)
            if self.mode == "connect":
                fut.set_result(object())
            elif self.mode in ("unreachable", "refused"):
                probe = self.conn.calls.get(channel_id)
                if probe is None:
                    return
                if self.mode == "refused":  # answered (MEDIA_START sent), then our server closed it
                    probe.feed({"type": "StasisStart", "channel": {"id": channel_id, "state": "Up"}})
                    cause, text = 16, "Normal Clearing"
                else:
                    cause, text = 3, "No route to destination"
                probe.feed(
                    {"type": "ChannelDestroyed", "cause": cause, "cause_txt": text, "channel": {"id": channel_id}}
                )

        self._task = asyncio.ensure_future(act())
        return fut

    def cancel(self, channel_id: str) -> None:
        self.cancelled.append(channel_id)
