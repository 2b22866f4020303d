"""Real-Asterisk call-flow fixtures: a running platform whose media port is where Asterisk dials."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from tests.harness import AsteriskLab
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
