"""Helpers shared by the dashboard's page modules: org-scoped lookups, live status, redirects."""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vr3ai.db.models import Workflow
from vr3ai.logs import redact
from vr3ai.services import Services
from vr3ai.web.auth import set_flash
from vr3ai.web.errors import PageNotFound

M = TypeVar("M")
TEXT_MAX = 500
"""Longest status text a page shows."""


async def owned(s: AsyncSession, model: type[M], object_id: str, org_id: str, what: str) -> M:
    """The object if it belongs to ``org_id``; otherwise the same 404 page as for an id that never
    existed, so ids of other organizations cannot be probed."""
    row = await s.scalar(
        select(model).where(model.id == object_id, model.organization_id == org_id)  # type: ignore[attr-defined]
    )
    if row is None:
        raise PageNotFound(what)
    return row


async def org_workflows(s: AsyncSession, org_id: str) -> list[Workflow]:
    return list(
        (await s.scalars(select(Workflow).where(Workflow.organization_id == org_id).order_by(Workflow.name))).all()
    )


def see_other(request: Request, url: str, flash: str = "") -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    if flash:
        set_flash(request, response, flash)
    return response


STATE_LABELS = {
    "connected": ("Connected", "ok"),
    "connecting": ("Connecting…", "warn"),
    "failed": ("Retrying", "bad"),
    "replaced": ("Replaced", "bad"),
    "stopped": ("Not running", "muted"),
}


def describe_ari(ari: dict[str, Any] | None) -> dict[str, Any]:
    """The ARI listener state as the pages show it. Only whitelisted fields leave this function."""
    ari = ari or {}
    state = str(ari.get("state") or "stopped")
    label, tone = STATE_LABELS.get(state, (state.capitalize(), "muted"))
    error = ari.get("last_error")
    if state == "connecting" and error:
        label = "Retrying"
    return {
        "state": state,
        "label": label,
        "tone": tone,
        "since": ari.get("since"),
        # Our own texts (the listener never quotes a server's answer; AriConnection.status() already
        # redacted its own passwords); the generic patterns and the cap are the last line.
        "last_error": redact(str(error))[:TEXT_MAX] if error else "",
        "asterisk_version": ari.get("asterisk_version"),
    }


async def live_status(svc: Services, config_id: str) -> dict[str, Any]:
    """``{"ari": describe_ari(...), "active_calls", "recent_events"}`` for one configuration."""
    if svc.telephony is None:
        ari = describe_ari({"state": "stopped", "last_error": "telephony is not running in this VR3 AI process"})
        return {"ari": ari, "active_calls": 0, "recent_events": []}
    status: Any = svc.telephony.status(config_id)
    if inspect.isawaitable(status):
        status = await status
    status = status if isinstance(status, dict) else {}
    events = [
        {
            "at": str(e.get("at") or ""),
            "level": str(e.get("level") or "info"),
            "message": redact(str(e.get("message") or ""))[:TEXT_MAX],
        }
        for e in (status.get("recent_events") or [])
        if isinstance(e, dict)
    ]
    return {
        "ari": describe_ari(status.get("ari")),
        "active_calls": int(status.get("active_calls") or 0),
        "recent_events": events[-10:][::-1],
    }
