"""Every inbound refusal path: the call is hung up with a sensible cause, no run is left running,
and the reason is visible through the API."""

from __future__ import annotations

import pytest

from tests.harness import AsteriskLab
from tests.integration.conftest import SIMPLE_WORKFLOW
from tests.integration.platform import RunningPlatform
from tests.integration.test_inbound import assert_no_leftovers
from vr3ai.core.orgs import create_organization
from vr3ai.db.models import PhoneNumber, Workflow

pytestmark = pytest.mark.asterisk


async def test_number_without_workflow(lab: AsteriskLab, platform: RunningPlatform) -> None:
    _, cfg_id = await platform.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab)
    await platform.post(f"/api/v1/telephony-configurations/{cfg_id}/phone-numbers", {"address": "8001"})
    call = await lab.call("8001", hold_s=5)
    await call.wait_hangup(5)
    status = await platform.get(f"/api/v1/telephony-configurations/{cfg_id}/status")
    msgs = [e["message"] for e in status["recent_events"]]
    assert any("'8001'" in m and "has no inbound_workflow_id assigned" in m for m in msgs), msgs
    assert (await platform.get("/api/v1/workflow-runs"))["items"] == []
    await assert_no_leftovers(lab)


async def test_workflow_of_another_organization(lab: AsteriskLab, platform: RunningPlatform) -> None:
    _, cfg_id = await platform.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab)
    other, _ = await create_organization(platform.services.db, "Other org")
    async with platform.services.db.session() as s, s.begin():
        wf = Workflow(organization_id=other.id, name="theirs", definition=SIMPLE_WORKFLOW)
        s.add(wf)
        await s.flush()
        # The API refuses this; a row written behind its back must still not route calls across orgs.
        s.add(
            PhoneNumber(
                organization_id=platform.organization_id,
                telephony_configuration_id=cfg_id,
                address="8002",
                inbound_workflow_id=wf.id,
            )
        )
    call = await lab.call("8002", hold_s=5)
    await call.wait_hangup(5)
    status = await platform.get(f"/api/v1/telephony-configurations/{cfg_id}/status")
    msgs = [e["message"] for e in status["recent_events"]]
    assert any("'8002'" in m and "does not exist in this configuration's organization" in m for m in msgs), msgs
    await assert_no_leftovers(lab)


async def test_quota_exhausted_minutes(lab: AsteriskLab, platform: RunningPlatform) -> None:
    wf_id, _ = await platform.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab)
    async with platform.services.db.session() as s, s.begin():
        from vr3ai.db.models import Organization

        org = await s.get(Organization, platform.organization_id)
        assert org is not None
        org.minutes_per_month = 0
    call = await lab.call("8000", hold_s=5)
    await call.wait_hangup(5)
    run = await platform.wait_run(workflow_id=wf_id)
    assert run["status"] == "failed"
    assert run["end_reason"].startswith("quota: monthly minutes exhausted"), run["end_reason"]
    await assert_no_leftovers(lab)
