"""Call recordings on disk: the per-organization disk quota and the retention sweep.

Recordings are WAV files under ``<data dir>/recordings`` (one per run). Two things keep them from
growing without bound:

* **Quota** (``organizations.max_recording_mb``): before a call is bridged, the organization's
  recorded bytes (``workflow_runs.recording_bytes``, written when a run finishes) are summed; at or
  over the quota the call is still answered and handled, only not recorded, and its run carries a
  warning event saying why. A call in progress is not cut off, so the quota can be exceeded by the
  calls that were already recording when it was reached (at most ``max_concurrent_calls`` of them).
* **Retention** (``VR3AI_RECORDING_RETENTION_DAYS``): a periodic sweep deletes recordings of runs
  that ended longer ago than that; the run keeps its transcript and gets an event noting the
  deletion, so "no recording" is explained rather than looking like a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from vr3ai.db.models import FINAL_STATUSES, Organization, WorkflowRun
from vr3ai.db.session import Database

log = logging.getLogger("vr3ai.recordings")

MB = 1_000_000
SWEEP_BATCH = 200


def recordings_dir(data_dir: str | os.PathLike[str]) -> Path:
    return (Path(data_dir) / "recordings").resolve()


async def recording_bytes_used(s: AsyncSession, organization_id: str) -> int:
    used = await s.scalar(
        select(func.coalesce(func.sum(WorkflowRun.recording_bytes), 0)).where(
            WorkflowRun.organization_id == organization_id, WorkflowRun.recording_path.is_not(None)
        )
    )
    return int(used or 0)


async def recording_refusal(db: Database, organization_id: str) -> str | None:
    """None if the organization may record another call; otherwise the sentence for the run's event."""
    async with db.session() as s:
        quota_mb = await s.scalar(select(Organization.max_recording_mb).where(Organization.id == organization_id))
        if quota_mb is None:
            return None
        used = await recording_bytes_used(s, organization_id)
    if used < int(quota_mb) * MB:
        return None
    return (
        f"call not recorded: the organization's recordings use {used / MB:.1f} MB of its {quota_mb} MB "
        "(max_recording_mb); delete old runs' recordings or ask the operator to raise the limit"
    )


def file_size(path: str | os.PathLike[str] | None) -> int:
    if not path:
        return 0
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


async def sweep_recordings(
    db: Database, data_dir: str | os.PathLike[str], retention_days: float, *, now: datetime | None = None
) -> int:
    """Delete recordings of runs that ended more than ``retention_days`` ago; returns how many."""
    if retention_days <= 0:
        return 0
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    root = recordings_dir(data_dir)
    deleted = 0
    note = {
        "level": "info",
        "message": f"recording deleted: older than the retention period of {retention_days:g} days "
        "(VR3AI_RECORDING_RETENTION_DAYS)",
        "at_ms": None,
    }
    while True:
        async with db.session() as s, s.begin():
            runs = (
                await s.scalars(
                    select(WorkflowRun)
                    .where(
                        WorkflowRun.recording_path.is_not(None),
                        WorkflowRun.status.in_(FINAL_STATUSES),
                        func.coalesce(WorkflowRun.ended_at, WorkflowRun.created_at) < cutoff,
                    )
                    .limit(SWEEP_BATCH)
                )
            ).all()
            await asyncio.to_thread(_delete_files, [run.recording_path or "" for run in runs], data_dir, root)
            for run in runs:
                await s.execute(
                    update(WorkflowRun)
                    .where(WorkflowRun.id == run.id)
                    .values(recording_path=None, recording_bytes=0, events=[*(run.events or []), note])
                )
            deleted += len(runs)
        if len(runs) < SWEEP_BATCH:
            break
    if deleted:
        log.info("deleted recordings past their retention period", extra={"recordings": deleted})
    return deleted


def _delete_files(paths: list[str], data_dir: str | os.PathLike[str], root: Path) -> None:
    for raw in paths:
        path = Path(raw)
        if not path.is_absolute():
            path = Path(data_dir) / path
        # Only ever delete inside our recordings folder, whatever the column says.
        if path.resolve().parent == root:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


async def sweep_forever(db: Database, data_dir: str | os.PathLike[str], retention_days: float, every_s: float) -> None:
    """The app's background task: one sweep now, then one every ``every_s`` seconds."""
    while True:
        try:
            await sweep_recordings(db, data_dir, retention_days)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("recording retention sweep failed; retrying at the next interval")
        await asyncio.sleep(every_s)
