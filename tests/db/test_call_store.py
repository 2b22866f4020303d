"""The call owner's store (``vr3ai.core.calls.CallStore``) on SQLite and PostgreSQL: routing an
extension to its workflow (never another configuration's number or another organization's workflow),
the run with its quota slot from creation to one final status, the recordings quota, and the
organization secrets a workflow may send."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from vr3ai.core.calls import CallStore, NewRun, RouteRefused
from vr3ai.core.orgs import create_organization
from vr3ai.core.quota import QuotaExceeded, QuotaService
from vr3ai.core.runs import RunOutcome, RunService
from vr3ai.core.secrets import SecretBox
from vr3ai.db.models import (
    Organization,
    OrganizationSecret,
    PhoneNumber,
    TelephonyConfiguration,
    Workflow,
    WorkflowRun,
)
from vr3ai.db.session import Database

LLM_HOST = "llm.example.com"


@dataclass
class World:
    store: CallStore
    box: SecretBox
    org_id: str
    other_org_id: str
    config_id: str
    other_config_id: str
    workflow: Workflow
    foreign_workflow: Workflow


def _definition(secret: str | None = None, base_url: str = f"https://{LLM_HOST}/v1") -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if secret is not None:
        llm = {"provider": "openai_compatible", "base_url": base_url, "model": "m", "api_key_secret": secret}
        settings["llm"] = llm
    return {"nodes": [], "settings": settings}


def _config(org_id: str, box: SecretBox, app: str) -> TelephonyConfiguration:
    return TelephonyConfiguration(
        organization_id=org_id,
        name=f"pbx {app}",
        ari_endpoint_url="http://pbx.invalid:8088",
        endpoint_key="http://pbx.invalid:8088",
        stasis_app_name=app,
        app_password_enc=box.encrypt("app-secret"),
        websocket_client_name="vr3ai",
        from_extensions=[],
    )


@pytest.fixture
async def world(db: Database) -> World:
    box = SecretBox(Fernet.generate_key().decode())
    org, _ = await create_organization(db, "Store org", max_concurrent_calls=1, minutes_per_month=None)
    other, _ = await create_organization(db, "Other org", max_concurrent_calls=1, minutes_per_month=None)
    async with db.session() as s, s.begin():
        wf = Workflow(organization_id=org.id, name="inbound", definition=_definition())
        foreign = Workflow(organization_id=other.id, name="foreign", definition=_definition())
        cfg, other_cfg = _config(org.id, box, "app1"), _config(org.id, box, "app2")
        s.add_all([wf, foreign, cfg, other_cfg])
        await s.flush()
        s.add_all(
            [
                PhoneNumber(
                    organization_id=org.id, telephony_configuration_id=cfg.id, address="100", inbound_workflow_id=wf.id
                ),
                PhoneNumber(
                    organization_id=org.id, telephony_configuration_id=cfg.id, address="101", inbound_workflow_id=None
                ),
                PhoneNumber(
                    organization_id=org.id,
                    telephony_configuration_id=cfg.id,
                    address="102",
                    inbound_workflow_id=foreign.id,
                ),
                PhoneNumber(
                    organization_id=org.id,
                    telephony_configuration_id=other_cfg.id,
                    address="200",
                    inbound_workflow_id=wf.id,
                ),
            ]
        )
    store = CallStore(db, RunService(db, QuotaService(db)), box)
    return World(store, box, org.id, other.id, cfg.id, other_cfg.id, wf, foreign)


async def test_routes_an_extension_to_its_numbers_workflow(world: World) -> None:
    wf = await world.store.route_inbound(config_id=world.config_id, organization_id=world.org_id, exten="100")
    assert wf.id == world.workflow.id


@pytest.mark.parametrize(
    ("exten", "level", "hangup", "text"),
    [
        ("999", "warning", "unallocated", "no matching phone number registered"),
        # A number of another configuration (same organization) does not answer on this one.
        ("200", "warning", "unallocated", "no matching phone number registered"),
        ("101", "warning", "unallocated", "has no inbound_workflow_id assigned"),
        ("102", "error", "rejected", "does not exist in this configuration's organization"),
    ],
)
async def test_refused_routes_say_why(world: World, exten: str, level: str, hangup: str, text: str) -> None:
    with pytest.raises(RouteRefused) as info:
        await world.store.route_inbound(config_id=world.config_id, organization_id=world.org_id, exten=exten)
    assert (info.value.level, info.value.hangup_reason) == (level, hangup)
    assert text in info.value.message and f"'{exten}'" in info.value.message


async def test_workflow_lookup_stays_inside_the_organization(world: World) -> None:
    store = world.store
    assert (await store.workflow(organization_id=world.org_id, workflow_id=world.workflow.id)) is not None
    assert await store.workflow(organization_id=world.org_id, workflow_id=world.foreign_workflow.id) is None
    assert await store.workflow(organization_id=world.org_id, workflow_id="no-such-workflow") is None


async def _run(world: World, run_id: str, call_id: str) -> WorkflowRun:
    return await world.store.create_run(run_id, _new_run(world, call_id))


def _new_run(world: World, call_id: str) -> NewRun:
    return NewRun(world.org_id, world.workflow.id, world.config_id, "inbound", {"caller_number": "6001"}, call_id)


async def test_run_lifecycle_holds_and_releases_the_quota_slot(world: World, db: Database) -> None:
    store = world.store
    run = await _run(world, "11111111-1111-4111-8111-111111111111", "chan-1")
    assert run.status == "initialized" and run.slot_held
    # The organization has one slot: a second call is refused and nothing is written for it...
    with pytest.raises(QuotaExceeded) as info:
        await _run(world, "22222222-2222-4222-8222-222222222222", "chan-2")
    assert info.value.code == "concurrency"
    # ...except the refusal the operator reads in the runs list, which holds no slot.
    refused = await store.record_refused(_new_run(world, "chan-2"), f"quota: {info.value.reason}")
    assert refused.status == "failed" and not refused.slot_held
    assert refused.end_reason.startswith("quota: concurrent call limit reached")
    assert [r.id for r in await store.unfinished(world.config_id)] == [run.id]
    assert await store.unfinished(world.other_config_id) == []

    assert await store.mark_running(run.id)
    assert not await store.mark_running(run.id)  # never backwards, never twice
    await store.set_call_id(run.id, "chan-1b")
    assert await store.finish(run.id, RunOutcome(status="completed", end_reason="caller hung up"))
    assert not await store.finish(run.id, RunOutcome(status="failed", end_reason="late"))
    async with db.session() as s:
        row = await s.get(WorkflowRun, run.id)
        active = await s.scalar(select(Organization.active_calls).where(Organization.id == world.org_id))
    assert row is not None
    assert (row.status, row.end_reason, row.call_id) == ("completed", "caller hung up", "chan-1b")
    assert active == 0
    assert await store.unfinished(world.config_id) == []
    # The slot is back: the next call fits.
    await _run(world, "33333333-3333-4333-8333-333333333333", "chan-3")


async def test_recording_quota(world: World, db: Database) -> None:
    assert await world.store.recording_refusal(world.org_id) is None
    async with db.session() as s, s.begin():
        org = await s.get(Organization, world.org_id)
        assert org is not None
        org.max_recording_mb = 1
        s.add(
            WorkflowRun(
                organization_id=world.org_id,
                direction="inbound",
                status="completed",
                context={},
                recording_path="/recordings/old.wav",
                recording_bytes=1_500_000,
            )
        )
    refusal = await world.store.recording_refusal(world.org_id)
    assert refusal is not None and "1.5 MB of its 1 MB" in refusal
    assert await world.store.recording_refusal(world.other_org_id) is None  # another tenant's use is not ours


async def _secret(world: World, db: Database, name: str, value: str, hosts: list[str], org_id: str = "") -> None:
    async with db.session() as s, s.begin():
        s.add(
            OrganizationSecret(
                organization_id=org_id or world.org_id,
                name=name,
                value_enc=world.box.encrypt(value),
                allowed_hosts=hosts,
            )
        )


async def _workflow(db: Database, org_id: str, definition: dict[str, Any]) -> Workflow:
    async with db.session() as s, s.begin():
        wf = Workflow(organization_id=org_id, name="with secret", definition=definition)
        s.add(wf)
    return wf


async def test_secrets_go_only_where_they_are_allowed(world: World, db: Database) -> None:
    await _secret(world, db, "llm_key", "sk-allowed", [LLM_HOST])
    allowed = await world.store.secrets_for(await _workflow(db, world.org_id, _definition("llm_key")))
    assert allowed.values == {"llm_key": "sk-allowed"} and allowed.refused == []

    elsewhere = _definition("llm_key", base_url="https://attacker.example.net/v1")
    refused = await world.store.secrets_for(await _workflow(db, world.org_id, elsewhere))
    assert refused.values == {}
    assert [use.host for use, _ in refused.refused] == ["attacker.example.net"]
    assert "may only be sent to llm.example.com" in refused.refused[0][1]
    assert "sk-allowed" not in repr(refused) and "sk-allowed" not in repr(allowed)


async def test_unbound_secret_is_bound_to_the_workflows_host(world: World, db: Database) -> None:
    await _secret(world, db, "fresh", "sk-fresh", [])
    read = await world.store.secrets_for(await _workflow(db, world.org_id, _definition("fresh")))
    assert read.values == {"fresh": "sk-fresh"}
    async with db.session() as s:
        hosts = await s.scalar(select(OrganizationSecret.allowed_hosts).where(OrganizationSecret.name == "fresh"))
    assert hosts == [LLM_HOST]


async def test_another_organizations_secret_of_the_same_name_is_never_read(world: World, db: Database) -> None:
    await _secret(world, db, "shared_name", "sk-other-tenant", [LLM_HOST], org_id=world.other_org_id)
    read = await world.store.secrets_for(await _workflow(db, world.org_id, _definition("shared_name")))
    assert read.values == {} and read.refused == []
    assert (await world.store.secrets_for(world.workflow)).values == {}  # no secret used, nothing read
