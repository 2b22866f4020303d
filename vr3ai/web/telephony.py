"""``/telephony-configurations``: the guide's pages — list, Add configuration, a configuration's page
with its live ARI state, Phone numbers, Asterisk setup snippets, diagnostics and a test call."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import func, select

from vr3ai.db.models import PhoneNumber, TelephonyConfiguration, Workflow
from vr3ai.services import Services
from vr3ai.telephony.ari import snippets
from vr3ai.telephony.registry import DEFAULT_PROVIDER, PROVIDERS
from vr3ai.web import actions
from vr3ai.web.actions import FormErrors
from vr3ai.web.auth import Viewer, get_services, require_viewer, require_viewer_post
from vr3ai.web.common import live_status, org_workflows, owned, see_other
from vr3ai.web.errors import PageNotFound
from vr3ai.web.forms import ConfigForm, config_payload
from vr3ai.web.render import WebRoute, render

log = logging.getLogger("vr3ai.web.telephony")
router = APIRouter(route_class=WebRoute, include_in_schema=False)

ViewerDep = Annotated[Viewer, Depends(require_viewer)]
PostViewerDep = Annotated[Viewer, Depends(require_viewer_post)]
ServicesDep = Annotated[Services, Depends(get_services)]
WHAT = "telephony configuration"


@router.get("/telephony-configurations")
async def list_page(request: Request, viewer: ViewerDep, svc: ServicesDep) -> Response:
    async with svc.db.session() as s:
        rows = list(
            (
                await s.scalars(
                    select(TelephonyConfiguration)
                    .where(TelephonyConfiguration.organization_id == viewer.org.id)
                    .order_by(TelephonyConfiguration.created_at, TelephonyConfiguration.id)
                )
            ).all()
        )
        counts = dict(
            (
                await s.execute(
                    select(PhoneNumber.telephony_configuration_id, func.count())
                    .where(PhoneNumber.organization_id == viewer.org.id)
                    .group_by(PhoneNumber.telephony_configuration_id)
                )
            ).all()
        )
    items = [
        {"row": r, "numbers": int(counts.get(r.id, 0)), "status": (await live_status(svc, r.id))["ari"]} for r in rows
    ]
    return render(
        request,
        "telephony_list.html",
        {"items": items, "telephony_running": svc.telephony is not None, "providers": PROVIDERS},
        viewer=viewer,
    )


@router.get("/telephony-configurations/new")
async def new_page(request: Request, viewer: ViewerDep, provider: str = "") -> Response:
    spec = PROVIDERS.get(provider)
    if spec is None:
        return render(request, "telephony_provider.html", {"providers": PROVIDERS}, viewer=viewer)
    return render(
        request,
        "telephony_form.html",
        {"spec": spec, "form": ConfigForm.blank(), "errors": FormErrors(), "row": None},
        viewer=viewer,
    )


@router.post("/telephony-configurations")
async def create(request: Request, viewer: PostViewerDep, svc: ServicesDep) -> Response:
    form = await request.form()
    provider = form.get("provider") if isinstance(form.get("provider"), str) else DEFAULT_PROVIDER.key
    spec = PROVIDERS.get(str(provider)) or DEFAULT_PROVIDER
    try:
        await actions.create_configuration(svc, viewer.org, config_payload(form, creating=True))
    except FormErrors as errors:
        return render(
            request,
            "telephony_form.html",
            {
                "spec": spec,
                "form": ConfigForm.from_form(form),
                "errors": errors,
                "row": None,
                "password_again": bool(form.get("app_password")),
            },
            viewer=viewer,
            status_code=errors.status_code,
        )
    return see_other(
        request,
        "/telephony-configurations",
        "Configuration saved. Open it to add your extensions as phone numbers.",
    )


async def _detail_context(svc: Services, viewer: Viewer, row: TelephonyConfiguration) -> dict[str, Any]:
    async with svc.db.session() as s:
        numbers = list(
            (
                await s.scalars(
                    select(PhoneNumber)
                    .where(
                        PhoneNumber.telephony_configuration_id == row.id, PhoneNumber.organization_id == viewer.org.id
                    )
                    .order_by(PhoneNumber.address)
                )
            ).all()
        )
        workflows = await org_workflows(s, viewer.org.id)
    # The only page that shows the media password: inside the websocket_client.conf snippet, to the
    # configuration's own organization (``owned`` checked that), never cached (render sends no-store).
    config_snippets, media_uri = snippets.configuration_snippets(
        svc.settings, svc.box, row, [n.address for n in numbers]
    )
    public_url = svc.settings.effective_public_url()
    return {
        "row": row,
        "numbers": numbers,
        "workflows": workflows,
        "workflow_names": {w.id: w.name for w in workflows},
        "status": await live_status(svc, row.id),
        "telephony_running": svc.telephony is not None,
        "snippets": config_snippets,
        "media_uri": media_uri,
        "public_url_is_loopback": snippets.is_loopback_url(public_url),
        "number_errors": {},
        "number_values": {},
        "test_call": {"errors": FormErrors(), "workflow_id": "", "to": "", "from": ""},
        "checks": None,
        "provider": PROVIDERS.get(row.provider),
    }


async def _row(svc: Services, viewer: Viewer, config_id: str) -> TelephonyConfiguration:
    async with svc.db.session() as s:
        return await owned(s, TelephonyConfiguration, config_id, viewer.org.id, WHAT)


@router.get("/telephony-configurations/{config_id}")
async def detail_page(request: Request, config_id: str, viewer: ViewerDep, svc: ServicesDep) -> Response:
    row = await _row(svc, viewer, config_id)
    return render(request, "telephony_detail.html", await _detail_context(svc, viewer, row), viewer=viewer)


@router.get("/telephony-configurations/{config_id}/status.json")
async def status_json(config_id: str, viewer: ViewerDep, svc: ServicesDep) -> Response:
    await _row(svc, viewer, config_id)
    return JSONResponse(await live_status(svc, config_id), headers={"Cache-Control": "no-store"})


@router.get("/telephony-configurations/{config_id}/edit")
async def edit_page(request: Request, config_id: str, viewer: ViewerDep) -> Response:
    svc = get_services(request)
    row = await _row(svc, viewer, config_id)
    spec = PROVIDERS.get(row.provider) or DEFAULT_PROVIDER
    return render(
        request,
        "telephony_form.html",
        {"spec": spec, "form": ConfigForm.from_row(row), "errors": FormErrors(), "row": row},
        viewer=viewer,
    )


@router.post("/telephony-configurations/{config_id}/edit")
async def update(request: Request, config_id: str, viewer: PostViewerDep, svc: ServicesDep) -> Response:
    row = await _row(svc, viewer, config_id)
    form = await request.form()
    try:
        await actions.update_configuration(svc, viewer.org, row.id, config_payload(form, creating=False))
    except FormErrors as errors:
        spec = PROVIDERS.get(row.provider) or DEFAULT_PROVIDER
        shown = ConfigForm.from_form(form)
        shown.has_app_password = bool(row.app_password_enc)
        shown.has_media_password = bool(row.media_password_enc)
        return render(
            request,
            "telephony_form.html",
            {"spec": spec, "form": shown, "errors": errors, "row": row},
            viewer=viewer,
            status_code=errors.status_code,
        )
    return see_other(request, f"/telephony-configurations/{row.id}", "Configuration saved.")


@router.post("/telephony-configurations/{config_id}/delete")
async def delete(request: Request, config_id: str, viewer: PostViewerDep, svc: ServicesDep) -> Response:
    row = await _row(svc, viewer, config_id)
    await actions.delete_configuration(svc, viewer.org, row.id)
    return see_other(request, "/telephony-configurations", f"Configuration '{row.name}' deleted.")


@router.post("/telephony-configurations/{config_id}/reconnect")
async def reconnect(request: Request, config_id: str, viewer: PostViewerDep, svc: ServicesDep) -> Response:
    row = await _row(svc, viewer, config_id)
    if svc.telephony is not None:
        # The manager restarts a listener whose app was replaced: the operator's explicit "take it back".
        await svc.telephony.config_changed(row.id)
    return see_other(request, f"/telephony-configurations/{row.id}", "Reconnecting to ARI.")


# --- phone numbers --------------------------------------------------------------------------------


def _number_data(form: Any) -> dict[str, Any]:
    address = form.get("address")
    workflow_id = form.get("inbound_workflow_id")
    return {
        "address": address if isinstance(address, str) else "",
        "inbound_workflow_id": workflow_id if isinstance(workflow_id, str) and workflow_id else None,
    }


async def _detail_with_number_error(
    request: Request,
    svc: Services,
    viewer: Viewer,
    row: TelephonyConfiguration,
    key: str,
    data: dict[str, Any],
    errors: FormErrors,
) -> Response:
    ctx = await _detail_context(svc, viewer, row)
    ctx["number_errors"] = {key: errors}
    ctx["number_values"] = {key: data}
    return render(request, "telephony_detail.html", ctx, viewer=viewer, status_code=errors.status_code)


@router.post("/telephony-configurations/{config_id}/phone-numbers")
async def add_number(request: Request, config_id: str, viewer: PostViewerDep, svc: ServicesDep) -> Response:
    row = await _row(svc, viewer, config_id)
    data = _number_data(await request.form())
    try:
        await actions.create_number(svc, viewer.org, row.id, data)
    except FormErrors as errors:
        return await _detail_with_number_error(request, svc, viewer, row, "new", data, errors)
    return see_other(
        request, f"/telephony-configurations/{row.id}#phone-numbers", f"Phone number {data['address']} added."
    )


@router.post("/telephony-configurations/{config_id}/phone-numbers/{number_id}")
async def edit_number(
    request: Request, config_id: str, number_id: str, viewer: PostViewerDep, svc: ServicesDep
) -> Response:
    row = await _row(svc, viewer, config_id)
    data = _number_data(await request.form())
    try:
        await actions.update_number(svc, viewer.org, row.id, number_id, data)
    except FormErrors as errors:
        if errors.status_code == 404:
            raise PageNotFound("phone number") from None
        return await _detail_with_number_error(request, svc, viewer, row, number_id, data, errors)
    return see_other(
        request, f"/telephony-configurations/{row.id}#phone-numbers", f"Phone number {data['address']} saved."
    )


@router.post("/telephony-configurations/{config_id}/phone-numbers/{number_id}/delete")
async def remove_number(
    request: Request, config_id: str, number_id: str, viewer: PostViewerDep, svc: ServicesDep
) -> Response:
    row = await _row(svc, viewer, config_id)
    try:
        await actions.delete_number(svc, viewer.org, row.id, number_id)
    except FormErrors:
        raise PageNotFound("phone number") from None
    return see_other(request, f"/telephony-configurations/{row.id}#phone-numbers", "Phone number removed.")


# --- diagnostics and test call --------------------------------------------------------------------


@router.post("/telephony-configurations/{config_id}/diagnostics")
async def diagnostics(request: Request, config_id: str, viewer: PostViewerDep, svc: ServicesDep) -> Response:
    from vr3ai.telephony.ari.diagnostics import run_diagnostics

    row = await _row(svc, viewer, config_id)
    try:
        checks = await run_diagnostics(svc, row.id, organization_id=viewer.org.id)
    except LookupError:
        raise PageNotFound(WHAT) from None
    ctx = await _detail_context(svc, viewer, row)
    ctx["checks"] = checks
    return render(request, "telephony_detail.html", ctx, viewer=viewer)


@router.post("/telephony-configurations/{config_id}/test-call")
async def test_call(request: Request, config_id: str, viewer: PostViewerDep, svc: ServicesDep) -> Response:
    row = await _row(svc, viewer, config_id)
    form = await request.form()
    workflow_id = str(form.get("workflow_id") or "")
    to = str(form.get("to") or "")
    from_extension = str(form.get("from") or "")
    errors = FormErrors()
    if not workflow_id:
        errors.fields["workflow_id"] = "choose the workflow the agent should run"
    else:
        async with svc.db.session() as s:
            wf = await s.scalar(
                select(Workflow.id).where(Workflow.id == workflow_id, Workflow.organization_id == viewer.org.id)
            )
        if wf is None:
            errors.fields["workflow_id"] = "no workflow with this id in your organization"
    if not errors:
        try:
            run_id = await actions.place_call(svc, viewer.org, workflow_id, row.id, to, from_extension or None)
        except FormErrors as e:
            errors = e
        else:
            return see_other(request, f"/runs/{run_id}", f"Calling {to}…")
    if "telephony_configuration_id" in errors.fields:
        errors.messages.append(errors.fields.pop("telephony_configuration_id"))
    ctx = await _detail_context(svc, viewer, row)
    ctx["test_call"] = {"errors": errors, "workflow_id": workflow_id, "to": to, "from": from_extension}
    return render(request, "telephony_detail.html", ctx, viewer=viewer, status_code=errors.status_code)
