"""Run the whole platform (API + dashboard) on a real uvicorn server inside the test's event loop.

Reusable by the dashboard tests, the browser tests and the real-Asterisk tests::

    async with start_platform(tmp_path) as p:                    # SQLite, telephony off, free port
        user = await p.create_user()                              # a new org + a dashboard user
        async with p.dashboard(user) as web:                      # httpx, signed in, CSRF handled
            r = await web.post_form("/telephony-configurations", {...})

    # Telephony on, against the harness' Asterisk (its websocket_client sections dial lab.media_port):
    async with start_platform(tmp_path, port=lab.media_port, telephony=True, agent_factory=f) as p:
        ...

``services_factory(settings) -> Services`` plugs in test doubles (``tests.web.fakes.FakeTelephony``);
``settings_overrides`` sets e.g. ``public_url``. The server listens on a socket bound before
start-up, so the port is known up front without racing another process for it. Running in the
test's own loop (not a thread) lets tests touch ``p.services`` directly and drive Playwright's
async API alongside.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography.fernet import Fernet
from fastapi import FastAPI

from vr3ai.app import create_app
from vr3ai.core.orgs import create_organization, create_user
from vr3ai.services import Services
from vr3ai.settings import Settings

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
DEFAULT_PASSWORD = "correct horse battery"


@dataclass
class DashboardUser:
    email: str
    password: str
    organization_id: str
    api_key: str


def ensure_web(app: FastAPI) -> None:
    """Include the dashboard unless the app factory already does (it will once the lead wires it)."""
    if any(getattr(r, "path", None) == "/login" for r in app.routes):
        return
    from vr3ai.web import web_router

    app.include_router(web_router())


@dataclass
class Platform:
    base_url: str
    settings: Settings
    services: Services
    app: FastAPI
    users: list[DashboardUser] = field(default_factory=list)

    async def create_user(
        self,
        email: str | None = None,
        password: str = DEFAULT_PASSWORD,
        *,
        organization_id: str | None = None,
        org_name: str = "Acme",
        max_concurrent_calls: int = 5,
        minutes_per_month: int | None = 1000,
    ) -> DashboardUser:
        """A dashboard user; in a new organization unless ``organization_id`` is given."""
        api_key = ""
        if organization_id is None:
            org, api_key = await create_organization(
                self.services.db,
                org_name,
                max_concurrent_calls=max_concurrent_calls,
                minutes_per_month=minutes_per_month,
            )
            organization_id = org.id
        email = email or f"user-{secrets.token_hex(4)}@example.com"
        await create_user(self.services.db, organization_id, email, password)
        user = DashboardUser(email, password, organization_id, api_key)
        self.users.append(user)
        return user

    def client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, follow_redirects=False, timeout=30, **kw)

    @asynccontextmanager
    async def dashboard(self, user: DashboardUser | None = None) -> AsyncIterator[DashboardClient]:
        async with self.client() as http:
            web = DashboardClient(http)
            if user is not None:
                await web.login(user.email, user.password)
            yield web

    def api(self, user: DashboardUser) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url + "/api/v1", headers={"Authorization": f"Bearer {user.api_key}"}, timeout=30
        )


class DashboardClient:
    """httpx with the dashboard's cookies and CSRF token handling."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def csrf(self, path: str = "/login") -> str:
        r = await self.http.get(path)
        m = CSRF_RE.search(r.text)
        assert m, f"no CSRF token on {path} ({r.status_code})"
        return m.group(1)

    async def login(self, email: str, password: str, *, expect: int = 303) -> httpx.Response:
        token = await self.csrf("/login")
        r = await self.http.post("/login", data={"email": email, "password": password, "csrf_token": token})
        assert r.status_code == expect, (r.status_code, r.text[:500])
        return r

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.http.get(path, **kw)

    async def post_form(
        self, path: str, data: dict[str, Any] | list[tuple[str, str]] | None = None, *, csrf_from: str = "/account"
    ) -> httpx.Response:
        """POST a form with the session's CSRF token (read from any signed-in page)."""
        token = await self.csrf(csrf_from)
        items = list(data.items()) if isinstance(data, dict) else list(data or [])
        form: dict[str, list[str]] = {}
        for key, value in [*items, ("csrf_token", token)]:
            form.setdefault(key, []).append(str(value))
        return await self.http.post(path, data=form)


def _bound_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@asynccontextmanager
async def start_platform(
    data_dir: Path,
    *,
    port: int = 0,
    telephony: bool = False,
    agent_factory: Any = None,
    services_factory: Callable[[Settings], Services] | None = None,
    settings_overrides: dict[str, Any] | None = None,
    app_hook: Callable[[FastAPI], None] | None = None,
) -> AsyncIterator[Platform]:
    """The platform on 127.0.0.1: a free port unless ``port`` is given (the real-Asterisk tests
    need the port Asterisk's websocket_client sections dial). ``telephony=True`` starts the real
    ARI listeners for every stored configuration (and for each one created later)."""
    sock = _bound_socket(port)
    port = int(sock.getsockname()[1])
    settings = Settings(
        **{
            "data_dir": Path(data_dir),
            "host": "127.0.0.1",
            "port": port,
            "start_telephony": telephony,
            "voice": False,
            "log_json": False,
            # A Fernet key, as secret.key holds: a passphrase would cost a 128 MiB scrypt per test
            # (tests/security/test_secret_key.py covers passphrases).
            "secret_key": Fernet.generate_key().decode(),
            # Flat names (``public_url``), routed to their groups by Settings.
            **(settings_overrides or {}),
        }
    )
    services = services_factory(settings) if services_factory else Services.build(settings)
    app = create_app(settings, services, **({"agent_factory": agent_factory} if agent_factory else {}))
    ensure_web(app)
    if app_hook is not None:
        app_hook(app)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", ws="websockets")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped during start-up")
            await asyncio.sleep(0.01)
        yield Platform(base_url=f"http://127.0.0.1:{port}", settings=settings, services=services, app=app)
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout=10)
        except TimeoutError:
            task.cancel()
        sock.close()
