"""Agent tests marked ``virtual_time`` run on :class:`tests.fakes.virtual_time.VirtualTimeLoop`
(fast and deterministic, like the media tests' ``Rig``); the others (real models in threads and
worker processes) on the standard loop and real time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

from tests.fakes.virtual_time import VirtualTimeLoop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.get_closest_marker("virtual_time") is not None:
        return {"virtual_time": VirtualTimeLoop}
    return {"asyncio": asyncio.new_event_loop}
