"""The web dashboard: server-rendered pages that walk an operator through the Asterisk ARI guide.

Plain Jinja2 templates, one CSS file and one small vanilla-JS file (copy buttons, live status,
confirmations) — no build step. Every page is scoped to the signed-in user's organization, and
every change goes through the REST API's own functions (``vr3ai.web.actions``), so the two can
never disagree on a rule.

Wire it into the app with one line::

    from vr3ai.web import web_router
    app.include_router(web_router())

Static files are served by a route of the router (``/static/app.css``, ``/static/app.js``), so no
mount is needed.
"""

from __future__ import annotations

from fastapi import APIRouter


def web_router() -> APIRouter:
    from vr3ai.web import home, runs, telephony, workflows

    router = APIRouter(include_in_schema=False)
    for module in (home, telephony, workflows, runs):
        router.include_router(module.router)
    return router


__all__ = ["web_router"]
