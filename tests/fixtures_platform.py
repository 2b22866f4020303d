"""Fixtures shared by ``tests/api`` and ``tests/db``: both storage backends and the real HTTP server.

* ``backend`` is parametrized over ``sqlite`` and ``postgres`` (marked ``postgres``); every test that
  asks for ``database_url``/``db`` or ``platform`` runs once per backend.
* PostgreSQL: one throw-away server per session (``tests/pg.py``) with one migrated database that
  is emptied before each test; migration tests get fresh empty databases.
* ``platform``: the app served by a real uvicorn on 127.0.0.1 (pre-bound free port), one server per
  backend for the whole session, talked to over HTTP with httpx; tables are emptied before each
  test. Tests using it run in the session event loop
  (``pytestmark = pytest.mark.asyncio(loop_scope="session")``). Every response body is kept; at
  teardown none may contain a string of ``platform.never_returned`` (API keys, passwords, secret
  values), whichever route produced it.

Import the fixtures you need into a ``conftest.py`` (top-level ``tests/conftest.py`` is not ours).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn

from tests.pg import PostgresServer, PostgresUnavailable
from vr3ai.app import create_app
from vr3ai.core.orgs import create_organization
from vr3ai.db.migrate import upgrade
from vr3ai.db.models import Base
from vr3ai.db.session import Database
from vr3ai.services import Services
from vr3ai.settings import Settings

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


# --- storage backends ------------------------------------------------------------------------------


def _run_in_thread(coro: Any) -> Any:
    # Session fixtures are sync; a private loop in a thread cannot clash with pytest-asyncio's.
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


async def _migrate(url: str) -> None:
    database = Database(url)
    try:
        await upgrade(database)
    finally:
        await database.dispose()


PG_TEST_DB = "vr3ai_test"
# Emptying every table of one migrated database takes ~20 ms; CREATE DATABASE takes 250-500 ms.
_EMPTY_ALL = "; ".join(f'DELETE FROM "{t.name}"' for t in reversed(Base.metadata.sorted_tables))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as e:
        if os.environ.get("VR3AI_TEST_SKIP_POSTGRES"):
            pytest.skip(f"PostgreSQL unavailable: {e}")
        raise

    async def prepare() -> None:
        await server.create_database(PG_TEST_DB)
        await _migrate(server.url(PG_TEST_DB))

    try:
        _run_in_thread(prepare())
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file; tests get a copy (cheaper than migrating each one)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "vr3ai.db"
    _run_in_thread(_migrate(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pg(backend: str, request: pytest.FixtureRequest) -> PostgresServer | None:
    return request.getfixturevalue("postgres_server") if backend == "postgres" else None


@pytest.fixture
async def database_url(pg: PostgresServer | None, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty database with the current schema, private to the test."""
    if pg is None:
        path = tmp_path / "vr3ai.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    # Tests run one at a time, so one shared database emptied before each test isolates them.
    await pg.execute(PG_TEST_DB, _EMPTY_ALL)
    return pg.url(PG_TEST_DB)


@pytest.fixture
async def empty_database_url(pg: PostgresServer | None, tmp_path: Path) -> str:
    """A database with no tables at all, for migration tests."""
    if pg is None:
        return f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    return pg.url(await pg.create_database())


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await upgrade(database)
    try:
        yield database
    finally:
        await database.dispose()


# --- a fake telephony manager ------------------------------------------------------------------------


class FakeTelephony:
    """Stands in for ``vr3ai.telephony.manager.TelephonyManager`` (same methods, no Asterisk): records
    what the API tells the telephony layer; ``refuse`` makes ``place_call`` fail."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.calls: list[dict[str, str]] = []
        self.refuse: Exception | None = None
        self.fail_notifications = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def config_changed(self, config_id: str) -> None:
        self.events.append(("changed", config_id))
        if self.fail_notifications:
            raise RuntimeError("listener exploded")

    async def config_deleted(self, config_id: str) -> None:
        self.events.append(("deleted", config_id))

    def status(self, config_id: str) -> dict[str, Any]:
        return {"ari": {"state": "connected", "since": "2026-01-01T00:00:00Z", "last_error": None}}

    async def place_call(
        self, *, organization_id: str, workflow_id: str, config_id: str, to: str, from_extension: str | None = None
    ) -> str:
        if self.refuse is not None:
            raise self.refuse
        call = {"organization_id": organization_id, "workflow_id": workflow_id, "config_id": config_id, "to": to}
        if from_extension is not None:
            call["from_extension"] = from_extension
        self.calls.append(call)
        return str(uuid.uuid4())


# --- the HTTP platform ---------------------------------------------------------------------------------


@dataclass
class Tenant:
    org_id: str
    key: str
    http: httpx.AsyncClient


@dataclass
class Platform:
    services: Services
    base_url: str
    bodies: list[tuple[str, str]] = field(default_factory=list)
    never_returned: set[str] = field(default_factory=set)
    _clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self, api_key: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key is not None else {}

        async def keep(response: httpx.Response) -> None:
            await response.aread()
            self.bodies.append((f"{response.request.method} {response.request.url.path}", response.text))

        c = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30, event_hooks={"response": [keep]})
        self._clients.append(c)
        return c

    async def tenant(
        self, name: str = "Acme", *, max_concurrent_calls: int = 5, minutes_per_month: int | None = 1000
    ) -> Tenant:
        org, key = await create_organization(
            self.services.db, name, max_concurrent_calls=max_concurrent_calls, minutes_per_month=minutes_per_month
        )
        self.never_returned.add(key)
        return Tenant(org.id, key, self.client(key))

    def secret(self, value: str) -> str:
        """Register a value that no response may ever contain; returns it."""
        self.never_returned.add(value)
        return value

    def config_body(self, **overrides: Any) -> dict[str, Any]:
        """A valid telephony configuration body; its passwords are registered as never-returned."""
        body = config_body(**overrides)
        for key in ("app_password", "media_password"):
            if isinstance(body.get(key), str) and len(body[key]) >= 4:
                self.secret(body[key])
        return body

    async def workflow(self, tenant: Tenant, name: str = "Receptionist") -> str:
        r = await tenant.http.post("/api/v1/workflows", json={"name": name, "definition": workflow_definition()})
        return str(ok(r, 201)["id"])

    async def configuration(self, tenant: Tenant, **overrides: Any) -> str:
        r = await tenant.http.post("/api/v1/telephony-configurations", json=self.config_body(**overrides))
        return str(ok(r, 201)["id"])

    def leaked(self) -> list[str]:
        return [f"{where}: contains a secret" for where, body in self.bodies for s in self.never_returned if s in body]

    async def aclose(self) -> None:
        for c in self._clients:
            await c.aclose()


@dataclass
class RunningApp:
    services: Services
    base_url: str


class _TestServer(uvicorn.Server):
    """uvicorn that leaves signals to pytest, so Ctrl-C still stops a test run."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def serve(database_url: str, data_dir: Path) -> AsyncIterator[RunningApp]:
    """The real app on a real uvicorn, on 127.0.0.1 and a free port."""
    settings = Settings(data_dir=data_dir, database_url=database_url, start_telephony=False, voice=False)
    services = Services.build(settings)
    app = create_app(settings, services)
    # proto must say TCP: asyncio only sets TCP_NODELAY on accepted sockets whose listener has
    # proto == IPPROTO_TCP, and without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = _TestServer(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=2)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn exited during start-up (see the log above)")
            await asyncio.sleep(0.005)
        yield RunningApp(services=services, base_url=f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        sock.close()


# One server per backend for the whole session (start-up and shutdown cost ~0.4 s, which per test
# would dominate the run); each test starts from empty tables and its own clients.


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def sqlite_app(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningApp]:
    data_dir = tmp_path_factory.mktemp("sqlite-app")
    shutil.copyfile(sqlite_template, data_dir / "vr3ai.db")
    async with serve(f"sqlite+aiosqlite:///{data_dir / 'vr3ai.db'}", data_dir) as app:
        yield app


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def postgres_app(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningApp]:
    async with serve(postgres_server.url(PG_TEST_DB), tmp_path_factory.mktemp("postgres-app")) as app:
        yield app


@pytest.fixture
def app(backend: str, request: pytest.FixtureRequest) -> RunningApp:
    running: RunningApp = request.getfixturevalue(f"{backend}_app")
    return running


async def _empty_tables(db: Database) -> None:
    async with db.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            await conn.execute(table.delete())


@pytest_asyncio.fixture(loop_scope="session")
async def platform(app: RunningApp) -> AsyncIterator[Platform]:
    """The running app over HTTP, with empty tables. Tests using it must run in the session loop
    (``pytestmark = pytest.mark.asyncio(loop_scope="session")``)."""
    await _empty_tables(app.services.db)
    p = Platform(services=app.services, base_url=app.base_url)
    try:
        yield p
    finally:
        await p.aclose()
        app.services.telephony = None
    assert not p.leaked(), p.leaked()


@pytest.fixture
def fake_telephony() -> FakeTelephony:
    return FakeTelephony()


@pytest_asyncio.fixture(loop_scope="session")
async def platform_tel(platform: Platform, fake_telephony: FakeTelephony) -> Platform:
    """Like ``platform`` with :class:`FakeTelephony` as ``services.telephony``."""
    platform.services.telephony = fake_telephony  # type: ignore[assignment]
    return platform


# --- small helpers -----------------------------------------------------------------------------------


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
    )
    return response.json() if response.content else None


def workflow_definition() -> dict[str, Any]:
    """The smallest valid workflow: greet, then hang up."""
    return {
        "nodes": [
            {"id": "hello", "type": "start", "greeting": "Hello, you reached the test line."},
            {"id": "bye", "type": "end", "say": "Goodbye!"},
        ],
        "edges": [{"id": "e1", "from": "hello", "to": "bye"}],
    }


def config_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Office PBX",
        "provider": "ari",
        "ari_endpoint_url": f"http://pbx-{uuid.uuid4().hex[:8]}.example.com:8088",
        "stasis_app_name": "vr3ai",
        "app_password": "ari-pass-" + uuid.uuid4().hex,
        "websocket_client_name": "vr3ai",
        "from_extensions": ["PJSIP/6001"],
    }
    body.update(overrides)
    return body
