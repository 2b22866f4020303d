"""Per-tenant limits on what an organization may store: one tenant must not be able to fill the
database, the disk or the shared TTS worker for everyone else.

The limits are columns of ``organizations`` (defaults there and in migration 0002), set by the
operator with ``vr3ai org set-limits``; a tenant can read them (``GET /organizations/me``) but not
change them.

Count limits are checked inside the transaction that inserts the row, after taking a lock on the
organization's row (``UPDATE organizations SET id = id``): PostgreSQL holds a row lock until the
commit, SQLite its single write lock. So N parallel creates against a limit of M store exactly
min(N, M) rows, whatever the interleaving, instead of all of them passing a count read before any
of them was written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from vr3ai.db.models import Organization, OrganizationSecret, PhoneNumber, TelephonyConfiguration, Workflow


class LimitExceeded(Exception):
    """Creating one more would pass a limit of the organization. ``limit`` names the column."""

    def __init__(self, limit: str, maximum: int, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.maximum = maximum
        self.message = message


@dataclass(frozen=True)
class CountLimit:
    column: str
    model: Any
    what: str
    """Plural noun for the message."""


COUNT_LIMITS: dict[str, CountLimit] = {
    "telephony_configurations": CountLimit(
        "max_telephony_configurations", TelephonyConfiguration, "telephony configurations"
    ),
    "workflows": CountLimit("max_workflows", Workflow, "workflows"),
    "phone_numbers": CountLimit("max_phone_numbers", PhoneNumber, "phone numbers"),
    "secrets": CountLimit("max_secrets", OrganizationSecret, "secrets"),
}

LIMIT_COLUMNS = (
    "max_telephony_configurations",
    "max_workflows",
    "max_phone_numbers",
    "max_secrets",
    "max_definition_bytes",
    "max_recording_mb",
)
"""Every per-tenant limit column (``vr3ai org set-limits`` and ``GET /organizations/me``)."""


async def lock_organization(s: AsyncSession, organization_id: str) -> None:
    """Serialise this transaction with every other one that locks the same organization."""
    await s.execute(
        update(Organization)
        .where(Organization.id == organization_id)
        .values(id=Organization.id)
        .execution_options(synchronize_session=False)
    )


async def check_count(s: AsyncSession, organization_id: str, kind: str, adding: int = 1) -> None:
    """Raise :class:`LimitExceeded` if ``adding`` more rows of ``kind`` would pass the limit.

    Call it inside the transaction that inserts the rows, before the insert; it locks the
    organization's row until that transaction ends."""
    spec = COUNT_LIMITS[kind]
    await lock_organization(s, organization_id)
    maximum = await s.scalar(select(getattr(Organization, spec.column)).where(Organization.id == organization_id))
    if maximum is None:
        return
    count = await s.scalar(
        select(func.count()).select_from(spec.model).where(spec.model.organization_id == organization_id)
    )
    if int(count or 0) + adding > int(maximum):
        raise LimitExceeded(
            spec.column,
            int(maximum),
            f"limit reached: this organization may have at most {maximum} {spec.what} ({spec.column}); "
            "delete one, or ask the operator to raise the limit",
        )


def definition_size(definition: Any) -> int:
    """Bytes of the definition as stored (compact JSON, UTF-8)."""
    return len(json.dumps(definition, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def check_definition_size(org: Organization, definition: Any) -> None:
    size = definition_size(definition)
    if size > org.max_definition_bytes:
        raise LimitExceeded(
            "max_definition_bytes",
            org.max_definition_bytes,
            f"workflow definition too large: {size} bytes, this organization's limit is "
            f"{org.max_definition_bytes} bytes (max_definition_bytes)",
        )


def limits_of(org: Organization) -> dict[str, int]:
    return {name: int(getattr(org, name)) for name in LIMIT_COLUMNS}
