"""Shared route plumbing: the services, the calling organization, and org-scoped lookups."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vr3ai.core.orgs import organization_for_key
from vr3ai.db.models import Organization
from vr3ai.services import Services

# auto_error=False: we answer 401 (not FastAPI's 403) with our own message when the header is absent.
_bearer = HTTPBearer(auto_error=False, description="An organization API key: `Authorization: Bearer vr3_…`")


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]


async def current_org(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Organization:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or not credentials.credentials.strip():
        raise HTTPException(401, "missing API key: send the header 'Authorization: Bearer <api_key>'", challenge)
    org = await organization_for_key(get_services(request).db, credentials.credentials.strip())
    if org is None:
        raise HTTPException(401, "invalid or revoked API key", challenge)
    return org


OrgDep = Annotated[Organization, Depends(current_org)]

M = TypeVar("M")


def matches_nothing(value: str) -> bool:
    """True for an id or name from a URL that no stored row can have. PostgreSQL refuses to even
    compare text containing NUL (a 500), so such lookups must not reach the database."""
    return "\x00" in value


async def get_owned(session: AsyncSession, model: type[M], object_id: str, org_id: str, what: str) -> M:
    """The object if it belongs to ``org_id``; otherwise 404, the same answer as for an id that never
    existed, so ids from other organizations cannot be probed."""
    if matches_nothing(object_id):
        raise HTTPException(404, f"{what} not found")
    row = await session.scalar(
        select(model).where(model.id == object_id, model.organization_id == org_id)  # type: ignore[attr-defined]
    )
    if row is None:
        raise HTTPException(404, f"{what} not found")
    return row


def as_utc(value: datetime | None) -> datetime | None:
    # SQLite hands timestamps back naive; they were written as UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


Timestamp = Annotated[datetime, AfterValidator(as_utc)]


def non_null(fields_set: set[str], values: dict[str, Any], names: tuple[str, ...]) -> list[tuple[tuple[str, ...], str]]:
    """PATCH bodies may omit a field but not null a required one; return 422 items for those."""
    return [(("body", n), "must not be null") for n in names if n in fields_set and values.get(n) is None]
