"""Never a silent skip: under ``CI`` a skipped test fails the run, with the skip's reason.

Real-Asterisk tests skip when the machine is not root or a tool is missing, the PostgreSQL tests when
no server can be started, the browser tests without Chromium... On a developer's laptop that is the
right answer; in CI it would let a run pass while testing far less than it claims. So when ``CI`` is
set (anything but empty, ``0``, ``false``, ``no`` or ``off``, as CI services set ``CI=true``, and as
``scripts/test.sh`` does), every skip is turned into a failure whose message is the reason: the run
ends non-zero and says which prerequisite is missing. Done as one report hook rather than in each
fixture, so a skip added later cannot slip through. ``xfail`` is not a skip and is left alone.

Loaded from ``tests/conftest.py``; a run can load it alone with ``-p tests.ci_skips``.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

_OFF = {"", "0", "false", "no", "off"}


def ci_enabled() -> bool:
    return os.environ.get("CI", "").strip().lower() not in _OFF


def _reason(longrepr: Any) -> str:
    # A skip's longrepr is (file, line, "Skipped: <reason>").
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return str(text).removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and ci_enabled():
        report.outcome = "failed"
        report.longrepr = (
            f"CI is set, and a test never skips there: a prerequisite is missing: {_reason(report.longrepr)}"
        )
