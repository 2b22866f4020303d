"""Recordings cannot fill the disk (item 5 of issue 12): a per-organization disk quota, and a
retention period after which a sweep deletes old recordings (the run keeps a note)."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.fuzz.ari_gen import Gen
from tests.fuzz.ari_rig import GOOD_EXTEN, AriRig
from vr3ai.core.orgs import create_organization
from vr3ai.core.recordings import recordings_dir, sweep_recordings
from vr3ai.db.models import Organization, WorkflowRun
from vr3ai.db.session import Database
from vr3ai.settings import Settings

RECORDING_BYTES = 600_000


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[AriRig]:
    rig = await AriRig.build(tmp_path, 99, fail_rate=0.0)
    rig.client.yield_rate = 0.0
    rig.force_agent_mode = "quick"
    rig.asterisk_is_fast(random.Random(7), connect_rate=1.0, refuse_rate=0.0)
    connect = rig.media.connect

    def connect_and_record(channel_id: str) -> Any:
        # The fake media session writes no WAV; make every recorded call leave a 600 kB file.
        session = connect(channel_id)
        if session is not None and session.recording_path is not None:
            Path(session.recording_path).write_bytes(b"\0" * RECORDING_BYTES)
        return session

    rig.media.connect = connect_and_record  # type: ignore[method-assign]
    try:
        yield rig
    finally:
        await rig.conn.stop("test over")
        await rig.services.db.dispose()


async def one_call(rig: AriRig, n: int) -> WorkflowRun:
    cid = f"1795663575.{n}"
    rig.feed(Gen(random.Random(n)).stasis_start(cid, exten=GOOD_EXTEN, state="Ring"))
    task = rig.conn.calls[cid].task
    assert task is not None
    await task
    [run] = [r for r in await rig.run_rows() if r.call_id == cid]
    return run


async def test_recording_quota_stops_recording_not_the_call(rig: AriRig) -> None:
    async with rig.services.db.session() as s, s.begin():
        await s.execute(update(Organization).where(Organization.id == rig.org_id).values(max_recording_mb=1))
    first, second = await one_call(rig, 1), await one_call(rig, 2)
    for run in (first, second):
        assert run.status == "completed" and run.recording_path
        assert run.recording_bytes == RECORDING_BYTES == os.stat(run.recording_path).st_size
    # 1.2 MB used of 1 MB: the next call is answered and handled, but not recorded, and says why.
    third = await one_call(rig, 3)
    assert third.status == "completed", third.end_reason
    assert third.recording_path is None and third.recording_bytes == 0
    notes = [e["message"] for e in third.events if e["level"] == "warning"]
    assert any("not recorded" in m and "max_recording_mb" in m for m in notes), third.events
    assert len(list(recordings_dir(rig.services.settings.storage.data_dir).glob("*.wav"))) == 2
    assert await rig.invariants() == []


async def test_retention_sweep_deletes_old_recordings_and_notes_it(db: Database, tmp_path: Path) -> None:
    org, _ = await create_organization(db, "Acme")
    rec = tmp_path / "recordings"
    rec.mkdir()
    outside = tmp_path / "elsewhere.wav"
    outside.write_bytes(b"keep")
    now = datetime.now(UTC)
    rows = {
        "old": (now - timedelta(days=40), rec / "old.wav"),
        "recent": (now - timedelta(days=2), rec / "recent.wav"),
        "outside": (now - timedelta(days=40), outside),
    }
    async with db.session() as s, s.begin():
        for name, (ended, path) in rows.items():
            if path.parent == rec:
                path.write_bytes(b"\0" * 1000)
            s.add(
                WorkflowRun(
                    organization_id=org.id,
                    direction="inbound",
                    status="completed",
                    context={"name": name},
                    started_at=ended,
                    ended_at=ended,
                    recording_path=str(path),
                    recording_bytes=1000,
                    events=[{"level": "info", "message": "earlier", "at_ms": 1}],
                )
            )
    assert await sweep_recordings(db, tmp_path, 30) == 2
    assert not (rec / "old.wav").exists() and (rec / "recent.wav").exists()
    assert outside.exists()  # never deletes outside the recordings folder, whatever the row says
    async with db.session() as s:
        runs = {r.context["name"]: r for r in (await s.scalars(select(WorkflowRun))).all()}
    for name in ("old", "outside"):
        run = runs[name]
        assert run.recording_path is None and run.recording_bytes == 0
        assert run.events[0]["message"] == "earlier"
        assert "retention period of 30 days" in run.events[-1]["message"]
    assert runs["recent"].recording_path == str(rec / "recent.wav")
    assert await sweep_recordings(db, tmp_path, 30) == 0  # idempotent
    assert await sweep_recordings(db, tmp_path, 0) == 0  # 0 = keep forever


def test_retention_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VR3AI_RECORDING_RETENTION_DAYS", "30")
    assert Settings.from_env().storage.recording_retention_days == 30
