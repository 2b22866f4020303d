"""Quota under concurrency, on SQLite and PostgreSQL: slots are reserved atomically, released and
billed exactly once, and exhausted minutes refuse new calls."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select, update

from vr3ai.core.orgs import create_organization
from vr3ai.core.quota import QuotaExceeded, QuotaService, current_month
from vr3ai.core.runs import RunOutcome, RunService
from vr3ai.db.models import Organization, OrganizationUsage, WorkflowRun
from vr3ai.db.session import Database


async def _org(db: Database, **quota: int | None) -> str:
    org, _key = await create_organization(db, "Quota test", **quota)  # type: ignore[arg-type]
    return org.id


async def _create(runs: RunService, org_id: str) -> WorkflowRun:
    return await runs.create(
        organization_id=org_id, workflow_id=None, telephony_configuration_id=None, direction="inbound", context={}
    )


async def _counts(db: Database, org_id: str) -> tuple[int, int, int]:
    """(active_calls, runs holding a slot, seconds used this month)."""
    async with db.session() as s:
        active = await s.scalar(select(Organization.active_calls).where(Organization.id == org_id))
        held = await s.scalar(
            select(func.count()).where(WorkflowRun.organization_id == org_id, WorkflowRun.slot_held.is_(True))
        )
        used = await s.scalar(
            select(OrganizationUsage.seconds_used).where(
                OrganizationUsage.organization_id == org_id, OrganizationUsage.month == current_month()
            )
        )
    return int(active or 0), int(held or 0), int(used or 0)


async def test_twenty_concurrent_reservations_against_one_slot(db: Database) -> None:
    runs = RunService(db, QuotaService(db))
    org_id = await _org(db, max_concurrent_calls=1)
    results = await asyncio.gather(*(_create(runs, org_id) for _ in range(20)), return_exceptions=True)
    won = [r for r in results if isinstance(r, WorkflowRun)]
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    assert len(won) == 1, results
    assert len(refused) == 19 and {e.code for e in refused} == {"concurrency"}
    assert "concurrent call limit reached" in refused[0].reason
    async with db.session() as s:
        assert await s.scalar(select(func.count()).select_from(WorkflowRun)) == 1  # refusals wrote nothing
    assert await _counts(db, org_id) == (1, 1, 0)

    # The slot comes back when the call ends, and then exactly one more call fits.
    assert await runs.finish(won[0].id, RunOutcome(status="completed", end_reason="done"))
    again = await asyncio.gather(*(_create(runs, org_id) for _ in range(5)), return_exceptions=True)
    assert sum(isinstance(r, WorkflowRun) for r in again) == 1


async def test_concurrent_reservations_fill_exactly_the_slots(db: Database) -> None:
    runs = RunService(db, QuotaService(db))
    org_id = await _org(db, max_concurrent_calls=3)
    other_id = await _org(db, max_concurrent_calls=2)
    results = await asyncio.gather(
        *(_create(runs, org_id) for _ in range(12)),
        *(_create(runs, other_id) for _ in range(8)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, WorkflowRun) for r in results[:12]) == 3
    assert sum(isinstance(r, WorkflowRun) for r in results[12:]) == 2
    assert await _counts(db, org_id) == (3, 3, 0)
    assert await _counts(db, other_id) == (2, 2, 0)


async def test_concurrent_releases_bill_once(db: Database) -> None:
    quota = QuotaService(db)
    runs = RunService(db, quota)
    org_id = await _org(db, max_concurrent_calls=2)
    run = await _create(runs, org_id)

    async def release() -> bool:
        async with db.session() as s, s.begin():
            return await quota.release(s, run.id, 42)

    results = await asyncio.gather(*(release() for _ in range(10)))
    assert results.count(True) == 1
    assert await _counts(db, org_id) == (0, 0, 42)
    async with db.session() as s:
        assert await s.scalar(select(WorkflowRun.billed_seconds).where(WorkflowRun.id == run.id)) == 42


async def test_concurrent_finishes_end_the_run_once(db: Database) -> None:
    runs = RunService(db, QuotaService(db))
    org_id = await _org(db, max_concurrent_calls=1)
    run = await _create(runs, org_id)
    assert await runs.mark_running(run.id)
    outcomes = [RunOutcome(status="completed", end_reason=f"path {i}") for i in range(8)]
    results = await asyncio.gather(*(runs.finish(run.id, o) for o in outcomes))
    assert results.count(True) == 1
    finished = await runs.get(run.id)
    assert finished is not None and finished.status == "completed" and not finished.slot_held
    active, held, _used = await _counts(db, org_id)
    assert (active, held) == (0, 0)
    assert await runs.finish(run.id, RunOutcome(status="failed", end_reason="late")) is False


async def test_exhausted_minutes_refuse_new_calls(db: Database) -> None:
    quota = QuotaService(db)
    runs = RunService(db, quota)
    org_id = await _org(db, max_concurrent_calls=5, minutes_per_month=1)
    first = await _create(runs, org_id)
    second = await _create(runs, org_id)  # minutes are checked when a call starts, not mid-call
    async with db.session() as s, s.begin():
        assert await quota.release(s, first.id, 45)
    third = await _create(runs, org_id)  # 45 s of 60 used: still allowed
    async with db.session() as s, s.begin():
        assert await quota.release(s, second.id, 30)
        assert await quota.release(s, third.id, 0)
    try:
        await _create(runs, org_id)
    except QuotaExceeded as e:
        assert e.code == "minutes" and "monthly minutes exhausted" in e.reason
    else:
        raise AssertionError("a call was allowed after the monthly minutes ran out")
    assert await _counts(db, org_id) == (0, 0, 75)

    # Unlimited minutes never refuse on minutes.
    unlimited = await _org(db, max_concurrent_calls=1, minutes_per_month=None)
    run = await _create(runs, unlimited)
    async with db.session() as s, s.begin():
        assert await quota.release(s, run.id, 10**6)
    await _create(runs, unlimited)


async def test_release_without_a_slot_bills_nothing_and_resync_recounts(db: Database) -> None:
    quota = QuotaService(db)
    runs = RunService(db, quota)
    org_id = await _org(db, max_concurrent_calls=3)
    free = await runs.create(
        organization_id=org_id,
        workflow_id=None,
        telephony_configuration_id=None,
        direction="outbound",
        context={},
        reserve=False,
    )
    async with db.session() as s, s.begin():
        assert await quota.release(s, free.id, 99) is False
    held = await _create(runs, org_id)
    assert held.slot_held
    # A crash leaves the counter wrong; resync recounts it from the runs that hold a slot.
    async with db.session() as s, s.begin():
        await s.execute(update(Organization).where(Organization.id == org_id).values(active_calls=3))
    async with db.session() as s, s.begin():
        await quota.resync(s)
    assert await _counts(db, org_id) == (1, 1, 0)
