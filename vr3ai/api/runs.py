"""``/workflow-runs``: call history — status, transcript, metrics, recording."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from vr3ai.api.deps import OrgDep, ServicesDep, Timestamp, get_owned, matches_nothing
from vr3ai.api.errors import ApiRoute
from vr3ai.db.models import WorkflowRun

router = APIRouter(tags=["workflow-runs"], route_class=ApiRoute)

RunStatus = Literal["initialized", "running", "completed", "failed", "busy", "no_answer"]


class TranscriptEntry(BaseModel):
    # Written by the voice pipeline; tolerate extra keys it may add later.
    model_config = ConfigDict(extra="allow")
    role: str | None = None
    text: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None


class RunSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    workflow_id: str | None
    telephony_configuration_id: str | None
    direction: str
    status: str
    context: dict[str, Any]
    started_at: Timestamp | None
    answered_at: Timestamp | None
    ended_at: Timestamp | None
    end_reason: str | None
    billed_seconds: int
    created_at: Timestamp


class RunOut(RunSummary):
    variables: dict[str, Any]
    transcript: list[TranscriptEntry]
    metrics: list[Any]
    events: list[Any]
    has_recording: bool = False


class RunList(BaseModel):
    items: list[RunSummary]
    limit: int
    offset: int


def _recording_file(run: WorkflowRun, data_dir: Path) -> Path | None:
    if not run.recording_path:
        return None
    path = Path(run.recording_path)
    if not path.is_absolute():
        path = data_dir / path
    return path if path.is_file() else None


@router.get("/workflow-runs", response_model=RunList)
async def list_runs(
    org: OrgDep,
    svc: ServicesDep,
    workflow_id: str | None = None,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    # Bounded by what SQL can take (64-bit): a larger offset used to be a 500 from the driver.
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> RunList:
    """Newest first."""
    if workflow_id is not None and matches_nothing(workflow_id):
        return RunList(items=[], limit=limit, offset=offset)
    q = select(WorkflowRun).where(WorkflowRun.organization_id == org.id)
    if workflow_id is not None:
        q = q.where(WorkflowRun.workflow_id == workflow_id)
    if status is not None:
        q = q.where(WorkflowRun.status == status)
    q = q.order_by(WorkflowRun.created_at.desc(), WorkflowRun.id.desc()).limit(limit).offset(offset)
    async with svc.db.session() as s:
        rows = (await s.scalars(q)).all()
    return RunList(items=[RunSummary.model_validate(r) for r in rows], limit=limit, offset=offset)


@router.get("/workflow-runs/{run_id}", response_model=RunOut)
async def get_run(run_id: str, org: OrgDep, svc: ServicesDep) -> RunOut:
    async with svc.db.session() as s:
        run = await get_owned(s, WorkflowRun, run_id, org.id, "workflow run")
    out = RunOut.model_validate(run)
    out.has_recording = _recording_file(run, svc.settings.storage.data_dir) is not None
    return out


@router.get(
    "/workflow-runs/{run_id}/recording",
    response_class=FileResponse,
    responses={200: {"content": {"audio/wav": {}}, "description": "The call recording (WAV)."}},
)
async def get_recording(run_id: str, org: OrgDep, svc: ServicesDep) -> FileResponse:
    async with svc.db.session() as s:
        run = await get_owned(s, WorkflowRun, run_id, org.id, "workflow run")
    path = _recording_file(run, svc.settings.storage.data_dir)
    if path is None:
        raise HTTPException(404, "this run has no recording")
    return FileResponse(path, media_type="audio/wav", filename=f"{run.id}.wav")
