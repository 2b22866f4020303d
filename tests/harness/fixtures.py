"""pytest fixtures for the real-Asterisk harness.

Import them from tests/conftest.py (``from tests.harness.fixtures import *``) or load this module
as a plugin (``-p tests.harness.fixtures``).

The lab fixture is synchronous on purpose: a session-scoped *async* fixture would tie it to one
event loop, while pytest-asyncio gives each test its own. The lab's async helpers open their
HTTP clients and WebSocket servers per call, so they work from any test's loop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from .asterisk import AsteriskLab

__all__ = ["asterisk_lab", "clean_asterisk_lab"]


def _skip_reason() -> str | None:
    if os.environ.get("VR3AI_SKIP_ASTERISK"):
        return "VR3AI_SKIP_ASTERISK is set"
    if os.geteuid() != 0:
        return "the real-Asterisk tests need root (they chroot into a Debian sid tree and mount proc)"
    for tool in ("chroot", "mount", "openssl"):
        if shutil.which(tool) is None:
            return f"the real-Asterisk tests need `{tool}` on PATH"
    return None


@pytest.fixture(scope="session")
def asterisk_lab() -> Iterator[AsteriskLab]:
    """One Asterisk for the whole session: started on first use, stopped at the end."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    lab = AsteriskLab(
        media_port=int(os.environ.get("VR3AI_TEST_MEDIA_PORT", "18765")),
        tls_media_port=int(os.environ.get("VR3AI_TEST_TLS_MEDIA_PORT", "18766")),
        # Another chroot (VR3AI_ASTERISK_CHROOT) on other ports can run beside the default lab.
        ari_port=int(os.environ.get("VR3AI_TEST_ARI_PORT", "8088")),
        sip_port=int(os.environ.get("VR3AI_TEST_SIP_PORT", "5060")),
    )
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture
def clean_asterisk_lab(asterisk_lab: AsteriskLab) -> Iterator[AsteriskLab]:
    """The session lab, checked before the test and tidied after it.

    Restarts Asterisk if an earlier test crashed it; afterwards hangs up leftover channels and
    bridges and restores the default websocket_client sections, so tests cannot leak into each
    other. A test that wants to *assert* there are no leftovers must do so itself, before this
    teardown runs.
    """
    if not asterisk_lab.is_running():
        asterisk_lab.restart()
    yield asterisk_lab
    if asterisk_lab.is_running():
        _run_in_thread(asterisk_lab.hangup_all)
        asterisk_lab.reset_websocket_clients()
        asterisk_lab.reset_snippets()


def _run_in_thread(fn: Callable[[], Coroutine[Any, Any, None]], timeout: float = 30.0) -> None:
    # A private loop in a private thread: asyncio.run() in the test thread would reset the
    # thread's current event loop under pytest-asyncio's feet.
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(fn())
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=target, name="harness-cleanup", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"harness cleanup did not finish within {timeout} s")
    if errors:
        raise errors[0]
