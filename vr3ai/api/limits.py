"""The per-tenant limits (``vr3ai.core.limits``) as HTTP errors: 403 for a count limit, 413 for a
definition larger than the organization may store. The message names the limit's column, so the
tenant knows what to ask the operator for; nothing is written when a limit refuses a request."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from sqlalchemy.ext.asyncio import AsyncSession

from vr3ai.api.errors import error_response
from vr3ai.core.limits import LimitExceeded, check_count, check_definition_size
from vr3ai.db.models import Organization

LIMIT_RESPONSE = {403: error_response("A limit of the organization is reached (the message names it).")}
SIZE_RESPONSE = {413: error_response("The workflow definition is larger than the organization's limit.")}


async def enforce_count(s: AsyncSession, organization_id: str, kind: str, adding: int = 1) -> None:
    """Inside the inserting transaction, before the insert (see ``core.limits.check_count``)."""
    try:
        await check_count(s, organization_id, kind, adding)
    except LimitExceeded as e:
        raise HTTPException(403, e.message) from None


def enforce_definition_size(org: Organization, definition: Any) -> None:
    try:
        check_definition_size(org, definition)
    except LimitExceeded as e:
        raise HTTPException(413, e.message) from None
