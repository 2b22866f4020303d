"""Real-Asterisk call-flow fixtures: a running platform whose media port is where Asterisk dials."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from tests.harness import AsteriskLab, SecondAsterisk
from tests.integration.agents import AgentRecorder
from tests.integration.platform import RunningPlatform, running_platform

SIMPLE_WORKFLOW = {
    "nodes": [
        {"id": "start", "type": "start", "greeting": "Hello from VR3 AI."},
        {"id": "bye", "type": "end", "say": "Goodbye."},
    ],
    "edges": [{"id": "e1", "from": "start", "to": "bye", "keywords": ["bye"]}],
}


@pytest_asyncio.fixture
async def lab(clean_asterisk_lab: AsteriskLab) -> AsyncIterator[AsteriskLab]:
    await clean_asterisk_lab.warm_up()
    yield clean_asterisk_lab


@pytest_asyncio.fixture
async def recorder() -> AgentRecorder:
    return AgentRecorder()


@pytest_asyncio.fixture
async def platform(lab: AsteriskLab, tmp_path: Path, recorder: AgentRecorder) -> AsyncIterator[RunningPlatform]:
    async with running_platform(tmp_path, port=lab.media_port, agent_factory=recorder, ring_timeout_s=4) as p:
        yield p


@pytest_asyncio.fixture
async def sip_phone(lab: AsteriskLab) -> AsyncIterator[SecondAsterisk]:
    """The lab's SIP phone: a second Asterisk registered with the lab as PJSIP endpoint 7001."""
    phone = lab.second("phone", role="phone")
    await asyncio.to_thread(phone.start)
    try:
        await phone.wait_registered()
        yield phone
    finally:
        await asyncio.to_thread(phone.stop)


@pytest_asyncio.fixture
async def lab2(lab: AsteriskLab) -> AsyncIterator[SecondAsterisk]:
    """A second PBX under test, its websocket_client sections pointed at the same platform port."""
    pbx = lab.second("pbx2")
    await asyncio.to_thread(pbx.start)
    try:
        await pbx.warm_up()
        yield pbx
    finally:
        await asyncio.to_thread(pbx.stop)
