"""Run the whole platform (uvicorn + ARI listeners) in the test's event loop, on a chosen port.

The real-Asterisk tests point Asterisk's websocket_client sections at ``port``, so the platform
must listen exactly there. Telephony is on; the agent is whatever the test injects (or the real
offline voice agent).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tests.harness import MEDIA_PASSWORD, MEDIA_USER
from vr3ai.app import create_app
from vr3ai.core.orgs import create_organization
from vr3ai.server import uvicorn_config
from vr3ai.services import Services
from vr3ai.settings import Settings
from vr3ai.telephony.ari.calls import AgentFactory

LAB_MEDIA_CREDENTIALS = {"media_username": MEDIA_USER, "media_password": MEDIA_PASSWORD}
"""What the lab's websocket_client sections present (VR3 AI refuses media without credentials)."""


@dataclass
class RunningPlatform:
    base_url: str
    services: Services
    api_key: str
    organization_id: str
    http: httpx.AsyncClient
    extra: dict[str, Any] = field(default_factory=dict)

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.http.post(path, json=body)
        assert r.status_code in (200, 201, 202), (path, r.status_code, r.text)
        return r.json()

    async def get(self, path: str) -> dict[str, Any]:
        r = await self.http.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    async def wait_state(self, config_id: str, state: str = "connected", timeout_s: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = await self.get(f"/api/v1/telephony-configurations/{config_id}/status")
            if status["ari"]["state"] == state:
                return status
            await asyncio.sleep(0.05)
        raise AssertionError(f"configuration never reached {state}: {status}")

    async def wait_run(self, predicate: Any = None, timeout_s: float = 20.0, **filters: str) -> dict[str, Any]:
        """The newest run matching ``filters`` that is final (or satisfies ``predicate``)."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        query = "&".join(f"{k}={v}" for k, v in filters.items())
        while time.monotonic() < deadline:
            items = (await self.get(f"/api/v1/workflow-runs?{query}"))["items"]
            if items:
                last = await self.get(f"/api/v1/workflow-runs/{items[0]['id']}")
                ok = predicate(last) if predicate else last["status"] in ("completed", "failed", "busy", "no_answer")
                if ok:
                    return last
            await asyncio.sleep(0.1)
        raise AssertionError(f"no matching run in {timeout_s}s; last: {last}")

    async def setup_inbound(
        self,
        *,
        definition: dict[str, Any],
        extension: str = "8000",
        lab: Any,
        stasis_app: str = "vr3ai",
        password: str = "vr3ai-secret",
        ws_client: str = "vr3ai",
        wait: bool = True,
        snippets: bool = False,
        **config_extra: Any,
    ) -> tuple[str, str]:
        """A workflow and a configuration answering ``extension``. The configuration's media
        credentials are the pair the lab's websocket_client sections present, unless given.

        ``snippets``: the lab then runs on what the platform generates for this configuration
        (GET .../asterisk-snippets: its ari.conf user, [from-external] extension and websocket_client
        section, installed verbatim and applied with the snippet's reload commands), as an operator
        following the guide would set it up. Use a Stasis app and WebSocket client name of the test's
        own (not the lab's vr3ai), and a platform whose public URL is where the lab reaches it."""
        config_extra = {**LAB_MEDIA_CREDENTIALS, **config_extra}
        wf = await self.post("/api/v1/workflows", {"name": "test workflow", "definition": definition})
        cfg = await self.post(
            "/api/v1/telephony-configurations",
            {
                "name": "lab",
                "provider": "ari",
                "ari_endpoint_url": lab.ari_url.removesuffix("/ari"),
                "stasis_app_name": stasis_app,
                "app_password": password,
                "websocket_client_name": ws_client,
                "from_extensions": ["6001"],
                **config_extra,
            },
        )
        await self.post(
            f"/api/v1/telephony-configurations/{cfg['id']}/phone-numbers",
            {"address": extension, "inbound_workflow_id": wf["id"]},
        )
        if snippets:
            items = (await self.get(f"/api/v1/telephony-configurations/{cfg['id']}/asterisk-snippets"))["items"]
            await asyncio.to_thread(lab.install_snippets, items, ari_password=password)
        if wait:
            await self.wait_state(cfg["id"])
        return wf["id"], cfg["id"]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@asynccontextmanager
async def running_platform(
    data_dir: Path,
    *,
    port: int,
    agent_factory: AgentFactory | None = None,
    voice: bool = False,
    database_url: str = "",
    max_concurrent_calls: int = 10,
    tls_port: int = 0,
    tls_cert: str = "",
    tls_key: str = "",
    media_ws: str = "direct",
    main_tls_ca: str = "",
    **settings_kw: Any,
) -> AsyncIterator[RunningPlatform]:
    """``media_ws="websockets-sansio"`` serves the media socket through ASGI (the fallback path)
    instead of vr3ai.media.direct, for A/B benchmarks. ``main_tls_ca``: serve the main port over TLS
    with ``tls_cert`` / ``tls_key`` (VR3AI_TLS_CERT / VR3AI_TLS_KEY), the test's client trusting
    that CA file."""
    if main_tls_ca:
        settings_kw.update(tls_cert=tls_cert, tls_key=tls_key)
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        host="127.0.0.1",
        port=port,
        start_telephony=True,
        voice=voice,
        log_json=False,
        **settings_kw,
    )
    app = create_app(settings, agent_factory=agent_factory)
    services: Services = app.state.services
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets it knows are TCP, and a
    # 40 ms Nagle delay would distort every latency figure.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn_config(app, lifespan="on", **settings.main_listener_tls())
    if media_ws != "direct":
        config.ws = media_ws
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    tls_server: uvicorn.Server | None = None
    tls_task: asyncio.Task[None] | None = None
    if tls_port:
        # The wss:// media listener, as `vr3ai serve` runs it with VR3AI_MEDIA_TLS_* set.
        tls_config = uvicorn_config(
            app,
            host="127.0.0.1",
            port=tls_port,
            lifespan="off",
            ssl_certfile=tls_cert,
            ssl_keyfile=tls_key,
        )
        tls_server = uvicorn.Server(tls_config)
        tls_server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        tls_task = asyncio.create_task(tls_server.serve())
    try:
        for _ in range(300):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        org, key = await create_organization(services.db, "Test org", max_concurrent_calls=max_concurrent_calls)
        base = f"{'https' if main_tls_ca else 'http'}://127.0.0.1:{port}"
        verify: Any = ssl.create_default_context(cafile=main_tls_ca) if main_tls_ca else True
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=20, verify=verify
        ) as http:
            yield RunningPlatform(base, services, key, org.id, http)
    finally:
        if tls_server is not None and tls_task is not None:
            tls_server.should_exit = True
            await asyncio.wait({tls_task}, timeout=5)
        server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout=15)
        except TimeoutError:
            task.cancel()
        sock.close()
