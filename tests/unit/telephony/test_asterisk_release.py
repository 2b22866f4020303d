"""Asterisk releases before channel_id in MEDIA_START are named at connect time (issue 14 item 7)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from vr3ai.telephony.ari.client import release_problem
from vr3ai.telephony.ari.events import AriEventStream, ConnectionState


@pytest.mark.parametrize("version", ["22.6.0", "22.5.2", "20.16.0", "20.15.1-rc1"])
def test_releases_without_channel_id_cannot_work(version: str) -> None:
    text = release_problem(version)
    assert text is not None and f"Asterisk {version} cannot" in text and "22.7.0 or 20.17.0" in text


@pytest.mark.parametrize(
    "version", ["22.7.0", "22.10.1", "20.17.0", "20.20.1+dfsg", "23.1.0", "21.12.0", None, "GIT-master-f0c1c1a"]
)
def test_others_are_not_judged_or_fine(version: str | None) -> None:
    assert release_problem(version) is None


class _Rest:
    base_url = "http://127.0.0.1"

    def __init__(self, version: str) -> None:
        self.version = version

    async def info(self) -> dict[str, Any]:
        return {"system": {"version": self.version}}

    async def module(self, name: str) -> dict[str, Any]:
        return {"name": name, "status": "Running"}

    async def may_write(self) -> bool:
        return True


async def test_connect_to_an_old_release_fails_with_the_reason() -> None:
    async def connected() -> None:
        return None

    stream = AriEventStream(
        config_id="cfg",
        endpoint_url="http://127.0.0.1:9",
        app="vr3ai",
        password="pw",
        client=_Rest("22.6.0"),  # type: ignore[arg-type]
        on_event=lambda e: None,
        on_connected=connected,
    )
    stream.start()
    try:
        async with asyncio.timeout(5):
            while stream.state != ConnectionState.FAILED:  # noqa: ASYNC110 - no event to await
                await asyncio.sleep(0.01)
        assert "Asterisk 22.6.0 cannot carry" in (stream.last_error or "")
        assert stream.status()["asterisk_version"] == "22.6.0"
    finally:
        await stream.stop()
