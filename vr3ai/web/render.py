"""Templates, page-level errors and the route class every dashboard route uses.

The app's global error handlers answer JSON (they serve the REST API). Dashboard pages must answer
HTML, so instead of app-wide handlers the dashboard uses its own :class:`WebRoute`: it turns the
three page errors (:class:`LoginRequired`, :class:`PageNotFound`, :class:`CsrfFailed`) into a
303 to ``/login``, an HTML 404 and an HTML 403, and adds the security headers to every response.
Keeping this inside the router means the lead wires the dashboard with one ``include_router``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from vr3ai.logs import redact
from vr3ai.web.auth import FLASH_COOKIE, Viewer, pop_flash, viewer_for
from vr3ai.web.errors import CsrfFailed, LoginRequired, PageNotFound

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))

# Everything the pages load comes from this origin; no inline scripts or styles, so a string that
# slipped past escaping still could not run.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def _asset_version() -> str:
    # Cache-busting for the two static files: their modification time.
    stamps = [int(p.stat().st_mtime) for p in STATIC_DIR.glob("*") if p.is_file()]
    return str(max(stamps, default=0))


ASSET_VERSION = _asset_version()


def as_utc(value: datetime | None) -> datetime | None:
    # SQLite hands timestamps back naive; they were written as UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def fmt_dt(value: datetime | str | None) -> Markup:
    """A ``<time>`` element: UTC text for no-JS readers, converted to local time by app.js."""
    if value is None or value == "":
        return Markup("—")
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return Markup.escape(value)
    dt = as_utc(value)
    assert dt is not None
    iso = dt.isoformat()
    text = dt.strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup('<time datetime="{}" data-local>{}</time>').format(iso, text)


def fmt_ms(value: Any) -> str:
    if value is None or value == "":
        return "—"
    try:
        ms = float(value)
    except (TypeError, ValueError):
        return str(value)
    if ms >= 10_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms:.0f} ms"


def fmt_clock(ms: Any) -> str:
    """Offset into a call, ``m:ss.s``."""
    try:
        total = float(ms) / 1000
    except (TypeError, ValueError):
        return ""
    minutes, seconds = divmod(max(total, 0.0), 60)
    return f"{int(minutes)}:{seconds:04.1f}"


def fmt_duration(seconds: Any) -> str:
    try:
        s = int(seconds)
    except (TypeError, ValueError):
        return "—"
    if s < 60:
        return f"{s} s"
    return f"{s // 60} min {s % 60:02d} s"


def fmt_minutes(value: Any) -> str:
    try:
        return f"{round(float(value), 1):g}"
    except (TypeError, ValueError):
        return str(value)


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


templates.env.filters.update(
    redact=redact,
    dt=fmt_dt,
    ms=fmt_ms,
    clock=fmt_clock,
    duration=fmt_duration,
    minutes=fmt_minutes,
    tojson_pretty=to_json,
)
templates.env.globals.update(asset_version=ASSET_VERSION)


def render(
    request: Request,
    name: str,
    context: dict[str, Any] | None = None,
    *,
    viewer: Viewer | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    ctx: dict[str, Any] = {"viewer": viewer, "csrf_token": viewer.session.csrf if viewer else ""}
    ctx["flash"] = pop_flash(request)
    ctx["path"] = request.url.path
    ctx.update(context or {})
    response = templates.TemplateResponse(request, name, ctx, status_code=status_code)
    if ctx["flash"]:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    # Only GET pages are worth coming back to; after a POST the form data is gone anyway.
    suffix = f"?next={quote(target, safe='/')}" if request.method == "GET" and target not in ("/", "/login") else ""
    return RedirectResponse("/login" + suffix, status_code=303)


async def _viewer_or_none(request: Request) -> Viewer | None:
    return await viewer_for(request)


class WebRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def wrapped(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired:
                response = login_redirect(request)
            except PageNotFound as e:
                response = render(
                    request,
                    "error.html",
                    {"title": "Not found", "message": f"This {e.what} does not exist."},
                    viewer=await _viewer_or_none(request),
                    status_code=404,
                )
            except CsrfFailed:
                response = render(
                    request,
                    "error.html",
                    {
                        "title": "Form expired",
                        "message": "This form has expired or did not come from this dashboard. Go back, reload "
                        "the page and try again.",
                    },
                    status_code=403,
                )
            for key, value in SECURITY_HEADERS.items():
                response.headers.setdefault(key, value)
            if response.headers.get("content-type", "").startswith("text/html"):
                # Pages show live state and organization data: never cache them.
                response.headers.setdefault("Cache-Control", "no-store")
            return response

        return wrapped
