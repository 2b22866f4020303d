"""Dashboard sign-in: signed session cookies, CSRF tokens and a login rate limit.

Sessions are stateless signed cookies (itsdangerous, HMAC-SHA256) holding ``sid`` (random),
``csrf`` (random), and once signed in ``uid`` plus ``pwv``, a fingerprint of the user's password
hash. Why this shape:

* **Survives restarts and needs no table**: the dashboard adds no migration. The cookie is
  HttpOnly, SameSite=Lax, ``Secure`` when ``VR3AI_COOKIE_SECURE`` is on, and expires after
  :data:`SESSION_MAX_AGE_S` (checked from the signed timestamp, not from the browser).
* **No session fixation**: signing in always issues a brand-new ``sid`` and ``csrf``; the
  anonymous cookie that carried the login form's token is discarded.
* **Log out means out**: the ``sid`` goes into the ``revoked_sessions`` table until the cookie
  would have expired anyway, so a restart does not revive it (one primary-key lookup per signed-in
  request); changing a user's password (new hash → new ``pwv``) ends all of that user's sessions
  everywhere.
* **CSRF**: a token bound to the session (not a second cookie), sent as a hidden ``csrf_token``
  field in every POST form or as an ``X-CSRF-Token`` header by fetch; compared in constant time.
  The login form is protected too, with the anonymous session's token (login CSRF).
* The signing key is derived (HMAC with a fixed label) from the same secret that encrypts
  secrets at rest (``VR3AI_SECRET_KEY`` or ``<data dir>/secret.key``), so it is never the
  encryption key itself and needs no extra configuration.

Rate limit: :data:`MAX_FAILURES` failed sign-ins per account (e-mail) from any address within
:data:`WINDOW_S` seconds, and :data:`MAX_FAILURES_PER_IP` per address across accounts (password
spraying), answer 429 until the window has passed. An attempt is counted *before* its password is
checked (and taken back once it proves right), so parallel requests cannot all slip through
while the first ones are still hashing. The price of the per-account limit: whoever knows an
e-mail can keep that user from signing in to the dashboard by failing 5 times a minute (API keys
are not affected); without it, guesses from many addresses would each get their own budget. In
memory, per process: enough for the single process VR3 AI runs as. The IP is the socket peer;
behind a reverse proxy run uvicorn with ``--proxy-headers`` so that it is the client's.

Password hashing (scrypt, 128 MiB and about half a second of CPU at today's cost) runs on its own
two threads at a lower CPU priority (:class:`PasswordHasher`): at most
:data:`MAX_CONCURRENT_HASHES` at once, a request waits at most :data:`HASH_WAIT_S` for a turn and
is answered 429 otherwise (its attempt is not counted: nothing was checked). The event loop's
default executor and the live calls' audio do not wait behind sign-ins.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete, func, select

from vr3ai.core.orgs import upgrade_password_hash
from vr3ai.core.secrets import dummy_password_hash, verify_password
from vr3ai.db.models import Organization, RevokedSession, User, utcnow
from vr3ai.web.errors import CsrfFailed, LoginRequired

if TYPE_CHECKING:
    from vr3ai.core.quota import QuotaStatus
    from vr3ai.services import Services

log = logging.getLogger("vr3ai.web.auth")

SESSION_COOKIE = "vr3ai_session"
FLASH_COOKIE = "vr3ai_flash"
SESSION_MAX_AGE_S = 12 * 3600
MAX_FAILURES = 5
MAX_FAILURES_PER_IP = 30
WINDOW_S = 60.0
MAX_CONCURRENT_HASHES = 2
HASH_WAIT_S = 2.0
HASH_THREAD_NICE = 19
"""Niceness of the hashing threads: under CPU contention the event loop (live calls' audio) and a
local Asterisk come first (a nice-19 thread gets about 1/70 of a nice-0 one's share); on a
machine with CPU to spare a sign-in takes as long as ever, on a saturated one it waits."""
_MAX_TRACKED_KEYS = 10_000
# verify_password of an unknown e-mail runs against this, so both answers take the same time.
_DUMMY_HASH = dummy_password_hash()


@dataclass
class SessionData:
    sid: str
    csrf: str
    uid: str | None = None
    pwv: str | None = None

    @classmethod
    def anonymous(cls) -> SessionData:
        return cls(sid=secrets.token_urlsafe(18), csrf=secrets.token_urlsafe(24))

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"sid": self.sid, "csrf": self.csrf}
        if self.uid:
            data.update(uid=self.uid, pwv=self.pwv)
        return data


@dataclass
class Viewer:
    """The signed-in user of this request, with the organization everything is scoped to."""

    user_id: str
    email: str
    org: Organization
    session: SessionData
    quota: QuotaStatus | None = None


@dataclass(frozen=True)
class LoginAttempt:
    """An attempt counted by :meth:`LoginRateLimiter.begin` (a failure until shown otherwise)."""

    ip: str
    email: str
    at: float


class LoginRateLimiter:
    """Failed sign-ins per account (any address) and per address, in a sliding window."""

    def __init__(self, max_failures: int = MAX_FAILURES, per_ip: int = MAX_FAILURES_PER_IP, window_s: float = WINDOW_S):
        self.max_failures = max_failures
        self.per_ip = per_ip
        self.window_s = window_s
        self._by_account: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._by_ip: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def _prune(self, q: collections.deque[float], now: float) -> None:
        while q and now - q[0] >= self.window_s:
            q.popleft()

    def retry_after(self, ip: str, email: str) -> float:
        """Seconds until another attempt is allowed; 0 when allowed now."""
        now = time.monotonic()
        waits = [0.0]
        for q, limit in ((self._by_account.get(email), self.max_failures), (self._by_ip.get(ip), self.per_ip)):
            if q is None:
                continue
            self._prune(q, now)
            if len(q) >= limit:
                waits.append(q[-limit] + self.window_s - now)
        return max(waits)

    def begin(self, ip: str, email: str) -> LoginAttempt | float:
        """Count an attempt now, before its password is checked, or say how long to wait.

        No await between the check and the count: on the event loop this is atomic, so N parallel
        requests get at most the remaining budget between them."""
        wait = self.retry_after(ip, email)
        if wait > 0:
            return wait
        attempt = LoginAttempt(ip, email, time.monotonic())
        for store, key in ((self._by_account, email), (self._by_ip, ip)):
            q = store.pop(key, None) or collections.deque()
            q.append(attempt.at)
            store[key] = q
            while len(store) > _MAX_TRACKED_KEYS:
                store.popitem(last=False)
        return attempt

    def _forget(self, attempt: LoginAttempt) -> None:
        for store, key in ((self._by_account, attempt.email), (self._by_ip, attempt.ip)):
            q = store.get(key)
            if q is not None:
                try:
                    q.remove(attempt.at)
                except ValueError:
                    pass  # pruned meanwhile

    def succeeded(self, attempt: LoginAttempt) -> None:
        """The password was right: this attempt is no failure. Earlier failures stay counted, so a
        guesser's budget is not renewed by the real user signing in."""
        self._forget(attempt)

    def not_checked(self, attempt: LoginAttempt) -> None:
        """The password was never checked (no hashing slot in time): the attempt does not count."""
        self._forget(attempt)


def _lower_priority() -> None:
    # Linux: PRIO_PROCESS with a thread id sets that thread's niceness. Raising it needs no privilege.
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_THREAD_NICE)
    except (AttributeError, OSError):
        pass


class PasswordHasher:
    """The process's password hashing: its own threads at lower priority, a few hashes at a time."""

    _executor: ThreadPoolExecutor | None = None
    _lock = threading.Lock()

    def __init__(self, max_concurrent: int = MAX_CONCURRENT_HASHES, wait_s: float = HASH_WAIT_S) -> None:
        self.max_concurrent = max_concurrent
        self.wait_s = wait_s
        self._slots = asyncio.Semaphore(max_concurrent)

    @classmethod
    def executor(cls) -> ThreadPoolExecutor:
        # One per process (CPU is per process), made on first use; its idle threads cost nothing.
        with cls._lock:
            if cls._executor is None:
                cls._executor = ThreadPoolExecutor(
                    MAX_CONCURRENT_HASHES, thread_name_prefix="vr3ai-password", initializer=_lower_priority
                )
            return cls._executor

    async def verify(self, password: str, stored: str) -> bool | None:
        """``verify_password`` off the event loop; None if no slot came free within ``wait_s``."""
        try:
            async with asyncio.timeout(self.wait_s):
                await self._slots.acquire()
        except TimeoutError:
            return None
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor(), verify_password, password, stored)
        finally:
            self._slots.release()


class WebState:
    """Per-application dashboard state (one per app, so test apps in one process stay apart)."""

    def __init__(self, services: Services) -> None:
        self.serializer = URLSafeTimedSerializer(_session_key(services), salt="vr3ai.web.session")
        self.flash_serializer = URLSafeTimedSerializer(_session_key(services), salt="vr3ai.web.flash")
        self.limiter = LoginRateLimiter()
        self.hasher = PasswordHasher()
        self.db = services.db

    async def revoke(self, sid: str) -> None:
        now = utcnow()
        async with self.db.session() as s, s.begin():
            await s.execute(delete(RevokedSession).where(RevokedSession.expires_at < now))
            if await s.get(RevokedSession, sid) is None:
                s.add(RevokedSession(sid=sid, expires_at=now + timedelta(seconds=SESSION_MAX_AGE_S)))


def _session_key(services: Services) -> bytes:
    settings = services.settings
    material = settings.storage.secret_key
    if not material:
        path = settings.storage.data_dir / "secret.key"
        material = path.read_text().strip() if path.exists() else ""
    if not material:
        # No persistent secret at all (a test double of Services): sessions die with the process.
        log.warning("no secret key found; dashboard sessions will not survive a restart")
        material = secrets.token_hex(32)
    return hmac.new(material.encode(), b"vr3ai dashboard session cookies v1", hashlib.sha256).digest()


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def web_state(request: Request) -> WebState:
    state = getattr(request.app.state, "vr3ai_web", None)
    if state is None:
        state = WebState(get_services(request))
        request.app.state.vr3ai_web = state
    return state


def password_fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def read_session(request: Request) -> SessionData | None:
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    state = web_state(request)
    try:
        data = state.serializer.loads(raw, max_age=SESSION_MAX_AGE_S)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("sid"), str) or not isinstance(data.get("csrf"), str):
        return None
    return SessionData(sid=data["sid"], csrf=data["csrf"], uid=data.get("uid"), pwv=data.get("pwv"))


def write_session(request: Request, response: Response, session: SessionData) -> None:
    value = web_state(request).serializer.dumps(session.as_dict())
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=SESSION_MAX_AGE_S,
        path="/",
        httponly=True,
        samesite="lax",
        secure=get_services(request).settings.session_cookie_secure(),
    )


def clear_session(request: Request, response: Response) -> None:
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="lax",
        secure=get_services(request).settings.session_cookie_secure(),
    )


def set_flash(request: Request, response: Response, message: str) -> None:
    value = web_state(request).flash_serializer.dumps(message)
    response.set_cookie(
        FLASH_COOKIE,
        value,
        max_age=60,
        path="/",
        httponly=True,
        samesite="lax",
        secure=get_services(request).settings.session_cookie_secure(),
    )


def pop_flash(request: Request) -> str:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return ""
    try:
        message = web_state(request).flash_serializer.loads(raw, max_age=60)
    except BadSignature:
        return ""
    return message if isinstance(message, str) else ""


async def viewer_for(request: Request) -> Viewer | None:
    session = read_session(request)
    if session is None or not session.uid:
        return None
    svc = get_services(request)
    async with svc.db.session() as s:
        user = await s.get(User, session.uid)
        if user is None or password_fingerprint(user.password_hash) != session.pwv:
            return None
        if await s.get(RevokedSession, session.sid) is not None:
            return None
        org = await s.get(Organization, user.organization_id)
        if org is None:
            return None
        quota = await svc.quota.status(s, org)
    return Viewer(user_id=user.id, email=user.email, org=org, session=session, quota=quota)


async def require_viewer(request: Request) -> Viewer:
    """Dependency of every dashboard page: the viewer, or a 303 to /login."""
    viewer = await viewer_for(request)
    if viewer is None:
        raise LoginRequired()
    return viewer


async def check_csrf(request: Request, session: SessionData | None) -> None:
    if session is None:
        raise CsrfFailed()
    token = request.headers.get("x-csrf-token")
    if not token:
        form = await request.form()
        value = form.get("csrf_token")
        token = value if isinstance(value, str) else None
    if not token or not hmac.compare_digest(token.encode(), session.csrf.encode()):
        raise CsrfFailed()


async def require_viewer_post(request: Request) -> Viewer:
    """Dependency of every state-changing route: signed in *and* a valid CSRF token."""
    viewer = await require_viewer(request)
    await check_csrf(request, viewer.session)
    return viewer


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class HashingBusy(Exception):
    """Every password hashing slot stayed taken for :data:`HASH_WAIT_S`: try again shortly."""


async def authenticate(
    services: Services, email: str, password: str, hasher: PasswordHasher | None = None
) -> User | None:
    """The user whose e-mail and password these are, or None. Raises :class:`HashingBusy`."""
    email = email.strip().lower()
    async with services.db.session() as s:
        user = await s.scalar(select(User).where(func.lower(User.email) == email))
    stored = user.password_hash if user is not None else _DUMMY_HASH
    # scrypt costs 128 MiB and about half a second of CPU: never on the event loop, never many at once.
    ok = await (hasher or PasswordHasher()).verify(password, stored)
    if ok is None:
        raise HashingBusy()
    if not ok or user is None:
        return None
    # A hash made at an older scrypt cost is replaced now that we know the password.
    await upgrade_password_hash(services.db, user, password, PasswordHasher.executor())
    return user


def safe_next(value: str | None) -> str:
    """Only same-site paths: ``//evil.example`` and ``https://...`` would be open redirects."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/telephony-configurations"
    return value
