"""The workflow run lifecycle: created (with its quota slot) → running → one final status.

Only the call owner (``vr3ai.telephony.ari.calls``) drives a run; this module makes each step a
single guarded statement so concurrent paths (caller hangup, media drop, reconcile after restart)
cannot move a run backwards or bill it twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from vr3ai.core.quota import QuotaService
from vr3ai.db.models import FINAL_STATUSES, WorkflowRun, new_id
from vr3ai.db.session import Database


@dataclass
class RunOutcome:
    status: str
    end_reason: str
    transcript: list[dict[str, Any]] | None = None
    metrics: list[dict[str, Any]] | None = None
    variables: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    recording_path: str | None = None
    recording_bytes: int = 0


class RunService:
    def __init__(self, db: Database, quota: QuotaService) -> None:
        self.db = db
        self.quota = quota

    async def create(
        self,
        *,
        organization_id: str,
        workflow_id: str | None,
        telephony_configuration_id: str | None,
        direction: str,
        context: dict[str, Any],
        call_id: str | None = None,
        run_id: str | None = None,
        reserve: bool = True,
    ) -> WorkflowRun:
        """Create a run holding one call slot; raises ``QuotaExceeded`` (nothing written) if none."""
        async with self.db.session() as s, s.begin():
            if reserve:
                await self.quota.reserve(s, organization_id)
            run = WorkflowRun(
                id=run_id or new_id(),
                organization_id=organization_id,
                workflow_id=workflow_id,
                telephony_configuration_id=telephony_configuration_id,
                direction=direction,
                status="initialized",
                context=context,
                call_id=call_id,
                slot_held=reserve,
                started_at=datetime.now(UTC),
            )
            s.add(run)
        return run

    async def create_refused(
        self,
        *,
        organization_id: str,
        workflow_id: str | None,
        telephony_configuration_id: str | None,
        direction: str,
        context: dict[str, Any],
        call_id: str | None,
        reason: str,
    ) -> WorkflowRun:
        """Record a call we refused, so the operator sees why in the runs list."""
        now = datetime.now(UTC)
        async with self.db.session() as s, s.begin():
            run = WorkflowRun(
                organization_id=organization_id,
                workflow_id=workflow_id,
                telephony_configuration_id=telephony_configuration_id,
                direction=direction,
                status="failed",
                context=context,
                call_id=call_id,
                started_at=now,
                ended_at=now,
                end_reason=reason,
                events=[{"level": "error", "message": reason, "at_ms": 0}],
            )
            s.add(run)
        return run

    async def mark_running(self, run_id: str, call_id: str | None = None) -> bool:
        values: dict[str, Any] = {"status": "running", "answered_at": datetime.now(UTC)}
        if call_id:
            values["call_id"] = call_id
        async with self.db.session() as s, s.begin():
            res = await s.execute(
                update(WorkflowRun)
                .where(WorkflowRun.id == run_id, WorkflowRun.status == "initialized")
                .values(**values)
            )
        return bool(res.rowcount)  # type: ignore[attr-defined]

    async def set_call_id(self, run_id: str, call_id: str) -> None:
        async with self.db.session() as s, s.begin():
            await s.execute(update(WorkflowRun).where(WorkflowRun.id == run_id).values(call_id=call_id))

    async def finish(self, run_id: str, outcome: RunOutcome) -> bool:
        """Move the run to its final status and release/bill its slot. Idempotent: the first caller
        wins, later calls change nothing and return False."""
        assert outcome.status in FINAL_STATUSES, outcome.status
        now = datetime.now(UTC)
        async with self.db.session() as s, s.begin():
            run = await s.get(WorkflowRun, run_id)
            if run is None or run.status in FINAL_STATUSES:
                return False
            answered = run.answered_at
            if answered is not None and answered.tzinfo is None:
                answered = answered.replace(tzinfo=UTC)
            billed = math.ceil((now - answered).total_seconds()) if answered else 0
            values: dict[str, Any] = {
                "status": outcome.status,
                "end_reason": outcome.end_reason,
                "ended_at": now,
            }
            if outcome.transcript is not None:
                values["transcript"] = outcome.transcript
            if outcome.metrics is not None:
                values["metrics"] = outcome.metrics
            if outcome.variables is not None:
                values["variables"] = outcome.variables
            if outcome.events:
                values["events"] = list(run.events or []) + outcome.events
            if outcome.recording_path:
                values["recording_path"] = outcome.recording_path
                values["recording_bytes"] = outcome.recording_bytes
            res = await s.execute(
                update(WorkflowRun)
                .where(WorkflowRun.id == run_id, WorkflowRun.status.not_in(FINAL_STATUSES))
                .values(**values)
            )
            if not res.rowcount:  # type: ignore[attr-defined]
                return False
            await self.quota.release(s, run_id, max(billed, 0))
        return True

    async def unfinished(self, telephony_configuration_id: str | None = None) -> list[WorkflowRun]:
        async with self.db.session() as s:
            q = select(WorkflowRun).where(WorkflowRun.status.not_in(FINAL_STATUSES))
            if telephony_configuration_id:
                q = q.where(WorkflowRun.telephony_configuration_id == telephony_configuration_id)
            return list((await s.execute(q)).scalars())

    async def get(self, run_id: str) -> WorkflowRun | None:
        async with self.db.session() as s:
            return await s.get(WorkflowRun, run_id)
