"""Shared fixtures. The real-Asterisk harness lives in tests/harness (loaded as a plugin);
tests/ci_skips.py makes every skip a failure under CI."""

import importlib.util
import socket
from collections.abc import Iterator

import pytest

from vr3ai.core import outbound

pytest_plugins = ["tests.ci_skips"] + (
    ["tests.harness.fixtures"] if importlib.util.find_spec("tests.harness.fixtures") else []
)

OFFLINE_HOSTS = {"localhost": ["127.0.0.1"]}


async def _offline_resolver(host: str, port: int) -> list[str]:
    if host in OFFLINE_HOSTS:
        return list(OFFLINE_HOSTS[host])
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.fixture(scope="session", autouse=True)
def _no_dns() -> Iterator[None]:
    """Tests never ask a DNS server (nothing outside 127.0.0.0/8): the names the outbound policy
    looks up (every saved ARI endpoint, LLM and cloud URL) resolve from this table, any other name
    does not exist, as on an offline machine. Tests of DNS answers pass their own resolver."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(outbound, "system_resolver", _offline_resolver)
        yield
