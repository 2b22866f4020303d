"""Concurrent-call slots and monthly minutes: the one service the call flow asks.

Atomicity comes from single conditional UPDATE statements, not from read-then-write in Python:
``active_calls = active_calls + 1 WHERE active_calls < max AND minutes left``. PostgreSQL takes a
row lock for it; SQLite serialises writers. Either way exactly as many reservations succeed as there
are slots, whatever the concurrency (tests fire 20 at once against one slot).

A slot belongs to a run (``workflow_runs.slot_held``). Releasing flips that flag with a conditional
UPDATE first and only then decrements the counter and bills, so a release that races another
release (caller hangup vs. media drop vs. reconcile) bills once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from vr3ai.db.models import Organization, OrganizationUsage, WorkflowRun
from vr3ai.db.session import Database


class QuotaExceeded(Exception):
    """The organization may not take another call now. ``reason`` is shown to operators."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code  # "concurrency" | "minutes" | "unknown_organization"


def current_month(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m")


@dataclass
class QuotaStatus:
    max_concurrent_calls: int
    active_calls: int
    minutes_per_month: int | None
    seconds_used: int

    @property
    def minutes_used(self) -> float:
        return round(self.seconds_used / 60, 2)


class QuotaService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def reserve(self, session: AsyncSession, organization_id: str) -> None:
        """Take one slot inside the caller's transaction, or raise :class:`QuotaExceeded`.

        The caller creates the run with ``slot_held=True`` in the same transaction and commits; if
        anything fails before the commit, the reservation rolls back with it."""
        month = current_month()
        used = (
            select(func.coalesce(func.max(OrganizationUsage.seconds_used), 0))
            .where(OrganizationUsage.organization_id == organization_id, OrganizationUsage.month == month)
            .scalar_subquery()
        )
        stmt = (
            update(Organization)
            .where(
                Organization.id == organization_id,
                Organization.active_calls < Organization.max_concurrent_calls,
                (Organization.minutes_per_month.is_(None)) | (used < Organization.minutes_per_month * 60),
            )
            .values(active_calls=Organization.active_calls + 1)
            .execution_options(synchronize_session=False)
        )
        result = await session.execute(stmt)
        if result.rowcount == 1:  # type: ignore[attr-defined]
            return
        org = await session.get(Organization, organization_id)
        if org is None:
            raise QuotaExceeded("organization not found", "unknown_organization")
        seconds = await self._seconds_used(session, organization_id, month)
        if org.minutes_per_month is not None and seconds >= org.minutes_per_month * 60:
            raise QuotaExceeded(
                f"monthly minutes exhausted ({math.ceil(seconds / 60)} of {org.minutes_per_month} used)", "minutes"
            )
        raise QuotaExceeded(
            f"concurrent call limit reached ({org.max_concurrent_calls} of {org.max_concurrent_calls} in use)",
            "concurrency",
        )

    async def release(self, session: AsyncSession, run_id: str, billed_seconds: int) -> bool:
        """Release the run's slot and bill its seconds, once. Returns whether this call did it."""
        result = await session.execute(
            update(WorkflowRun)
            .where(WorkflowRun.id == run_id, WorkflowRun.slot_held.is_(True))
            .values(slot_held=False, billed_seconds=billed_seconds)
            .returning(WorkflowRun.organization_id)
        )
        row = result.first()
        if row is None:
            return False
        org_id = row[0]
        await session.execute(
            update(Organization)
            .where(Organization.id == org_id, Organization.active_calls > 0)
            .values(active_calls=Organization.active_calls - 1)
        )
        if billed_seconds > 0:
            await self._add_seconds(session, org_id, billed_seconds)
        return True

    async def _add_seconds(self, session: AsyncSession, org_id: str, seconds: int) -> None:
        # INSERT ... ON CONFLICT DO UPDATE exists with the same shape in SQLite and PostgreSQL; it
        # makes the first bill of a month race-free without a read.
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        stmt = insert(OrganizationUsage).values(organization_id=org_id, month=current_month(), seconds_used=seconds)
        stmt = stmt.on_conflict_do_update(
            index_elements=[OrganizationUsage.organization_id, OrganizationUsage.month],
            set_={"seconds_used": OrganizationUsage.seconds_used + seconds},
        )
        await session.execute(stmt)

    async def _seconds_used(self, session: AsyncSession, org_id: str, month: str) -> int:
        value = await session.scalar(
            select(OrganizationUsage.seconds_used).where(
                OrganizationUsage.organization_id == org_id, OrganizationUsage.month == month
            )
        )
        return int(value or 0)

    async def status(self, session: AsyncSession, org: Organization) -> QuotaStatus:
        seconds = await self._seconds_used(session, org.id, current_month())
        return QuotaStatus(org.max_concurrent_calls, org.active_calls, org.minutes_per_month, seconds)

    async def resync(self, session: AsyncSession) -> None:
        """After a crash, recount slots from the runs that still hold one."""
        counts = dict(
            (
                await session.execute(
                    select(WorkflowRun.organization_id, func.count())
                    .where(WorkflowRun.slot_held.is_(True))
                    .group_by(WorkflowRun.organization_id)
                )
            ).all()
        )
        for org in (await session.execute(select(Organization))).scalars():
            org.active_calls = int(counts.get(org.id, 0))
