"""``/workflows`` and ``/workflows/{id}/calls`` (place an outbound call with a workflow)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vr3ai.api.deps import OrgDep, ServicesDep, Timestamp, get_owned, non_null
from vr3ai.api.errors import ApiRoute, error_response, field_error, field_errors
from vr3ai.api.limits import LIMIT_RESPONSE, SIZE_RESPONSE, enforce_count, enforce_definition_size
from vr3ai.api.validation import DialTo, DisplayName, RequestBody
from vr3ai.core.outbound import OutboundRefused
from vr3ai.core.quota import QuotaExceeded
from vr3ai.core.secret_hosts import check_uses, cloud_url, secret_uses
from vr3ai.db.models import OrganizationSecret, TelephonyConfiguration, Workflow

router = APIRouter(tags=["workflows"], route_class=ApiRoute)


class WorkflowCreate(RequestBody):
    model_config = ConfigDict(extra="forbid")
    name: DisplayName
    definition: dict[str, Any]


class WorkflowPatch(RequestBody):
    model_config = ConfigDict(extra="forbid")
    name: DisplayName | None = None
    definition: dict[str, Any] | None = None


class DefinitionIssue(BaseModel):
    loc: str
    """Inside the definition, like ``edges[1].to``."""
    msg: str


class WorkflowOut(BaseModel):
    id: str
    name: str
    definition: dict[str, Any]
    warnings: list[DefinitionIssue] = []
    """Non-fatal findings of the definition check (unreachable nodes, unknown variables, ...)."""
    created_at: Timestamp
    updated_at: Timestamp


class WorkflowList(BaseModel):
    items: list[WorkflowOut]


class CallCreate(RequestBody):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    telephony_configuration_id: str
    to: DialTo = Field(
        description="An extension or number, dialled through the configuration's dial template "
        "(default 'PJSIP/{to}'), or a full dial string of a known channel technology, like 'PJSIP/6001'.",
        examples=["6001", "PJSIP/6001"],
    )
    from_: str | None = Field(
        default=None,
        alias="from",
        description="One of the configuration's From Extensions: the caller ID Asterisk presents "
        "(its channel technology prefix removed). Default: the first one.",
        examples=["PJSIP/6001"],
    )


class CallAccepted(BaseModel):
    run_id: str


_LOC_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def _split_loc(loc: Any) -> list[str | int]:
    """The definition checker writes locations as ``"edges[1].to"``; the API speaks FastAPI's
    ``["edges", 1, "to"]``."""
    if isinstance(loc, list | tuple):
        return list(loc)
    return [int(m.group(1)) if m.group(1) is not None else m.group(2) for m in _LOC_PART.finditer(str(loc or ""))]


def _check_definition(definition: dict[str, Any]) -> list[dict[str, str]]:
    """Validate with the workflow engine's own checker, so the API never stores a graph the engine
    would refuse at call time; returns the warnings. 422 items point into ``body.definition``.
    Imported lazily: the engine pulls in more than the API needs to start."""
    from vr3ai.workflows.definition import DefinitionError, validate_definition

    try:
        return list(validate_definition(definition).warnings)
    except DefinitionError as e:
        items = [(["body", "definition", *_split_loc(err.get("loc"))], str(err.get("msg"))) for err in e.errors]
        raise field_errors(items or [(["body", "definition"], str(e))]) from None


async def _bind_secrets(s: AsyncSession, org_id: str, definition: dict[str, Any]) -> None:
    """Every organization secret the definition sends somewhere must be allowed there; an unbound
    one is bound to this workflow's hosts (see ``vr3ai.core.secret_hosts``). Runs inside the
    caller's transaction, so a refusal stores neither the workflow nor a binding."""
    uses = secret_uses(definition.get("settings"))
    if not uses:
        return
    rows = (
        await s.scalars(
            select(OrganizationSecret).where(
                OrganizationSecret.organization_id == org_id,
                OrganizationSecret.name.in_({u.name for u in uses}),
            )
        )
    ).all()
    by_name = {r.name: r for r in rows}
    bind, refused = check_uses(uses, {r.name: list(r.allowed_hosts or []) for r in rows})
    if refused:
        raise field_errors([(["body", "definition", *use.loc], msg) for use, msg in refused])
    for name, hosts in bind.items():
        by_name[name].allowed_hosts = hosts


async def _check_outbound(svc: Any, definition: dict[str, Any]) -> None:
    """A definition that passed :func:`_check_definition`: the URLs its calls will request (the
    LLM's ``base_url``, the cloud STT/TTS vendors' URLs) must pass the outbound policy, or saving is
    a 422 naming it, instead of every call failing later."""
    settings = definition.get("settings") or {}
    targets: list[tuple[list[str | int], str]] = []
    llm = settings.get("llm") or {}
    if llm.get("provider") == "openai_compatible":
        targets.append((["settings", "llm", "base_url"], str(llm["base_url"])))
    for kind in ("stt", "tts"):
        provider = (settings.get(kind) or {}).get("provider", "offline")
        url = cloud_url(kind, provider)
        if url:
            targets.append((["settings", kind, "provider"], url))
    problems = []
    for loc, url in targets:
        try:
            await svc.outbound.check_url(url)
        except OutboundRefused as e:
            problems.append((["body", "definition", *loc], str(e)))
    if problems:
        raise field_errors(problems)


def _warnings_of(definition: dict[str, Any]) -> list[dict[str, str]]:
    """Warnings for a stored definition. One stored by an older, laxer version may no longer
    validate; it is still shown, with its errors listed as warnings rather than failing the read."""
    from vr3ai.workflows.definition import check_definition

    result = check_definition(definition)
    return list(result.warnings) + [{"loc": e["loc"], "msg": f"error: {e['msg']}"} for e in result.errors]


def _out(wf: Workflow, warnings: list[dict[str, str]] | None = None) -> WorkflowOut:
    return WorkflowOut(
        id=wf.id,
        name=wf.name,
        definition=wf.definition,
        warnings=[DefinitionIssue(**w) for w in (warnings if warnings is not None else _warnings_of(wf.definition))],
        created_at=wf.created_at,
        updated_at=wf.updated_at,
    )


def _prewarm(svc: Any, definition: dict[str, Any]) -> None:
    # The saved greeting is synthesised now, in the background, so the first call plays it at once.
    if svc.voice is not None:
        from vr3ai.agent.factory import prewarm_workflow

        prewarm_workflow(svc.voice, definition)


@router.post(
    "/workflows", response_model=WorkflowOut, status_code=201, responses={**LIMIT_RESPONSE, **SIZE_RESPONSE}
)
async def create_workflow(body: WorkflowCreate, org: OrgDep, svc: ServicesDep) -> WorkflowOut:
    enforce_definition_size(org, body.definition)
    warnings = _check_definition(body.definition)
    await _check_outbound(svc, body.definition)
    async with svc.db.session() as s, s.begin():
        await enforce_count(s, org.id, "workflows")
        # Stored as sent (not the model's dump with every default filled in), so later changes of a
        # default reach existing workflows and the author gets back exactly what they wrote.
        await _bind_secrets(s, org.id, body.definition)
        wf = Workflow(organization_id=org.id, name=body.name, definition=body.definition)
        s.add(wf)
    _prewarm(svc, body.definition)
    return _out(wf, warnings)


@router.get("/workflows", response_model=WorkflowList)
async def list_workflows(org: OrgDep, svc: ServicesDep) -> WorkflowList:
    async with svc.db.session() as s:
        rows = (
            await s.scalars(
                select(Workflow).where(Workflow.organization_id == org.id).order_by(Workflow.created_at, Workflow.id)
            )
        ).all()
    return WorkflowList(items=[_out(r) for r in rows])


@router.get("/workflows/{workflow_id}", response_model=WorkflowOut)
async def get_workflow(workflow_id: str, org: OrgDep, svc: ServicesDep) -> WorkflowOut:
    async with svc.db.session() as s:
        return _out(await get_owned(s, Workflow, workflow_id, org.id, "workflow"))


@router.patch("/workflows/{workflow_id}", response_model=WorkflowOut, responses=SIZE_RESPONSE)
async def update_workflow(workflow_id: str, body: WorkflowPatch, org: OrgDep, svc: ServicesDep) -> WorkflowOut:
    if bad := non_null(body.model_fields_set, body.model_dump(), ("name", "definition")):
        raise field_errors(bad)
    if body.definition is not None:
        enforce_definition_size(org, body.definition)
    warnings = _check_definition(body.definition) if body.definition is not None else None
    if body.definition is not None:
        await _check_outbound(svc, body.definition)
    async with svc.db.session() as s, s.begin():
        wf = await get_owned(s, Workflow, workflow_id, org.id, "workflow")
        if body.name is not None:
            wf.name = body.name
        if body.definition is not None:
            await _bind_secrets(s, org.id, body.definition)
            wf.definition = body.definition
    if body.definition is not None:
        _prewarm(svc, body.definition)
    return _out(wf, warnings)


@router.delete("/workflows/{workflow_id}", status_code=204)
async def delete_workflow(workflow_id: str, org: OrgDep, svc: ServicesDep) -> Response:
    # Phone numbers pointing here fall back to "no inbound workflow" and runs keep their history
    # (both foreign keys are ON DELETE SET NULL).
    async with svc.db.session() as s, s.begin():
        wf = await get_owned(s, Workflow, workflow_id, org.id, "workflow")
        await s.delete(wf)
    return Response(status_code=204)


@router.post(
    "/workflows/{workflow_id}/calls",
    response_model=CallAccepted,
    status_code=202,
    responses={
        409: error_response("The configuration cannot place calls now (disabled, or ARI not connected)."),
        429: error_response("A quota of the organization is exhausted."),
        503: error_response("Telephony is not running in this process."),
    },
)
async def place_call(workflow_id: str, body: CallCreate, org: OrgDep, svc: ServicesDep) -> CallAccepted:
    """Start an outbound call that runs this workflow. 202: the call is being placed; follow it
    with ``GET /workflow-runs/{run_id}``."""
    from vr3ai.telephony.manager import CallRefused

    async with svc.db.session() as s:
        await get_owned(s, Workflow, workflow_id, org.id, "workflow")
        row = await get_owned(
            s, TelephonyConfiguration, body.telephony_configuration_id, org.id, "telephony configuration"
        )
    from_extensions = list(row.from_extensions or [])
    if body.from_ is not None and body.from_ not in from_extensions:
        allowed = ", ".join(f"'{x}'" for x in from_extensions) or "none are configured"
        raise field_error(["body", "from"], f"must be one of the configuration's From Extensions ({allowed})")
    if svc.telephony is None:
        raise HTTPException(503, "telephony is not running in this process")
    try:
        run_id = await svc.telephony.place_call(
            organization_id=org.id,
            workflow_id=workflow_id,
            config_id=body.telephony_configuration_id,
            to=body.to,
            from_extension=body.from_,
        )
    except CallRefused as e:
        raise HTTPException(e.status_code, str(e)) from None
    except QuotaExceeded as e:
        raise HTTPException(429, e.reason) from None
    return CallAccepted(run_id=run_id)
