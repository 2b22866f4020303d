"""Fixtures for the dashboard tests: a real uvicorn server per test (SQLite in ``tmp_path``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.web.fakes import FakeTelephony
from tests.web.platform import Platform, start_platform
from vr3ai.services import Services
from vr3ai.settings import Settings


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    async with start_platform(tmp_path) as p:
        yield p


@pytest.fixture
async def telephony_platform(tmp_path: Path) -> AsyncIterator[Platform]:
    """The platform with a fake telephony manager (records config changes, reports a given state)."""

    def build(settings: Settings) -> Services:
        svc = Services.build(settings)
        svc.telephony = FakeTelephony(svc)  # type: ignore[assignment]
        return svc

    async with start_platform(tmp_path, services_factory=build) as p:
        yield p
