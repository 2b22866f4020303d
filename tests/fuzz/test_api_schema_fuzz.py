"""Fuzz the REST API from its own OpenAPI schema with schemathesis (issue "bad input").

One pytest test per operation of ``/openapi.json`` (``@schema.parametrize``), each running
schemathesis's examples, coverage (boundary values, missing/extra fields, wrong types) and fuzzing
phases against the real app on a real uvicorn on 127.0.0.1 (SQLite in a temp dir, no telephony,
no voice; a fake telephony manager so ``POST /workflows/{id}/calls`` reaches its handler).

Generated cases are steered towards the handlers rather than the front door:

* Requests carry a real organization's API key (now and then another organization's key, or junk).
* Path ids are drawn from real objects of the caller, real objects of another organization, hostile
  strings and schemathesis's own junk; phone-number paths also get matching and mismatched
  (config, number) pairs. Objects are seeded again after a successful DELETE, so it does not
  starve later operations of live ids.
* Body fields that the schema cannot describe precisely (our validators are regexes and custom
  checks that OpenAPI does not show) often get a known-valid value, so whole bodies pass
  validation and the handler logic (409s, media credential pairs, quota, ...) runs; string fields
  also get hostile strings (lone surrogates, NUL, huge, format strings) that JSON can carry, and
  integer query parameters get values past 32 and 64 bits.

``test_hostile_values_in_every_field`` then leaves nothing of that to chance: each hostile string in
each string field (and key) of a valid body of every operation, each huge integer in each integer
query parameter.

Checks on every response: no 5xx; status code, content type, headers and body conform to the
schema; schema-invalid requests are rejected; plus our own: no response (body or headers) ever
contains an API key, a password or a secret value that was sent in; a successful response never
contains another organization's ids; unauthenticated requests never reach a handler.

Deterministic: fixed seed, derandomized, no example database. ``VR3AI_FUZZ_EXAMPLES`` (default 40)
sets the number of fuzzed examples per operation, for a longer local run. About a minute on two
cores: ~1,350 generated requests over the 24 operations, ~320 in the sweep.

Not covered here (documented reasons in ``CONFIG``): schema-valid data being accepted, since the
schema cannot show our validators; the ``Allow`` header of 405s, a Starlette limitation.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
import wave
from collections import Counter, defaultdict
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import requests
import schemathesis
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.core.transport import Response

from tests.fixtures_platform import FakeTelephony, RunningApp, config_body, serve, workflow_definition
from vr3ai.app import create_app
from vr3ai.core.orgs import create_organization
from vr3ai.db.models import WorkflowRun
from vr3ai.settings import Settings

MAX_EXAMPLES = int(os.environ.get("VR3AI_FUZZ_EXAMPLES", "40"))
SEED = 20260501

T = TypeVar("T")


# --- the app on a real uvicorn, in a thread of its own --------------------------------------------


class LiveApp:
    """``serve()`` running in a private event loop in a thread: schemathesis calls the API with
    blocking ``requests``, which would freeze a server sharing the test's thread."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.app: RunningApp | None = None
        self._thread = threading.Thread(target=self._main, name="api-fuzz-server", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(f"sqlite+aiosqlite:///{self.data_dir / 'vr3ai.db'}", self.data_dir) as app:
            app.services.telephony = FakeTelephony()  # type: ignore[assignment]
            self.app = app
            self._ready.set()
            await self._stop.wait()

    def start(self) -> RunningApp:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        assert self.app is not None, "the API server did not start within 60 s"
        return self.app

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` in the server's loop (the database engine belongs to that loop)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        if self._error is not None:
            raise self._error


# --- the world the fuzzer plays in ----------------------------------------------------------------


@dataclass
class Tenant:
    org_id: str
    key: str
    workflows: list[str] = field(default_factory=list)
    configs: list[str] = field(default_factory=list)
    numbers: list[tuple[str, str]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    # Every id ever seeded, not only the live ones: another organization must not see those either.
    seen: set[str] = field(default_factory=set)


@dataclass
class World:
    live: LiveApp
    base_url: str
    me: Tenant
    other: Tenant
    never_returned: set[str] = field(default_factory=set)
    media_passwords: set[str] = field(default_factory=set)
    """Never returned either, except inside the websocket_client.conf text of ``/asterisk-snippets``
    (Asterisk needs them; that endpoint answers only the configuration's organization)."""
    stale: bool = True
    # Reused across cases: a fresh TCP connection per request would dominate the run time.
    session: requests.Session = field(default_factory=requests.Session)

    def tenant_of(self, authorization: str | None) -> Tenant | None:
        for t in (self.me, self.other):
            if authorization == f"Bearer {t.key}":
                return t
        return None


# Schemathesis builds its strategies when the tests are collected, long before the server exists;
# the hooks look the live ids up here when a case is drawn.
_WORLD: World | None = None


def _world() -> World:
    assert _WORLD is not None, "the fuzz hooks ran outside of a test"
    return _WORLD


# Values no response may contain: registered with the world as they are created.
_DICT_APP_PASSWORD = "fuzz-ari-pass-7Q2vX9"
_DICT_MEDIA_PASSWORD = "fuzz-media-pass-K4m1Zr"
_DICT_SECRET_VALUE = "sk-fuzz-secret-value-3N8pWq"


def _write_wav(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 800)


async def _seed_runs(app: RunningApp, tenant: Tenant, data_dir: Path) -> list[str]:
    """Runs cannot be created through the API: write a few in the shapes the telephony layer leaves."""
    now = datetime.now(UTC)
    rec = f"recordings/{uuid.uuid4()}.wav"
    _write_wav(data_dir / rec)
    rows = [
        WorkflowRun(
            organization_id=tenant.org_id,
            workflow_id=tenant.workflows[0],
            telephony_configuration_id=tenant.configs[0],
            direction="inbound",
            status="completed",
            context={"caller": "6001", "called": "8000"},
            variables={"name": "Ada"},
            transcript=[
                {"role": "assistant", "text": "Hello", "start_ms": 0, "end_ms": 900},
                {"role": "user", "text": "Hi", "start_ms": 1200, "end_ms": 1500, "confidence": 0.9},
            ],
            metrics=[{"ttfb_ms": 120}],
            events=[{"level": "info", "message": "answered", "at_ms": 0}],
            recording_path=rec,
            started_at=now - timedelta(minutes=2),
            answered_at=now - timedelta(minutes=2),
            ended_at=now - timedelta(minutes=1),
            end_reason="caller hung up",
            billed_seconds=60,
        ),
        WorkflowRun(
            organization_id=tenant.org_id,
            workflow_id=None,
            telephony_configuration_id=None,
            direction="outbound",
            status="running",
            context={},
            recording_path="recordings/missing.wav",
            started_at=now,
        ),
    ]
    async with app.services.db.session() as s, s.begin():
        s.add_all(rows)
    return [r.id for r in rows]


def _seed(world: World, tenant: Tenant) -> None:
    """A couple of live objects of every kind for ``tenant``, through the API itself."""
    with httpx.Client(base_url=world.base_url, headers={"Authorization": f"Bearer {tenant.key}"}) as http:

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            r = http.post(path, json=body)
            assert r.status_code in (200, 201), f"seeding {path}: {r.status_code} {r.text}"
            return dict(r.json())

        for name in ("Receptionist", "Survey"):
            tenant.workflows.append(
                post("/api/v1/workflows", {"name": name, "definition": workflow_definition()})["id"]
            )
        for media in (False, True):
            body = config_body(stasis_app_name=f"fz{uuid.uuid4().hex[:10]}")
            if media:
                body.update(media_username="asterisk", media_password=f"media-{uuid.uuid4().hex}")
            world.never_returned.add(body["app_password"])
            if media:
                world.media_passwords.add(body["media_password"])
            cid = post("/api/v1/telephony-configurations", body)["id"]
            tenant.configs.append(cid)
            for address in ("8000", "8001"):
                nid = post(
                    f"/api/v1/telephony-configurations/{cid}/phone-numbers",
                    {"address": address, "inbound_workflow_id": tenant.workflows[0]},
                )["id"]
                tenant.numbers.append((cid, nid))
        for name in ("OPENAI_KEY", "llm.key"):
            value = f"secret-{uuid.uuid4().hex}"
            world.never_returned.add(value)
            post("/api/v1/secrets", {"name": name, "value": value})
            tenant.secrets.append(name)
    assert world.live.app is not None
    tenant.runs.extend(world.live.run(_seed_runs(world.live.app, tenant, world.live.data_dir)))
    tenant.seen |= {tenant.org_id, *tenant.workflows, *tenant.configs, *(n for _, n in tenant.numbers), *tenant.runs}


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    server = LiveApp(tmp_path_factory.mktemp("api-fuzz"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _org_and_key(db: Any, name: str) -> tuple[str, str]:
    org, key = await create_organization(db, name, max_concurrent_calls=2, minutes_per_month=100)
    return org.id, key


@pytest.fixture(scope="module")
def world(live: LiveApp) -> Iterator[World]:
    global _WORLD
    assert live.app is not None
    db = live.app.services.db
    me = Tenant(*live.run(_org_and_key(db, "Fuzz Corp")))
    other = Tenant(*live.run(_org_and_key(db, "Other Corp")))
    w = World(live=live, base_url=live.app.base_url, me=me, other=other)
    w.never_returned.update({me.key, other.key, _DICT_APP_PASSWORD, _DICT_SECRET_VALUE})
    w.media_passwords.add(_DICT_MEDIA_PASSWORD)
    _WORLD = w
    try:
        yield w
    finally:
        _WORLD = None
        w.session.close()


@pytest.fixture
def seeded(world: World) -> World:
    """The world with live objects of every kind for both organizations. Seeding costs about a
    second on a busy box, so it is redone only after a DELETE may have used some up."""
    if world.stale:
        for t in (world.me, world.other):
            t.workflows, t.configs, t.numbers, t.runs, t.secrets = [], [], [], [], []
            _seed(world, t)
        world.stale = False
    return world


# --- steering generated cases ----------------------------------------------------------------------

# Strings JSON can carry that tend to break things below the validation layer.
NASTY_STRINGS = [
    "\ud800",
    "a\udfffb",
    "\x00",
    "x\x00y",
    "\u202eevil",
    "\ufeff",
    " ",
    "",
    "ä" * 5000,
    "{to}{0}{to!r}%s%n",
    "' OR 1=1 --",
    "../../etc/passwd",
    "null",
    "\r\nX-Injected: 1",
    "😀" * 3,
    "9" * 400,
]


def _fits_in_a_path(value: str) -> bool:
    # A URL cannot carry an unpaired surrogate; empty, "/" and dot segments would address another
    # route (tests of the HTTP client, not of us).
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return bool(value.strip(".")) and "/" not in value


NASTY_IDS = [s for s in NASTY_STRINGS if _fits_in_a_path(s)]

VALID_FIELDS: dict[str, list[Any]] = {
    "name": ["Office PBX", "  Front desk  ", "ü" * 200],
    "provider": ["ari"],
    "ari_endpoint_url": ["http://pbx.example.com:8088", "https://PBX.example.com:8089/ari", "http://10.0.0.5:8088/"],
    "stasis_app_name": ["vr3ai", "fuzz-app", "a.b_c"],
    "app_password": [_DICT_APP_PASSWORD],
    "websocket_client_name": ["vr3ai", "ws.1"],
    "from_extensions": [["PJSIP/6001"], [], ["6001", "SIP/trunk-1"]],
    "dial_template": ["PJSIP/{to}", "Local/{to}@from-internal"],
    "media_username": ["asterisk", None],
    "media_password": [_DICT_MEDIA_PASSWORD, None],
    "enabled": [True, False],
    "address": ["8000", "+15551234567", "*98#"],
    "to": ["6001", "+15551234567"],
    "value": [_DICT_SECRET_VALUE],
    "definition": [workflow_definition(), {"nodes": [], "edges": []}],
}
# Where one field name means different things.
VALID_BY_PATH: dict[str, dict[str, list[Any]]] = {
    "/api/v1/secrets": {"name": ["OPENAI_KEY", "fuzz.key-2"]},
}
STRING_FIELDS = {
    "name",
    "provider",
    "ari_endpoint_url",
    "stasis_app_name",
    "app_password",
    "websocket_client_name",
    "dial_template",
    "media_username",
    "media_password",
    "address",
    "to",
    "value",
}


BIG_INTS = [2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30]


def _int_query_params(case: Case) -> dict[str, int | None]:
    """The operation's integer query parameters and their documented maximum."""
    operation = SPEC["paths"][case.path][case.method.lower()]
    return {
        p["name"]: p["schema"].get("maximum")
        for p in operation.get("parameters", [])
        if p["in"] == "query" and p.get("schema", {}).get("type") == "integer"
    }


def _positive(case: Case, location: str) -> bool:
    # Rewriting a deliberately invalid component could make it valid, and then schemathesis would
    # rightly complain that "invalid" data was accepted.
    meta = case.meta
    if meta is None:
        return False
    info = meta.components.get(location)  # type: ignore[call-overload]  # ParameterLocation is a str enum
    return info is not None and info.mode == GenerationMode.POSITIVE


def _id_choice(draw: Any, own: list[str], foreign: list[str], generated: Any, nasty: list[str] = NASTY_IDS) -> Any:
    kind = draw(st.sampled_from(["own", "own", "own", "foreign", "generated", "nasty"]))
    if kind == "own" and own:
        return draw(st.sampled_from(own))
    if kind == "foreign" and foreign:
        return draw(st.sampled_from(foreign))
    if kind == "nasty":
        return draw(st.sampled_from(nasty))
    return generated


@st.composite
def _steer(draw: Any, case: Case) -> Case:
    w = _world()
    who = draw(st.sampled_from(["me"] * 8 + ["other", "junk", "none"]))
    if who == "none":
        case.headers.pop("Authorization", None)
    else:
        key = {"me": w.me.key, "other": w.other.key}.get(who, "vr3_" + "x" * 43)
        case.headers["Authorization"] = f"Bearer {key}"
    me, other = (w.other, w.me) if who == "other" else (w.me, w.other)

    params = dict(case.path_parameters or {})
    if params and _positive(case, "path"):
        if "number_id" in params:
            pairs = [
                *me.numbers,
                (me.configs[0], me.numbers[-1][1]),  # a number of the caller's other configuration
                *other.numbers[:1],
                (me.configs[0], other.numbers[0][1]),  # the caller's configuration, a foreign number
            ]
            kind = draw(st.sampled_from(["pair", "pair", "pair", "mixed"]))
            if kind == "pair":
                params["config_id"], params["number_id"] = draw(st.sampled_from(pairs))
            else:
                params["config_id"] = _id_choice(draw, me.configs, other.configs, params["config_id"])
                all_numbers = [n for _, n in me.numbers]
                params["number_id"] = _id_choice(draw, all_numbers, [n for _, n in other.numbers], params["number_id"])
        elif "config_id" in params:
            params["config_id"] = _id_choice(draw, me.configs, other.configs, params["config_id"])
        if "workflow_id" in params:
            params["workflow_id"] = _id_choice(draw, me.workflows, other.workflows, params["workflow_id"])
        if "run_id" in params:
            params["run_id"] = _id_choice(draw, me.runs, other.runs, params["run_id"])
        if "name" in params:
            params["name"] = _id_choice(draw, me.secrets, other.secrets, params["name"])
        case.path_parameters = params

    query = case.query
    if isinstance(query, dict) and _positive(case, "query"):
        if "workflow_id" in query:
            query["workflow_id"] = _id_choice(draw, me.workflows, other.workflows, query["workflow_id"])
        for name, maximum in _int_query_params(case).items():
            # Hypothesis rarely draws integers past 64 bits, where the database drivers give up.
            big = [n for n in BIG_INTS if maximum is None or n <= maximum]
            if big and draw(st.sampled_from([False, True, True])):
                query[name] = draw(st.sampled_from(big))

    body = case.body
    if isinstance(body, dict) and _positive(case, "body"):
        profile = draw(st.sampled_from(["valid", "valid", "mixed", "mixed", "as generated"]))
        for name in list(body):
            if name == "inbound_workflow_id":
                body[name] = _id_choice(draw, me.workflows, other.workflows, body[name], NASTY_STRINGS)
            elif name == "telephony_configuration_id":
                body[name] = _id_choice(draw, me.configs, other.configs, body[name], NASTY_STRINGS)
            elif name in VALID_FIELDS and profile != "as generated":
                pick = (
                    draw(st.sampled_from(["valid"] * 4 + ["keep", "nasty", "nasty"])) if profile == "mixed" else "valid"
                )
                if pick == "valid":
                    body[name] = draw(st.sampled_from(VALID_BY_PATH.get(case.path, {}).get(name, VALID_FIELDS[name])))
                elif pick == "nasty" and name in STRING_FIELDS:
                    body[name] = draw(st.sampled_from(NASTY_STRINGS))
        if profile == "valid" and {"media_username", "media_password"} & set(body):
            # Media credentials come in pairs; a lone half is a 422 that stops the handler early.
            user, password = draw(st.sampled_from([("asterisk", _DICT_MEDIA_PASSWORD), (None, None)]))
            body.update(media_username=user, media_password=password)
    return case


def flatmap_case(context: Any, case: Case) -> Any:
    """Schemathesis hook (matched by name): steer a drawn case, see the module docstring."""
    return _steer(case)


# --- our checks --------------------------------------------------------------------------------------


def no_secret_in_response(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """The API keys, passwords and secret values we created go in, never out: not in a body, not in a
    header. (The hook sends them in as the write-only fields of many generated bodies; generated
    values themselves cannot be told apart from text that is rightly sent back, like a name equal to
    an earlier password.)"""
    haystack = response.content + b"\n" + json.dumps(dict(response.headers)).encode()
    w = _world()
    snippets = response.request.path_url.split("?")[0].endswith("/asterisk-snippets")
    for s in w.never_returned | (set() if snippets else w.media_passwords):
        for form in {s.encode(), json.dumps(s)[1:-1].encode()}:
            assert form not in haystack, f"the response contains a secret ({s[:6]}...)"
    return True


def tenant_isolation(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Another organization's objects are invisible: a request naming one in its path fails, and no
    successful response mentions one."""
    w = _world()
    caller = w.tenant_of(response.request.headers.get("Authorization"))
    if caller is None:
        # Unauthenticated: no handler may run. Malformed JSON is refused while the body is read,
        # before authentication, which tells an anonymous client nothing.
        assert response.status_code in (400, 401, 422), f"unauthenticated request answered {response.status_code}"
        if response.status_code != 401:
            detail = json.loads(response.content or b"{}").get("detail")
            assert response.status_code == 400 or (
                isinstance(detail, list)
                and all(d.get("loc") == ["body"] or d.get("type") == "json_invalid" for d in detail)
            ), f"unauthenticated request got past authentication: {response.status_code} {response.text[:300]}"
        return True
    foreign = (w.other if caller is w.me else w.me).seen
    if 200 <= response.status_code < 300:
        path_ids = {str(v) for v in (case.path_parameters or {}).values()}
        assert not (path_ids & foreign), f"{response.status_code} for another organization's object"
        text = response.content.decode("utf-8", "replace")
        leaked = [i for i in foreign if i in text]
        assert not leaked, f"response mentions another organization's ids: {leaked}"
    return True


CHECKS = [no_secret_in_response, tenant_isolation]


# --- the test ------------------------------------------------------------------------------------------


def _openapi() -> dict[str, Any]:
    """The app's OpenAPI document, from an app that is built but never served or started (nothing
    touches the disk): the operations must be known when pytest collects, before any server runs.
    ``test_served_schema_is_the_fuzzed_one`` checks it is what the live server publishes."""
    settings = Settings(
        data_dir=Path("/nonexistent/vr3ai-fuzz-schema-only"),
        database_url="sqlite+aiosqlite:///:memory:",
        secret_key=Fernet.generate_key().decode(),
        start_telephony=False,
        voice=False,
    )
    return create_app(settings).openapi()


CONFIG = {
    "seed": SEED,
    "request-timeout": 20,
    "generation": {
        "max-examples": MAX_EXAMPLES,
        "deterministic": True,
        "database": "none",
        # The hook sets Authorization itself; generated security headers would only be noise.
        "with-security-parameters": False,
    },
    "phases": {"stateful": {"enabled": False}},
    "checks": {
        # The schema cannot express our field validators (regexes, "must contain {to}", ...), so
        # schema-valid data is routinely, and rightly, refused with 422.
        "positive_data_acceptance": {"enabled": False},
        # Starlette answers a 405 from the first route matching the path, so `Allow` lists only that
        # route's methods (OPTIONS /workflows: `Allow: POST`, though GET exists too). A framework
        # limitation, reported; nothing in our handlers.
        "allow_header_conformance": {"enabled": False},
        # Needs identities configured in schemathesis; `tenant_isolation` below does this job.
        "object_level_authorization": {"enabled": False},
    },
}
SPEC = _openapi()
schema = schemathesis.openapi.from_dict(SPEC, config=schemathesis.Config.from_dict(CONFIG))
schema.hook(flatmap_case)


@schema.parametrize()
# ``seeded`` is per operation on purpose: one set of live objects for all of an operation's cases.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_api_schema_fuzz(case: Case, seeded: World) -> None:
    world = seeded
    meta = case.meta
    if meta is not None and meta.phase.name == "fuzzing":
        # The hook chose who calls (or nobody) and left it on the case.
        authorization = case.headers.pop("Authorization", None)
    else:
        # Example and coverage cases do not pass through the hook: they call as the main tenant.
        authorization = f"Bearer {world.me.key}"
    # Passed as explicit headers, not on the case: schemathesis then knows the credentials are
    # real, and its auth check re-sends the request without them and with bad ones (must be 401).
    headers = {"Authorization": authorization} if authorization is not None else None
    response = case.call_and_validate(
        base_url=world.base_url, session=world.session, headers=headers, additional_checks=CHECKS
    )
    STATUSES[f"{case.operation.method.upper()} {case.operation.path}"][response.status_code] += 1
    if case.method == "DELETE" and response.status_code < 300:
        world.stale = True


# Values every string field, and every integer query parameter, gets in turn in the sweep below.
HOSTILE_STRINGS = ["\ud800", "x\x00y", "ä" * 5000, "{to}{0}{to!r}%s%n", "\u202e\r\nX: 1"]
HOSTILE_INTS = [2**31, 2**63 - 1, 2**63, 2**64, 10**30]


def _valid_bodies(w: World) -> dict[tuple[str, str], tuple[dict[str, str], dict[str, Any]]]:
    """(method, path) -> (path parameters, a body the API accepts), for every operation with a body."""
    cfg, num = w.me.numbers[0]
    wf = w.me.workflows[0]
    config = {
        "name": "Sweep PBX",
        "provider": "ari",
        "ari_endpoint_url": "http://sweep.example.com:8088",
        "stasis_app_name": "sweep",
        "app_password": _DICT_APP_PASSWORD,
        "websocket_client_name": "sweep",
        "from_extensions": ["PJSIP/6001"],
        "dial_template": "PJSIP/{to}",
        "media_username": "asterisk",
        "media_password": _DICT_MEDIA_PASSWORD,
    }
    workflow = {"name": "Sweep", "definition": workflow_definition()}
    number = {"address": "8100", "inbound_workflow_id": wf}
    return {
        ("POST", "/api/v1/workflows"): ({}, workflow),
        ("PATCH", "/api/v1/workflows/{workflow_id}"): ({"workflow_id": wf}, workflow),
        ("POST", "/api/v1/workflows/{workflow_id}/calls"): (
            {"workflow_id": wf},
            {"telephony_configuration_id": cfg, "to": "6001"},
        ),
        ("POST", "/api/v1/telephony-configurations"): ({}, config),
        ("PATCH", "/api/v1/telephony-configurations/{config_id}"): ({"config_id": cfg}, config),
        ("POST", "/api/v1/telephony-configurations/{config_id}/phone-numbers"): ({"config_id": cfg}, number),
        ("PATCH", "/api/v1/telephony-configurations/{config_id}/phone-numbers/{number_id}"): (
            {"config_id": cfg, "number_id": num},
            number,
        ),
        ("POST", "/api/v1/secrets"): ({}, {"name": "SWEEP", "value": _DICT_SECRET_VALUE}),
    }


def _with_hostile_strings(body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``body`` with one string in it (value or key, nested ones too) replaced by one hostile value,
    every way; with where the replacement is."""

    def variants(value: Any, where: str) -> Iterator[tuple[str, Any]]:
        if isinstance(value, str):
            for h in HOSTILE_STRINGS:
                yield f"{where}={h[:8]!r}", h
            # Also after a valid value, where a whole-field replacement would fail validation first.
            for h in HOSTILE_STRINGS[:2]:
                yield f"{where}+={h!r}", value + h
        elif isinstance(value, list):
            for i, item in enumerate(value):
                for at, v in variants(item, f"{where}[{i}]"):
                    yield at, [*value[:i], v, *value[i + 1 :]]
        elif isinstance(value, dict):
            for k, item in value.items():
                for at, v in variants(item, f"{where}.{k}"):
                    yield at, {**value, k: v}
                for bad_key in HOSTILE_STRINGS[:2]:
                    yield (
                        f"{where}.<key {k} = {bad_key!r}>",
                        {**{x: y for x, y in value.items() if x != k}, bad_key: item},
                    )

    # Nested values of a workflow definition: a sample is enough, the walk is the same everywhere.
    for i, (where, v) in enumerate(variants(body, "body")):
        if "definition" not in where or i % 5 == 0:
            yield where, v


def test_hostile_values_in_every_field(seeded: World) -> None:
    """The fuzz draws hostile values at random; this sweep puts each one in each string field of a
    valid body, and each huge integer in each integer query parameter, so none is left to chance."""
    w = seeded
    cases: list[tuple[str, Case]] = []
    for (method, path), (params, body) in _valid_bodies(w).items():
        operation = schema[path][method]
        for where, variant in _with_hostile_strings(body):
            # A unique Stasis app and extension each time: a 409 for the previous case would answer
            # before the hostile value reaches the database.
            for key in ("stasis_app_name", "address"):
                if key in body and variant.get(key) == body[key]:
                    variant = {**variant, key: f"{body[key]}{len(cases)}"}
            cases.append((where, operation.Case(path_parameters=params, body=variant, media_type="application/json")))
    for path, ops in SPEC["paths"].items():
        for method, definition in ops.items():
            for p in definition.get("parameters", []):
                if p["in"] == "query" and p.get("schema", {}).get("type") == "integer":
                    operation = schema[path][method.upper()]
                    cases += [(f"{p['name']}={n}", operation.Case(query={p["name"]: n})) for n in HOSTILE_INTS]
    headers = {"Authorization": f"Bearer {w.me.key}"}
    failures: list[str] = []
    for where, case in cases:
        response = case.call(base_url=w.base_url, session=w.session, headers=headers)
        try:
            case.validate_response(response, headers=headers, additional_checks=CHECKS)
        except (AssertionError, FailureGroup) as e:
            # Collect them all: one failing field should not hide the next.
            first = str(e).strip().splitlines()[-1][:200]
            failures.append(f"{case.method} {case.path} {where}: {response.status_code} {first}")
    print(f"{len(cases)} requests")
    assert not failures, "\n".join(failures)


# Per operation, how often each status came back: the proof that the cases got past the front door.
STATUSES: defaultdict[str, Counter[int]] = defaultdict(Counter)


def test_the_fuzz_reached_the_handlers() -> None:
    """Runs after the fuzz (file order): every operation answered many cases with something other
    than 401, and at least one with success, or the steering has rotted and "no 500s" means little."""
    operations = {f"{m.upper()} {p}" for p, ops in SPEC["paths"].items() for m in ops}
    if set(STATUSES) != operations:
        pytest.skip("only part of the fuzz ran")
    summary = {op: dict(sorted(c.items())) for op, c in sorted(STATUSES.items())}
    print(json.dumps(summary, indent=1))
    for op, counts in summary.items():
        past_auth = sum(n for status, n in counts.items() if status != 401)
        assert past_auth >= 10, (op, counts)
        assert any(200 <= status < 300 for status in counts), (op, counts)


def test_served_schema_is_the_fuzzed_one(world: World) -> None:
    served = world.session.get(f"{world.base_url}/openapi.json", timeout=20)
    assert served.status_code == 200
    assert served.json() == json.loads(json.dumps(schema.raw_schema))
