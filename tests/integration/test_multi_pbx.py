"""More than one PBX: one organization with two Asterisk servers (two configurations answering the
same extension, each with its own workflow), and two organizations on one Asterisk telling their
calls apart by Stasis app. Two real Asterisks: the lab and a second one from the same chroot."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.harness import AsteriskLab, CallerHandle, SecondAsterisk, audio
from tests.integration.agents import AgentRecorder
from tests.integration.conftest import SIMPLE_WORKFLOW
from tests.integration.platform import RunningPlatform, running_platform
from tests.integration.test_inbound import assert_no_leftovers
from vr3ai.core.orgs import create_organization

pytestmark = pytest.mark.asterisk

OTHER_WORKFLOW = {
    "nodes": [
        {"id": "start", "type": "start", "greeting": "Hello from the other desk."},
        {"id": "bye", "type": "end", "say": "Goodbye."},
    ],
    "edges": [{"id": "e1", "from": "start", "to": "bye", "keywords": ["bye"]}],
}


async def _runs(p: RunningPlatform) -> list[dict]:
    return list((await p.get("/api/v1/workflow-runs?limit=50"))["items"])


async def _heard_agent(call: CallerHandle) -> None:
    heard = await call.recording()
    segs = audio.segments(heard)
    assert segs, f"caller on {call.lab.ari_url} heard nothing"
    tone = heard[int(segs[0].start_s * 8000) : int(segs[0].end_s * 8000)]
    assert abs(audio.dominant_freq(tone) - 440) < 15


async def test_one_organization_two_asterisk_servers(lab: AsteriskLab, lab2: SecondAsterisk, tmp_path: Path) -> None:
    recorder = AgentRecorder()
    async with running_platform(tmp_path, port=lab.media_port, agent_factory=recorder, ring_timeout_s=4,
                                public_url=f"http://127.0.0.1:{lab.media_port}") as p:
        wf_a, cfg_a = await p.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab)
        # The second server is set up from the guide alone: its own app and WebSocket client, from
        # the snippets VR3 AI generates for that configuration.
        wf_b, cfg_b = await p.setup_inbound(definition=OTHER_WORKFLOW, lab=lab2, stasis_app="branch-office",
                                            password="branch-secret", ws_client="branch-office", snippets=True)
        assert lab.ari_url != lab2.ari_url

        # Extension 8000 on the second server reaches the second configuration's workflow only...
        call_b = await lab2.call("8000", hold_s=3, dtmf="2")
        await _heard_agent(call_b)
        run_b = await p.wait_run(workflow_id=wf_b)
        assert run_b["status"] == "completed", run_b
        assert run_b["telephony_configuration_id"] == cfg_b
        assert [r["id"] for r in await _runs(p)] == [run_b["id"]]
        assert recorder.agents[0].digits == "2"

        # ...and the same extension on the first server the first one's.
        call_a = await lab.call("8000", hold_s=3, dtmf="1")
        await _heard_agent(call_a)
        run_a = await p.wait_run(workflow_id=wf_a)
        assert run_a["status"] == "completed", run_a
        assert run_a["telephony_configuration_id"] == cfg_a
        assert {r["id"] for r in await _runs(p)} == {run_a["id"], run_b["id"]}
        assert recorder.agents[1].digits == "1"
        await assert_no_leftovers(lab)
        await assert_no_leftovers(lab2)


async def test_two_organizations_one_asterisk_by_stasis_app(lab: AsteriskLab, tmp_path: Path) -> None:
    recorder = AgentRecorder()
    async with running_platform(tmp_path, port=lab.media_port, agent_factory=recorder, ring_timeout_s=4) as p_a:
        org_b, key_b = await create_organization(p_a.services.db, "Org B")
        async with httpx.AsyncClient(base_url=p_a.base_url, headers={"Authorization": f"Bearer {key_b}"},
                                     timeout=20) as http_b:
            p_b = RunningPlatform(p_a.base_url, p_a.services, key_b, org_b.id, http_b)
            # Both organizations answer extension 8000 on the same Asterisk, each with its own ARI
            # user and Stasis app (the lab's ari.conf has vr3ai and vr3ai2).
            wf_a, cfg_a = await p_a.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab)
            wf_b, cfg_b = await p_b.setup_inbound(definition=OTHER_WORKFLOW, lab=lab, stasis_app="vr3ai2",
                                                  password="other-secret")

            call_b = await lab.call("8000", hold_s=3, stasis_app="vr3ai2")
            await _heard_agent(call_b)
            run_b = await p_b.wait_run(workflow_id=wf_b)
            assert run_b["status"] == "completed", run_b
            assert run_b["telephony_configuration_id"] == cfg_b

            call_a = await lab.call("8000", hold_s=3)
            await _heard_agent(call_a)
            run_a = await p_a.wait_run(workflow_id=wf_a)
            assert run_a["status"] == "completed", run_a
            assert run_a["telephony_configuration_id"] == cfg_a

            # Each organization sees its own call only.
            assert [r["id"] for r in await _runs(p_a)] == [run_a["id"]]
            assert [r["id"] for r in await _runs(p_b)] == [run_b["id"]]
            r = await p_a.http.get(f"/api/v1/workflow-runs/{run_b['id']}")
            assert r.status_code == 404
            await assert_no_leftovers(lab)
