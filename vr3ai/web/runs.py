"""``/runs``: call history with filters, and one run's page (status, context, transcript, recording,
per-turn latency, warnings and errors). A run that is still going refreshes itself."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from vr3ai.api import runs as api_runs
from vr3ai.db.models import FINAL_STATUSES, RUN_STATUSES, TelephonyConfiguration, Workflow, WorkflowRun
from vr3ai.services import Services
from vr3ai.web.actions import FormErrors, call
from vr3ai.web.auth import Viewer, get_services, require_viewer
from vr3ai.web.common import org_workflows, owned
from vr3ai.web.errors import PageNotFound
from vr3ai.web.render import WebRoute, render

router = APIRouter(route_class=WebRoute, include_in_schema=False)
ViewerDep = Annotated[Viewer, Depends(require_viewer)]
ServicesDep = Annotated[Services, Depends(get_services)]
PAGE_SIZE = 50
_PREFERRED_METRIC_COLUMNS = ("turn", "node", "stt_ms", "llm_ms", "responder_ms", "tts_ms", "first_audio_ms", "total_ms")


@router.get("/runs")
async def list_page(
    request: Request, viewer: ViewerDep, svc: ServicesDep, workflow_id: str = "", status: str = "", page: int = 1
) -> Response:
    page = max(page, 1)
    q = select(WorkflowRun).where(WorkflowRun.organization_id == viewer.org.id)
    if workflow_id:
        q = q.where(WorkflowRun.workflow_id == workflow_id)
    if status in RUN_STATUSES:
        q = q.where(WorkflowRun.status == status)
    q = q.order_by(WorkflowRun.created_at.desc(), WorkflowRun.id.desc()).limit(PAGE_SIZE + 1)
    q = q.offset((page - 1) * PAGE_SIZE)
    async with svc.db.session() as s:
        rows = list((await s.scalars(q)).all())
        workflows = await org_workflows(s, viewer.org.id)
    has_more = len(rows) > PAGE_SIZE
    return render(
        request,
        "run_list.html",
        {
            "runs": rows[:PAGE_SIZE],
            "workflows": workflows,
            "workflow_names": {w.id: w.name for w in workflows},
            "statuses": RUN_STATUSES,
            "filter_workflow": workflow_id,
            "filter_status": status if status in RUN_STATUSES else "",
            "page": page,
            "has_more": has_more,
            "any_filter": bool(workflow_id or status),
        },
        viewer=viewer,
    )


def _split_metrics(metrics: list[Any]) -> tuple[list[Any], list[tuple[str, str]]]:
    """Per-turn rows for the latency table, and the call-level summary as (label, text) pairs.

    The ARI call handler appends one entry per call (``call_timings_ms`` dict, ``node_path``
    list) after the agent's turns; as a table row its nested values squeezed into one narrow cell
    and stretched the row. Any entry holding a dict or list is such a summary, whatever its keys."""
    turns: list[Any] = []
    summary: list[tuple[str, str]] = []
    for m in metrics:
        if not (isinstance(m, dict) and any(isinstance(v, (dict, list)) for v in m.values())):
            turns.append(m)
            continue
        for key, value in m.items():
            label = key.removesuffix("_ms").replace("_", " ").capitalize()
            unit = " ms" if key.endswith("_ms") else ""
            if isinstance(value, dict):
                text = " · ".join(f"{k.replace('_', ' ')} {_metric_text(v)}{unit}" for k, v in value.items())
            elif isinstance(value, list):
                text = " → ".join(str(v) for v in value)
            else:
                text = f"{_metric_text(value)}{unit}"
            summary.append((label, text))
    return turns, summary


def _metric_text(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, float) else str(value)


def _metric_columns(metrics: list[Any]) -> list[str]:
    seen: list[str] = []
    for m in metrics:
        if isinstance(m, dict):
            for k in m:
                if k not in seen:
                    seen.append(k)
    preferred = [c for c in _PREFERRED_METRIC_COLUMNS if c in seen]
    return preferred + [c for c in seen if c not in preferred]


@router.get("/runs/{run_id}")
async def detail_page(request: Request, run_id: str, viewer: ViewerDep, svc: ServicesDep) -> Response:
    try:
        run = await call(api_runs.get_run(run_id, viewer.org, svc))
    except FormErrors:
        raise PageNotFound("run") from None
    async with svc.db.session() as s:
        workflow = await s.get(Workflow, run.workflow_id) if run.workflow_id else None
        config = (
            await s.get(TelephonyConfiguration, run.telephony_configuration_id)
            if run.telephony_configuration_id
            else None
        )
    metrics, call_summary = _split_metrics(list(run.metrics or []))
    dict_metrics = all(isinstance(m, dict) for m in metrics)
    events = [e for e in run.events or []]
    return render(
        request,
        "run_detail.html",
        {
            "run": run,
            "workflow": workflow,
            "config": config,
            "final": run.status in FINAL_STATUSES,
            "transcript": [t.model_dump() for t in run.transcript],
            "metrics": metrics,
            "call_summary": call_summary,
            "metric_columns": _metric_columns(metrics) if dict_metrics else [],
            "events": events,
            "problems": [e for e in events if isinstance(e, dict) and e.get("level") in ("warning", "error")],
        },
        viewer=viewer,
    )


@router.get("/runs/{run_id}/status.json")
async def status_json(run_id: str, viewer: ViewerDep, svc: ServicesDep) -> Response:
    async with svc.db.session() as s:
        run = await owned(s, WorkflowRun, run_id, viewer.org.id, "run")
    return JSONResponse(
        {
            "status": run.status,
            "final": run.status in FINAL_STATUSES,
            "transcript_lines": len(run.transcript or []),
            "events": len(run.events or []),
        },
        headers={"Cache-Control": "no-store"},
    )


@router.get("/runs/{run_id}/recording")
async def recording(run_id: str, viewer: ViewerDep, svc: ServicesDep) -> Response:
    # The API's own route: same organization check, same file resolution, WAV with range support.
    try:
        response: Response = await call(api_runs.get_recording(run_id, viewer.org, svc))
    except FormErrors:
        raise PageNotFound("recording") from None
    response.headers["Cache-Control"] = "private, no-store"
    return response
