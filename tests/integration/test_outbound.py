"""Outbound and test calls through ARI: answered, busy, no answer, failed."""

from __future__ import annotations

import pytest

from tests.harness import AsteriskLab, audio
from tests.integration.agents import AgentRecorder
from tests.integration.conftest import SIMPLE_WORKFLOW
from tests.integration.platform import RunningPlatform
from tests.integration.test_inbound import assert_no_leftovers

pytestmark = pytest.mark.asterisk


async def _setup(platform: RunningPlatform, lab: AsteriskLab) -> tuple[str, str]:
    # Outbound targets in the lab are dialplan extensions reached through Local channels.
    return await platform.setup_inbound(definition=SIMPLE_WORKFLOW, lab=lab, dial_template="Local/{to}@outbound-sim")


async def test_outbound_answered(lab: AsteriskLab, platform: RunningPlatform, recorder: AgentRecorder) -> None:
    wf_id, cfg_id = await _setup(platform, lab)
    lab.set_callee("6001", wav=audio.synth_speech("Hello, this is the callee speaking."), hold_s=4)
    r = await platform.http.post(
        f"/api/v1/workflows/{wf_id}/calls", json={"telephony_configuration_id": cfg_id, "to": "6001"}
    )
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    run = await platform.wait_run(workflow_id=wf_id, timeout_s=20)
    assert run["id"] == run_id
    assert run["status"] == "completed", run
    assert run["direction"] == "outbound"
    assert run["context"]["direction"] == "outbound"
    assert run["context"]["called_number"] == "6001"
    assert run["context"]["caller_number"] == "6001"  # from the configuration's from-extensions
    agent = recorder.agents[0]
    assert audio.segments(__import__("numpy").frombuffer(bytes(agent.heard), dtype="<i2")), "agent heard nothing"
    heard = lab.callee_recordings("6001")
    assert heard, "callee recorded nothing"
    await assert_no_leftovers(lab)


@pytest.mark.parametrize(("target", "status"), [("7001", "busy"), ("8001", "no_answer"), ("4001", "failed")])
async def test_outbound_not_answered(lab: AsteriskLab, platform: RunningPlatform, target: str, status: str) -> None:
    wf_id, cfg_id = await _setup(platform, lab)
    r = await platform.http.post(
        f"/api/v1/workflows/{wf_id}/calls", json={"telephony_configuration_id": cfg_id, "to": target}
    )
    assert r.status_code == 202, r.text
    run = await platform.wait_run(workflow_id=wf_id, timeout_s=40)
    assert run["status"] == status, run
    assert run["end_reason"], run
    await assert_no_leftovers(lab)


async def test_outbound_refused_when_not_connected(lab: AsteriskLab, platform: RunningPlatform) -> None:
    wf_id, cfg_id = await platform.setup_inbound(
        definition=SIMPLE_WORKFLOW, lab=lab, password="wrong-password", wait=False
    )
    await platform.wait_state(cfg_id, "failed")
    r = await platform.http.post(
        f"/api/v1/workflows/{wf_id}/calls", json={"telephony_configuration_id": cfg_id, "to": "6001"}
    )
    assert r.status_code == 409
    assert "failed" in r.json()["detail"] or "failed" in r.text


@pytest.mark.parametrize(
    ("to", "caller"), [("6100", None), ("PJSIP/6100", "6002"), ("Local/6101@outbound-sim", "PJSIP/6001")]
)
async def test_test_call_reaches_a_sip_phone_with_the_chosen_caller_id(
    lab: AsteriskLab, platform: RunningPlatform, recorder: AgentRecorder, to: str, caller: str | None
) -> None:
    """Issue 14 items 1-2 against the real Asterisk. The configuration keeps the default dial template
    (PJSIP/{to}): '6100' dials the lab's SIP phone PJSIP/6100 (a real SIP INVITE + RTP leg that
    answers); a full dial string is dialled as written, whatever the template. 'from' picks one of
    the From Extensions, and the callee is shown that number as caller ID (default: the first, tech
    prefix removed)."""
    wf_id, cfg_id = await platform.setup_inbound(
        definition=SIMPLE_WORKFLOW, lab=lab, from_extensions=["PJSIP/6001", "6002"]
    )
    exten = "6101" if to.startswith("Local/") else "6100"
    lab.set_callee(exten, wav=audio.synth_speech("Hello, this is the callee speaking."), hold_s=4)
    body = {"telephony_configuration_id": cfg_id, "to": to} | ({"from": caller} if caller else {})
    r = await platform.http.post(f"/api/v1/workflows/{wf_id}/calls", json=body)
    assert r.status_code == 202, r.text
    run = await platform.wait_run(workflow_id=wf_id, timeout_s=25)
    assert run["status"] == "completed", run
    assert run["context"]["called_number"] == to
    shown = (caller or "6001").removeprefix("PJSIP/")
    assert run["context"]["caller_number"] == shown
    # What the callee was shown (reset by set_callee above, so it is this call's); for 6100 it came
    # in the SIP From header: [pjsip-in] is the only way to that callee.
    assert await lab.callee_caller_id(exten) == shown
    agent = recorder.agents[0]
    assert audio.segments(__import__("numpy").frombuffer(bytes(agent.heard), dtype="<i2")), "agent heard nothing"
    assert lab.callee_recordings(exten), "callee recorded nothing"
    await assert_no_leftovers(lab)
