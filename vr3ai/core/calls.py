"""The call owner's database: everything a live call reads or writes, behind one small port.

A call (``vr3ai.telephony.ari.calls``) routes an inbound extension to its phone number and
workflow, creates its run (which reserves the organization's quota slot), reads the organization
secrets its workflow sends, checks the recordings quota and finishes the run. Those steps live here,
next to the run lifecycle (``core/runs.py``) and the quota (``core/quota.py``), so the call owner
holds no SQL and can be tested with this store on a real database (SQLite and PostgreSQL) rather
than through a fake Asterisk. Dograh keeps inbound routing in a module of its own for the same
reason.

Errors that refuse a call (:class:`RouteRefused`, ``QuotaExceeded``) carry the operator-facing
sentence; logging it, showing it on the configuration's status and hanging up stay with the call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from vr3ai.core.numbers import NumberMatch, match_number
from vr3ai.core.recordings import recording_refusal
from vr3ai.core.runs import RunOutcome, RunService
from vr3ai.core.secret_hosts import SecretUse, check_uses, secret_uses
from vr3ai.core.secrets import SecretBox
from vr3ai.db.models import OrganizationSecret, PhoneNumber, Workflow, WorkflowRun
from vr3ai.db.session import Database

log = logging.getLogger("vr3ai.core.calls")


class RouteRefused(Exception):
    """An inbound call has nowhere to go. ``level`` is how the configuration's status shows it
    (``warning``: a number to register or assign; ``error``: a routing that must not happen);
    ``hangup_reason`` is the ARI hangup reason the caller hears."""

    def __init__(self, message: str, *, level: str, hangup_reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.level = level
        self.hangup_reason = hangup_reason


@dataclass
class SecretsRead:
    """The organization secrets a workflow may send (name → plain value) and the uses refused,
    each with the sentence for the run's event."""

    values: dict[str, str] = field(default_factory=dict, repr=False)
    refused: list[tuple[SecretUse, str]] = field(default_factory=list)


@dataclass(frozen=True)
class NewRun:
    """The run a call asks for (or the refusal it records)."""

    organization_id: str
    workflow_id: str
    telephony_configuration_id: str
    direction: str
    context: dict[str, Any]
    call_id: str


class CallStore:
    def __init__(self, db: Database, runs: RunService, box: SecretBox) -> None:
        self.db = db
        self.runs = runs
        self.box = box

    # --- routing ----------------------------------------------------------------------------------
    async def route_inbound(self, *, config_id: str, organization_id: str, exten: str) -> Workflow:
        """The workflow of the phone number ``exten`` on this configuration, which must belong to the
        configuration's own organization; raises :class:`RouteRefused` otherwise."""
        async with self.db.session() as s:
            number = await s.scalar(
                select(PhoneNumber).where(
                    PhoneNumber.telephony_configuration_id == config_id, PhoneNumber.address == exten
                )
            )
            match: NumberMatch | None = None
            if number is None:
                # Not stored as delivered: try the documented other forms (vr3ai.core.numbers).
                rows = (
                    await s.scalars(select(PhoneNumber).where(PhoneNumber.telephony_configuration_id == config_id))
                ).all()
                match = match_number(exten, (r.address for r in rows))
                number = next((r for r in rows if r.address == match.address), None)
            if number is None:
                assert match is not None
                raise RouteRefused(
                    f"no matching phone number registered for config {config_id} (called extension '{exten}'; "
                    f"tried {match.tried_text()}"
                    + (f"; ambiguous: {', '.join(repr(a) for a in match.ambiguous)}" if match.ambiguous else "")
                    + ")",
                    level="warning",
                    hangup_reason="unallocated",
                )
            if match is not None:
                log.info(
                    "called number matched a stored phone number by normalisation",
                    extra={
                        "config_id": config_id,
                        "called_number": exten,
                        "phone_number": number.address,
                        "rule": match.step,
                    },
                )
            if number.inbound_workflow_id is None:
                raise RouteRefused(
                    f"phone number '{number.address}' of config {config_id} has no inbound_workflow_id assigned: "
                    "set its Inbound workflow in the Phone numbers section",
                    level="warning",
                    hangup_reason="unallocated",
                )
            workflow = await s.get(Workflow, number.inbound_workflow_id)
        if workflow is None or workflow.organization_id != organization_id:
            raise RouteRefused(
                f"phone number '{exten}' of config {config_id} points to a workflow that does not exist in this "
                "configuration's organization; call refused",
                level="error",
                hangup_reason="rejected",
            )
        return workflow

    async def workflow(self, *, organization_id: str, workflow_id: str) -> Workflow | None:
        """The organization's workflow, or None (also when it belongs to another organization)."""
        async with self.db.session() as s:
            workflow = await s.get(Workflow, workflow_id)
        if workflow is None or workflow.organization_id != organization_id:
            return None
        return workflow

    # --- the run ----------------------------------------------------------------------------------
    async def create_run(self, run_id: str, run: NewRun) -> WorkflowRun:
        """Create the run with its call slot; raises ``QuotaExceeded`` (nothing written) when the
        organization has none left."""
        return await self.runs.create(
            run_id=run_id,
            organization_id=run.organization_id,
            workflow_id=run.workflow_id,
            telephony_configuration_id=run.telephony_configuration_id,
            direction=run.direction,
            context=run.context,
            call_id=run.call_id,
        )

    async def record_refused(self, run: NewRun, reason: str) -> WorkflowRun:
        """A failed run (holding no slot) that tells the operator why a call was refused."""
        return await self.runs.create_refused(
            organization_id=run.organization_id,
            workflow_id=run.workflow_id,
            telephony_configuration_id=run.telephony_configuration_id,
            direction=run.direction,
            context=run.context,
            call_id=run.call_id,
            reason=reason,
        )

    async def set_call_id(self, run_id: str, call_id: str) -> None:
        await self.runs.set_call_id(run_id, call_id)

    async def mark_running(self, run_id: str) -> bool:
        return await self.runs.mark_running(run_id)

    async def finish(self, run_id: str, outcome: RunOutcome) -> bool:
        """Final status, slot released and billed once; False if the run was already final."""
        return await self.runs.finish(run_id, outcome)

    async def unfinished(self, telephony_configuration_id: str) -> list[WorkflowRun]:
        return await self.runs.unfinished(telephony_configuration_id)

    async def recording_refusal(self, organization_id: str) -> str | None:
        """None if the organization may record another call; otherwise the sentence for the run."""
        return await recording_refusal(self.db, organization_id)

    # --- secrets ----------------------------------------------------------------------------------
    async def secrets_for(self, workflow: Workflow) -> SecretsRead:
        """The organization secrets this workflow sends, each only if it is allowed where it goes
        (``vr3ai.core.secret_hosts``); a refused one is withheld. An unbound secret is bound here to
        this workflow's hosts (a workflow saved before bindings existed)."""
        settings = workflow.definition.get("settings") if isinstance(workflow.definition, dict) else None
        uses = secret_uses(settings)
        if not uses:
            return SecretsRead()
        out = SecretsRead()
        async with self.db.session() as s:
            rows = (
                await s.scalars(
                    select(OrganizationSecret).where(
                        OrganizationSecret.organization_id == workflow.organization_id,
                        OrganizationSecret.name.in_({u.name for u in uses}),
                    )
                )
            ).all()
            bind, out.refused = check_uses(uses, {r.name: list(r.allowed_hosts or []) for r in rows})
            withheld = {use.name for use, _ in out.refused}
            for row in rows:
                if row.name in bind:
                    row.allowed_hosts = bind[row.name]
                if row.name not in withheld:
                    out.values[row.name] = self.box.decrypt(row.value_enc)
            if bind:
                await s.commit()
        return out
