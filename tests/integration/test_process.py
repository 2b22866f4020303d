"""The platform as an operator runs it (`vr3ai serve` in its own process), killed and stopped."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.harness import AsteriskLab
from tests.integration.conftest import SIMPLE_WORKFLOW
from tests.integration.platform import LAB_MEDIA_CREDENTIALS

pytestmark = pytest.mark.asterisk
ROOT = Path(__file__).resolve().parents[2]


def _env(data_dir: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        VR3AI_DATA_DIR=str(data_dir),
        VR3AI_PORT=str(port),
        VR3AI_HOST="127.0.0.1",
        VR3AI_VOICE="0",
        VR3AI_AGENT_FACTORY="tests.integration.agents:AgentRecorder",
        VR3AI_LOG_JSON="1",
        PYTHONPATH=str(ROOT),
    )
    if os.geteuid() == 0:
        # scripts/test.sh runs the suite as root; `vr3ai serve` refuses that unless told.
        env["VR3AI_ALLOW_ROOT"] = "1"
    return env


@asynccontextmanager
async def serve(data_dir: Path, port: int, log: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once; the child is what we test
            [sys.executable, "-m", "vr3ai", "serve"], env=_env(data_dir, port), cwd=ROOT, stdout=out, stderr=out
        )
    try:
        async with httpx.AsyncClient() as c:
            for _ in range(300):
                try:
                    await c.get(f"http://127.0.0.1:{port}/openapi.json")
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _org(data_dir: Path, port: int) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "vr3ai", "org", "create", "Proc org"],
        env=_env(data_dir, port),
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["api_key"]


async def _setup(c: httpx.AsyncClient, lab: AsteriskLab) -> tuple[str, str]:
    wf = (await c.post("/api/v1/workflows", json={"name": "w", "definition": SIMPLE_WORKFLOW})).json()
    cfg = (
        await c.post(
            "/api/v1/telephony-configurations",
            json={
                "name": "lab",
                "provider": "ari",
                "ari_endpoint_url": lab.ari_url.removesuffix("/ari"),
                "stasis_app_name": "vr3ai",
                "app_password": "vr3ai-secret",
                "websocket_client_name": "vr3ai",
                **LAB_MEDIA_CREDENTIALS,
            },
        )
    ).json()
    r = await c.post(
        f"/api/v1/telephony-configurations/{cfg['id']}/phone-numbers",
        json={"address": "8000", "inbound_workflow_id": wf["id"]},
    )
    assert r.status_code == 201, r.text
    await _wait_connected(c, cfg["id"])
    return wf["id"], cfg["id"]


async def _wait_connected(c: httpx.AsyncClient, cfg_id: str, timeout_s: float = 15) -> dict:
    deadline = time.monotonic() + timeout_s
    st: dict = {}
    while time.monotonic() < deadline:
        r = await c.get(f"/api/v1/telephony-configurations/{cfg_id}/status")
        if r.status_code == 200:
            st = r.json()
            if st["ari"]["state"] == "connected":
                return st
        await asyncio.sleep(0.05)
    raise AssertionError(f"not connected: {st}")


async def _runs(c: httpx.AsyncClient) -> list[dict]:
    return (await c.get("/api/v1/workflow-runs")).json()["items"]


async def _wait_run_status(c: httpx.AsyncClient, status: str, timeout_s: float = 10) -> dict:
    deadline = time.monotonic() + timeout_s
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = await _runs(c)
        if runs and runs[0]["status"] == status:
            return (await c.get(f"/api/v1/workflow-runs/{runs[0]['id']}")).json()
        await asyncio.sleep(0.05)
    raise AssertionError(f"run never reached {status}: {runs[:1]}")


Serving = tuple[subprocess.Popen[bytes], int, Path, dict[str, str]]


@asynccontextmanager
async def _serving_a_call(lab: AsteriskLab, tmp_path: Path) -> AsyncIterator[Serving]:
    """``vr3ai serve`` in a subprocess, set up, with one call up and its run ``running``: yields
    (process, port, log path, API headers) while the call is up."""
    port = lab.media_port
    key = _org(tmp_path, port)
    log = tmp_path / "serve.log"
    headers = {"Authorization": f"Bearer {key}"}
    async with serve(tmp_path, port, log) as proc:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as c:
            await _setup(c, lab)
            call = await lab.call("8000", hold_s=60)
            await call.wait_answered(5)
            await _wait_run_status(c, "running")
        yield proc, port, log, headers


async def test_sigkill_mid_call_then_restart_cleans_up(clean_asterisk_lab: AsteriskLab, tmp_path: Path) -> None:
    lab = clean_asterisk_lab
    async with _serving_a_call(lab, tmp_path) as (proc, port, log, headers):
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    # Our bridge is still in Asterisk; the caller may still be in it.
    assert any(b["id"].startswith("vr3b-") for b in await lab.ari_bridges())
    async with serve(tmp_path, port, log):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as c:
            cfg_id = (await c.get("/api/v1/telephony-configurations")).json()["items"][0]["id"]
            status = await _wait_connected(c, cfg_id)
            leftovers = await lab.wait_no_channels(timeout_s=5)
            assert leftovers == [], leftovers
            assert await lab.ari_bridges() == []
            run = (await c.get(f"/api/v1/workflow-runs/{(await _runs(c))[0]['id']}")).json()
            assert run["status"] == "failed"
            assert "VR3 AI stopped while the call was up" in run["end_reason"], run["end_reason"]
            me = (await c.get("/api/v1/organizations/me")).json()
            assert me["quota"]["active_calls"] == 0
            reconcile = (await c.get(f"/api/v1/telephony-configurations/{cfg_id}/status")).json()["reconcile"]
            assert reconcile["removed_bridges"] >= 1, (status, reconcile)
            # And the platform takes the next call.
            call = await lab.call("8000", hold_s=2)
            await call.wait_hangup(10)
            assert (await _wait_run_status(c, "completed"))["end_reason"] == "caller hung up"


async def test_sigterm_ends_calls_cleanly(clean_asterisk_lab: AsteriskLab, tmp_path: Path) -> None:
    lab = clean_asterisk_lab
    async with _serving_a_call(lab, tmp_path) as (proc, port, log, headers):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert await lab.wait_no_channels(timeout_s=5) == []
    assert await lab.ari_bridges() == []
    async with serve(tmp_path, port, log):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as c:
            run = (await c.get(f"/api/v1/workflow-runs/{(await _runs(c))[0]['id']}")).json()
            assert run["status"] == "failed"
            assert run["end_reason"] == "VR3 AI is shutting down", run["end_reason"]
            assert run["ended_at"]
