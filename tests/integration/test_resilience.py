"""Load-shaped and fault-shaped behaviour through the real Asterisk: quota under a burst, repeated
Asterisk restarts, and secrets kept out of every log line of a full call."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from tests.harness import AsteriskLab
from tests.integration.agents import AgentRecorder
from tests.integration.conftest import SIMPLE_WORKFLOW
from tests.integration.platform import running_platform
from tests.integration.test_inbound import assert_no_leftovers

pytestmark = pytest.mark.asterisk


async def test_twenty_simultaneous_calls_one_slot(
    lab: AsteriskLab, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = AgentRecorder()
    caplog.set_level(logging.INFO)
    async with running_platform(tmp_path, port=lab.media_port, agent_factory=recorder, max_concurrent_calls=1) as p:
        wf_id, _ = await p.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab)
        calls = await asyncio.gather(*(lab.call("8000", hold_s=3, record=False) for _ in range(20)))
        await asyncio.gather(*(c.wait_hangup(15) for c in calls))
        deadline = time.monotonic() + 15
        runs: list[dict] = []
        while time.monotonic() < deadline:
            runs = (await p.get(f"/api/v1/workflow-runs?workflow_id={wf_id}&limit=100"))["items"]
            if len(runs) == 20 and all(r["status"] != "running" and r["status"] != "initialized" for r in runs):
                break
            await asyncio.sleep(0.1)
        statuses = sorted(r["status"] for r in runs)
        assert len(runs) == 20, statuses
        talked = [r for r in runs if r["status"] == "completed"]
        refused = [r for r in runs if r["status"] == "failed"]
        assert len(talked) == 1, statuses
        assert len(refused) == 19
        assert all(r["end_reason"].startswith("quota: concurrent call limit reached") for r in refused)
        assert len(recorder.agents) == 1  # exactly one call reached an agent
        me = await p.get("/api/v1/organizations/me")
        assert me["quota"]["active_calls"] == 0
        refusals = [r for r in caplog.records if "concurrent call limit reached" in r.getMessage()]
        assert len(refusals) == 19
    await assert_no_leftovers(lab)


async def test_asterisk_restarted_ten_times(lab: AsteriskLab, tmp_path: Path) -> None:
    recorder = AgentRecorder()
    reconnects: list[float] = []
    async with running_platform(tmp_path, port=lab.media_port, agent_factory=recorder) as p:
        wf_id, cfg_id = await p.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab)
        for i in range(10):
            with_call = i % 2 == 1
            cut = None
            if with_call:
                cut = await lab.call("8000", hold_s=60, record=False)
                await cut.wait_answered(5)
                await p.wait_run(lambda r: r["status"] == "running", workflow_id=wf_id)
            t0 = time.monotonic()
            await asyncio.to_thread(lab.restart)
            await p.wait_state(cfg_id, "connected", timeout_s=20)
            reconnects.append(time.monotonic() - t0)
            if with_call:
                run = await p.wait_run(workflow_id=wf_id)
                assert run["status"] == "failed", run["end_reason"]
            await lab.warm_up()
            nxt = await lab.call("8000", hold_s=1, record=False)
            await nxt.wait_hangup(10)
            run = await p.wait_run(lambda r: r["status"] == "completed", workflow_id=wf_id)
            assert run["end_reason"] == "caller hung up"
        items = (await p.get(f"/api/v1/workflow-runs?workflow_id={wf_id}&limit=100"))["items"]
        assert not [r for r in items if r["status"] in ("running", "initialized")]
    await assert_no_leftovers(lab)
    print(f"reconnect after restart (s): {[round(x, 2) for x in reconnects]}")


async def test_no_secret_in_any_log_line(lab: AsteriskLab, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from vr3ai.logs import JsonFormatter

    caplog.set_level(logging.DEBUG)
    recorder = AgentRecorder()
    async with running_platform(tmp_path, port=lab.media_port, agent_factory=recorder) as p:
        wf_id, cfg_id = await p.setup_inbound(
            definition=SIMPLE_WORKFLOW,
            lab=lab,
            ws_client="vr3ai_auth",
            media_username="vr3ai-media",
            media_password="media-secret",
        )
        call = await lab.call("8000", hold_s=2, dtmf="1")
        await call.wait_hangup(10)
        await p.wait_run(workflow_id=wf_id)
        # A failing configuration produces error logs too: they must not carry the password either.
        await p.http.patch(f"/api/v1/telephony-configurations/{cfg_id}", json={"app_password": "wrong-Pa55word"})
        await p.wait_state(cfg_id, "failed")
        key = p.api_key
    fmt = JsonFormatter()
    text = "\n".join(fmt.format(r) for r in caplog.records)
    assert "call ended" in text
    for secret in ("vr3ai-secret", "media-secret", "wrong-Pa55word", key):
        assert secret not in text, secret
