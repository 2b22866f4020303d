"""``/`` , ``/login``, ``/logout``, ``/account`` and the two static files."""

from __future__ import annotations

import logging
import math
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from vr3ai.services import Services
from vr3ai.web.auth import (
    HashingBusy,
    LoginAttempt,
    SessionData,
    Viewer,
    authenticate,
    check_csrf,
    clear_session,
    client_ip,
    get_services,
    password_fingerprint,
    read_session,
    require_viewer,
    require_viewer_post,
    safe_next,
    viewer_for,
    web_state,
    write_session,
)
from vr3ai.web.errors import CsrfFailed, PageNotFound
from vr3ai.web.render import STATIC_DIR, WebRoute, render

log = logging.getLogger("vr3ai.web")
router = APIRouter(route_class=WebRoute, include_in_schema=False)
ViewerDep = Annotated[Viewer, Depends(require_viewer)]
ServicesDep = Annotated[Services, Depends(get_services)]

STATIC_FILES = {"app.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}


@router.get("/")
async def root(request: Request) -> Response:
    viewer = await viewer_for(request)
    return RedirectResponse("/telephony-configurations" if viewer else "/login", status_code=303)


def _login_page(
    request: Request, session: SessionData, *, email: str = "", error: str = "", next_url: str = "", status: int = 200
) -> Response:
    response = render(
        request,
        "login.html",
        {"csrf_token": session.csrf, "email": email, "error": error, "next": next_url},
        status_code=status,
    )
    write_session(request, response, session)
    return response


@router.get("/login")
async def login_page(request: Request, next: str = "") -> Response:
    if await viewer_for(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    # The login form's CSRF token lives in an anonymous session; keep one the browser already has
    # so that two open tabs do not invalidate each other's form.
    session = read_session(request)
    if session is None or session.uid:
        session = SessionData.anonymous()
    return _login_page(request, session, next_url=next)


@router.post("/login")
async def login(request: Request, svc: ServicesDep) -> Response:
    form = await request.form()
    email = str(form.get("email") or "").strip()
    password = str(form.get("password") or "")
    next_url = str(form.get("next") or "")
    session = read_session(request)
    try:
        await check_csrf(request, session)
    except CsrfFailed:
        return _login_page(
            request,
            SessionData.anonymous(),
            email=email,
            error="Your sign-in form expired. Please sign in again.",
            next_url=next_url,
            status=403,
        )
    assert session is not None
    state = web_state(request)
    ip = client_ip(request)
    key_email = email.lower()
    # Counted before the password is checked: parallel guesses share one budget.
    attempt = state.limiter.begin(ip, key_email)
    if not isinstance(attempt, LoginAttempt):
        response = _login_page(
            request,
            session,
            email=email,
            error=f"Too many failed sign-in attempts. Wait {math.ceil(attempt)} seconds, then try again.",
            next_url=next_url,
            status=429,
        )
        response.headers["Retry-After"] = str(math.ceil(attempt))
        return response
    try:
        user = await authenticate(svc, email, password, state.hasher) if email and password else None
    except HashingBusy:
        state.limiter.not_checked(attempt)
        response = _login_page(
            request,
            session,
            email=email,
            error="Too many sign-ins at once. Please try again in a moment.",
            next_url=next_url,
            status=429,
        )
        response.headers["Retry-After"] = "1"
        return response
    if user is None:
        log.warning("dashboard sign-in failed", extra={"client_ip": ip})
        return _login_page(
            request, session, email=email, error="Wrong email or password.", next_url=next_url, status=401
        )
    state.limiter.succeeded(attempt)
    # A brand-new session id and CSRF token: nothing from the anonymous session survives sign-in.
    fresh = SessionData.anonymous()
    fresh.uid = user.id
    fresh.pwv = password_fingerprint(user.password_hash)
    response = RedirectResponse(safe_next(next_url), status_code=303)
    write_session(request, response, fresh)
    log.info("dashboard sign-in", extra={"user_id": user.id, "organization_id": user.organization_id})
    return response


@router.post("/logout")
async def logout(request: Request, viewer: Annotated[Viewer, Depends(require_viewer_post)]) -> Response:
    await web_state(request).revoke(viewer.session.sid)
    response = RedirectResponse("/login", status_code=303)
    clear_session(request, response)
    return response


@router.get("/account")
async def account(request: Request, viewer: ViewerDep) -> Response:
    return render(request, "account.html", {"quota": viewer.quota}, viewer=viewer)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise PageNotFound("file")
    # Versioned URLs (?v=<mtime>) make long caching safe.
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})
