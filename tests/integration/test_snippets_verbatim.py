"""The guide's literal configuration is what the call runs on: the lab Asterisk loads the ari.conf,
extensions.conf and websocket_client.conf sections VR3 AI generates for the configuration (GET
.../asterisk-snippets), not hand-written ones, and applies them with the snippet's own reload commands."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.harness import AsteriskLab, audio
from tests.integration.agents import AgentRecorder
from tests.integration.conftest import SIMPLE_WORKFLOW
from tests.integration.platform import running_platform
from tests.integration.test_inbound import assert_no_leftovers

pytestmark = pytest.mark.asterisk

APP = "vr3ai-guide"
"""Names that exist nowhere in the lab's own files: the call can only work through the generated ones."""
APP_PASSWORD = "guide-app-secret"


async def test_inbound_call_on_generated_snippets(lab: AsteriskLab, tmp_path: Path) -> None:
    recorder = AgentRecorder()
    async with running_platform(
        tmp_path, port=lab.media_port, agent_factory=recorder, ring_timeout_s=4,
        public_url=f"http://127.0.0.1:{lab.media_port}",
    ) as platform:
        assert f"[{APP}]" not in lab.generated_conf("ari.conf")
        # The harness's standard setup path, as an operator following the guide: configuration,
        # phone number, then the generated snippets pasted and the snippet's reload commands run.
        wf_id, cfg_id = await platform.setup_inbound(
            definition=SIMPLE_WORKFLOW, lab=lab, stasis_app=APP, password=APP_PASSWORD, ws_client=APP, snippets=True
        )
        snippets = (await platform.get(f"/api/v1/telephony-configurations/{cfg_id}/asterisk-snippets"))["items"]
        by_name = {s["filename"]: s["text"] for s in snippets}

        # Byte for byte what the platform generated (the ARI password is the one line the guide
        # has the operator fill in).
        assert lab.generated_conf("extensions.conf") == by_name["extensions.conf"]
        assert lab.generated_conf("websocket_client.conf") == by_name["websocket_client.conf"]
        assert lab.generated_conf("ari.conf") == by_name["ari.conf"].replace(
            "password = your_secure_password", f"password = {APP_PASSWORD}")
        assert f"Stasis({APP})" in by_name["extensions.conf"] and "exten => 8000," in by_name["extensions.conf"]
        assert f"uri = ws://127.0.0.1:{lab.media_port}/api/v1/telephony/ws/ari" in by_name["websocket_client.conf"]

        speech = audio.synth_speech("I would like to book an appointment for tomorrow")
        call = await lab.call("8000", wav=speech, hold_s=6, dtmf="12#")
        heard = await call.recording()
        run = await platform.wait_run(workflow_id=wf_id)
        assert run["status"] == "completed", run
        assert run["context"]["called_number"] == "8000"
        # Asterisk found the generated [vr3ai-guide] user, dialplan and websocket_client section.
        log = lab.log_path.read_text(errors="replace")
        assert re.search(r'NoOp\("Local/8000@from-external-\w+;2", "Incoming call to 8000"\)', log), log[-2000:]
        assert re.search(rf'Stasis\("Local/8000@from-external-\w+;2", "{APP}"\)', log)
        segs = audio.segments(heard)
        assert segs, "caller heard nothing"
        tone = heard[int(segs[0].start_s * 8000) : int(segs[0].end_s * 8000)]
        assert abs(audio.dominant_freq(tone) - 440) < 15
        agent = recorder.agents[0]
        got = np.frombuffer(bytes(agent.heard), dtype="<i2")
        chunk = audio.load_8k(speech)[8000:10400]
        assert audio.find_lag(chunk, got)[1] > 0.95
        assert agent.digits == "12#"
        await assert_no_leftovers(lab)
