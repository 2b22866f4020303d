"""Fixtures for the browser tests: Debian's Chromium driven headless by Playwright's Python API.

The browser is never downloaded (no ``playwright install``): we launch ``/usr/bin/chromium``
(``apt-get install chromium``, installed by ``scripts/install.sh --test``). Set
``VR3AI_TEST_SKIP_BROWSER=1`` to skip these tests on a machine without Chromium; CI must not.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.web.platform import Platform, start_platform

try:
    from playwright.async_api import Browser, async_playwright
except ImportError:  # pragma: no cover - exercised only on machines without the dev extra
    async_playwright = None  # type: ignore[assignment]

from tests.browser.pages import CHROMIUM, CHROMIUM_ARGS


def _unavailable() -> str | None:
    if async_playwright is None:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} not found (apt-get install chromium)"
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    reason = _unavailable()
    if reason:
        if os.environ.get("VR3AI_TEST_SKIP_BROWSER") == "1":
            pytest.skip(reason)
        pytest.fail(reason + "; set VR3AI_TEST_SKIP_BROWSER=1 to skip browser tests")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    async with start_platform(tmp_path) as p:
        yield p
