"""``/workflows``: list, create and edit workflows with a structured editor and the raw JSON.

Validation is the workflow engine's own (``vr3ai.workflows.definition``, imported lazily like the API
does): errors land next to the node or edge row they name, the rest above the form; warnings of a
saved workflow are shown on its page.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy import func, select

from vr3ai.db.models import PhoneNumber, TelephonyConfiguration, Workflow, WorkflowRun
from vr3ai.services import Services
from vr3ai.web import actions
from vr3ai.web.actions import FormErrors
from vr3ai.web.auth import Viewer, get_services, require_viewer, require_viewer_post
from vr3ai.web.common import owned, see_other
from vr3ai.web.errors import PageNotFound
from vr3ai.web.forms import NODE_TYPES, attach_errors, merge_structured, parse_json_definition, rows_from_definition
from vr3ai.web.render import WebRoute, render

router = APIRouter(route_class=WebRoute, include_in_schema=False)
ViewerDep = Annotated[Viewer, Depends(require_viewer)]
PostViewerDep = Annotated[Viewer, Depends(require_viewer_post)]
ServicesDep = Annotated[Services, Depends(get_services)]


def _check(definition: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from vr3ai.workflows.definition import check_definition

    result = check_definition(definition)
    return list(result.errors), list(result.warnings)


def _example() -> dict[str, Any]:
    from vr3ai.workflows.definition import example_definition

    return example_definition()


def _editor_context(
    name: str,
    definition: dict[str, Any],
    *,
    json_text: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    field_errors: dict[str, str] | None = None,
    json_error: str = "",
    mode: str = "form",
) -> dict[str, Any]:
    nodes, edges = rows_from_definition(definition)
    general = attach_errors(errors or [], nodes, edges) if mode == "form" else []
    json_errors = [f"{e.get('loc')}: {e.get('msg')}" if e.get("loc") else str(e.get("msg")) for e in errors or []]
    return {
        "name": name,
        "nodes": nodes,
        "edges": edges,
        "node_ids": [n.id for n in nodes if n.id],
        "node_types": NODE_TYPES,
        "base_json": json.dumps(definition, ensure_ascii=False),
        "json_text": json_text if json_text is not None else json.dumps(definition, indent=2, ensure_ascii=False),
        "general_errors": general,
        "json_errors": ([json_error] if json_error else []) + (json_errors if mode == "json" else []),
        "field_errors": field_errors or {},
        "mode": mode,
    }


@router.get("/workflows")
async def list_page(request: Request, viewer: ViewerDep, svc: ServicesDep) -> Response:
    async with svc.db.session() as s:
        rows = list(
            (
                await s.scalars(
                    select(Workflow).where(Workflow.organization_id == viewer.org.id).order_by(Workflow.name)
                )
            ).all()
        )
        numbers: dict[str, list[str]] = {}
        for wf_id, address in (
            await s.execute(
                select(PhoneNumber.inbound_workflow_id, PhoneNumber.address).where(
                    PhoneNumber.organization_id == viewer.org.id, PhoneNumber.inbound_workflow_id.is_not(None)
                )
            )
        ).all():
            numbers.setdefault(wf_id, []).append(address)
        run_counts = dict(
            (
                await s.execute(
                    select(WorkflowRun.workflow_id, func.count())
                    .where(WorkflowRun.organization_id == viewer.org.id)
                    .group_by(WorkflowRun.workflow_id)
                )
            ).all()
        )
    items = [
        {
            "row": w,
            "nodes": len(w.definition.get("nodes") or []) if isinstance(w.definition, dict) else 0,
            "numbers": sorted(numbers.get(w.id, [])),
            "runs": int(run_counts.get(w.id, 0)),
        }
        for w in rows
    ]
    return render(request, "workflow_list.html", {"items": items}, viewer=viewer)


@router.get("/workflows/new")
async def new_page(request: Request, viewer: ViewerDep) -> Response:
    ctx = _editor_context("Receptionist", _example())
    ctx.update(row=None, warnings=[])
    return render(request, "workflow_form.html", ctx, viewer=viewer)


def _submitted(form: Any) -> tuple[str, str, dict[str, Any] | None, str, str]:
    """(mode, name, definition or None, json text, json error)."""
    mode = "json" if form.get("mode") == "json" else "form"
    name = str(form.get("name") or "")
    base, _ = parse_json_definition(str(form.get("base_json") or "{}"))
    json_text = str(form.get("definition_json") or "")
    if mode == "json":
        definition, error = parse_json_definition(json_text)
        return mode, name, definition, json_text, error
    return mode, name, merge_structured(form, base or {}), json_text, ""


async def _save(request: Request, viewer: Viewer, svc: Services, row: Workflow | None) -> Response:
    form = await request.form()
    mode, name, definition, json_text, json_error = _submitted(form)
    if definition is None:
        base, _ = parse_json_definition(str(form.get("base_json") or "{}"))
        ctx = _editor_context(name, base or {}, json_text=json_text, json_error=json_error, mode="json")
        ctx.update(row=row, warnings=[])
        return render(request, "workflow_form.html", ctx, viewer=viewer, status_code=422)
    errors, _warnings = _check(definition)
    if not errors:
        try:
            if row is None:
                wf_id = await actions.create_workflow(svc, viewer.org, name, definition)
            else:
                await actions.update_workflow(svc, viewer.org, row.id, name, definition)
                wf_id = row.id
        except FormErrors as e:
            if e.status_code == 404:
                raise PageNotFound("workflow") from None
            field_errors = {k: v for k, v in e.fields.items() if k != "definition"}
            if "definition" in e.fields:
                errors = [{"loc": "", "msg": e.fields["definition"]}]
            ctx = _editor_context(
                name,
                definition,
                json_text=json_text if mode == "json" else None,
                errors=errors,
                field_errors=field_errors,
                mode=mode,
            )
            ctx["general_errors"] += e.messages
            ctx.update(row=row, warnings=[])
            return render(request, "workflow_form.html", ctx, viewer=viewer, status_code=e.status_code)
        return see_other(request, f"/workflows/{wf_id}", "Workflow saved.")
    ctx = _editor_context(name, definition, json_text=json_text if mode == "json" else None, errors=errors, mode=mode)
    ctx.update(row=row, warnings=[])
    return render(request, "workflow_form.html", ctx, viewer=viewer, status_code=422)


@router.post("/workflows")
async def create(request: Request, viewer: PostViewerDep, svc: ServicesDep) -> Response:
    return await _save(request, viewer, svc, None)


@router.get("/workflows/{workflow_id}")
async def edit_page(request: Request, workflow_id: str, viewer: ViewerDep, svc: ServicesDep) -> Response:
    async with svc.db.session() as s:
        row = await owned(s, Workflow, workflow_id, viewer.org.id, "workflow")
        used_by = (
            await s.execute(
                select(PhoneNumber.address, TelephonyConfiguration.id, TelephonyConfiguration.name)
                .join(TelephonyConfiguration, TelephonyConfiguration.id == PhoneNumber.telephony_configuration_id)
                .where(PhoneNumber.inbound_workflow_id == row.id, PhoneNumber.organization_id == viewer.org.id)
                .order_by(PhoneNumber.address)
            )
        ).all()
    definition = row.definition if isinstance(row.definition, dict) else {}
    _errors, warnings = _check(definition)
    ctx = _editor_context(row.name, definition)
    ctx.update(row=row, warnings=warnings, used_by=used_by)
    return render(request, "workflow_form.html", ctx, viewer=viewer)


@router.post("/workflows/{workflow_id}")
async def update(request: Request, workflow_id: str, viewer: PostViewerDep, svc: ServicesDep) -> Response:
    async with svc.db.session() as s:
        row = await owned(s, Workflow, workflow_id, viewer.org.id, "workflow")
    return await _save(request, viewer, svc, row)


@router.post("/workflows/{workflow_id}/delete")
async def delete(request: Request, workflow_id: str, viewer: PostViewerDep, svc: ServicesDep) -> Response:
    async with svc.db.session() as s:
        row = await owned(s, Workflow, workflow_id, viewer.org.id, "workflow")
    try:
        await actions.delete_workflow(svc, viewer.org, row.id)
    except FormErrors:
        raise PageNotFound("workflow") from None
    return see_other(request, "/workflows", f"Workflow '{row.name}' deleted.")
