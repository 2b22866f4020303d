"""Issue 12, item 3: request bodies are limited, and refused (413) before anything parses them or
checks who sent them.

Raw sockets, not httpx: the point is *when* the server answers. A request that announces a large
body gets its 413 while the body has not been sent at all; a chunked body is refused once the
limit is passed, while the client still holds the end of it. Before the fix the server waited for
the rest of the body (then parsed it), so these reads timed out.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.web.platform import DashboardUser, Platform, start_platform
from vr3ai.settings import Settings

MIB = 1024 * 1024


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    async with start_platform(tmp_path) as p:
        yield p


def _port(p: Platform) -> int:
    return int(p.base_url.rsplit(":", 1)[1])


async def _reply(reader: asyncio.StreamReader, within: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the server's reply; TimeoutError if it does not answer."""
    async with asyncio.timeout(within):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def _open(p: Platform) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", _port(p))


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _announce(p: Platform, method: str, path: str, length: int, **headers: str) -> int:
    """Send only the head of a request announcing ``length`` body bytes; the reply's status."""
    reader, writer = await _open(p)
    try:
        head = {"Content-Type": "application/json", "Content-Length": str(length), **headers}
        writer.write(_head(method, path, head))
        await writer.drain()
        status, reply_headers, body = await _reply(reader)
        if status == 413:
            assert reply_headers.get("connection") == "close"
            assert json.loads(body)["message"].startswith("request body too large")
        return status
    finally:
        writer.close()


async def test_announced_oversized_body_is_refused_before_it_is_sent_and_before_auth(platform: Platform) -> None:
    # No API key at all: before the fix FastAPI would wait for (and parse) the 10 MiB first.
    assert await _announce(platform, "POST", "/api/v1/telephony-configurations", 10 * MIB) == 413
    assert await _announce(platform, "POST", "/api/v1/secrets", MIB + 1) == 413
    # The dashboard's forms, signed in or not (the login form is read before the password check).
    assert await _announce(platform, "POST", "/login", 10 * MIB) == 413


async def test_chunked_body_is_counted_and_refused_past_the_limit(platform: Platform) -> None:
    user = await platform.create_user()
    reader, writer = await _open(platform)
    try:
        writer.write(
            _head(
                "POST",
                "/api/v1/telephony-configurations",
                {
                    "Authorization": f"Bearer {user.api_key}",
                    "Content-Type": "application/json",
                    "Transfer-Encoding": "chunked",
                },
            )
        )
        chunk = b"[" + b" " * (64 * 1024 - 1)  # valid JSON so far: only the size can stop it
        sent = 0
        for _ in range(17):  # 1 MiB + 64 KiB, and never the terminating chunk
            piece = chunk if sent == 0 else b" " * len(chunk)
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sent += len(piece)
            await writer.drain()
        status, headers, body = await _reply(reader)
        assert status == 413, body
        assert headers.get("connection") == "close"
        assert "1048576 bytes" in json.loads(body)["message"]
    finally:
        writer.close()


def _definition_of_size(size: int) -> dict[str, object]:
    # A valid definition padded with a long greeting: only its size is wrong.
    return {
        "nodes": [
            {"id": "start", "type": "start", "greeting": "Hello. " * (size // 7)},
            {"id": "bye", "type": "end", "say": "Goodbye."},
        ],
        "edges": [{"id": "e1", "from": "start", "to": "bye", "keywords": ["bye"]}],
    }


async def test_workflow_definitions_have_a_smaller_limit(platform: Platform) -> None:
    user: DashboardUser = await platform.create_user()
    auth = {"Authorization": f"Bearer {user.api_key}"}
    assert await _announce(platform, "POST", "/api/v1/workflows", 256 * 1024 + 1, **auth) == 413
    assert await _announce(platform, "PATCH", "/api/v1/workflows/some-id", 300 * 1024, **auth) == 413
    assert await _announce(platform, "POST", "/workflows", 300 * 1024) == 413  # the dashboard editor
    assert await _announce(platform, "POST", "/workflows/some-id", 300 * 1024) == 413
    async with platform.api(user) as api:
        big = await api.post("/workflows", json={"name": "big", "definition": _definition_of_size(300 * 1024)})
        assert big.status_code == 413
        assert (await api.get("/workflows")).json()["items"] == []  # nothing stored
        ok = await api.post("/workflows", json={"name": "fine", "definition": _definition_of_size(200 * 1024)})
        assert ok.status_code == 201, ok.text[:300]
        # Other requests keep the general 1 MiB: 600 kB reaches validation (422), not the limit.
        other = await api.post("/telephony-configurations", json={"name": "x" * 600_000})
        assert other.status_code == 422


async def test_limits_are_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VR3AI_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("VR3AI_MAX_WORKFLOW_BODY_BYTES", "2048")
    s = Settings.from_env()
    assert (s.server.max_body_bytes, s.server.max_workflow_body_bytes) == (4096, 2048)
    monkeypatch.setenv("VR3AI_MAX_BODY_BYTES", "lots")
    with pytest.raises(ValueError, match="VR3AI_MAX_BODY_BYTES"):
        Settings.from_env()
    overrides = {"max_body_bytes": 4096, "max_workflow_body_bytes": 2048}
    async with start_platform(tmp_path, settings_overrides=overrides) as p:
        user = await p.create_user()
        async with p.api(user) as api:
            r = await api.post("/telephony-configurations", json={"name": "x" * 5000})
            assert r.status_code == 413
            r = await api.post("/workflows", json={"name": "w", "definition": _definition_of_size(3000)})
            assert r.status_code == 413
            r = await api.post("/telephony-configurations", json={"name": "x" * 3000})
            assert r.status_code == 422  # under the limit: read and validated as before
        async with httpx.AsyncClient(base_url=p.base_url) as http:
            assert (await http.get("/login")).status_code == 200  # bodiless requests are untouched
