"""Issue 12, item 2: requests we make for a tenant follow one outbound policy.

Each test reproduces a server-side request forgery that worked before the policy existed: saving an
ARI endpoint or LLM ``base_url`` that points at a cloud metadata address, at a private range in a
multi-tenant install, or at this platform's own port; a host name whose DNS answer changes after
the check (rebinding); a server that redirects our connection elsewhere; diagnostics that tell a
closed port from an unknown host; an LLM error page kept in the run's events.

Everything runs on loopback. DNS answers for made-up names come from a resolver handed to the
policy (the seam ``OutboundPolicy(resolver=...)``), so no test asks a real DNS server.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.security.servers import ok_json, recording_server
from tests.web.platform import DashboardUser, Platform, start_platform
from vr3ai.core.outbound import POLICY, OutboundPolicy, OutboundRefused
from vr3ai.services import Services
from vr3ai.settings import Settings
from vr3ai.telephony.ari.client import NO_ANSWER, AriClient, AriError
from vr3ai.telephony.ari.diagnostics import run_diagnostics
from vr3ai.telephony.ari.events import AriEventStream, ConnectionState
from vr3ai.workflows.factory import build_responder
from vr3ai.workflows.responder import CallerTurn

Resolver = Callable[[str, int], Awaitable[list[str]]]


def table(answers: dict[str, list[str]]) -> Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        if host in answers:
            return list(answers[host])
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    return resolve


async def real_resolver(host: str, port: int) -> list[str]:
    """The operating system's resolver (``localhost`` comes from /etc/hosts, no DNS server)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(i[4][0]) for i in infos]


@asynccontextmanager
async def platform_with(
    tmp_path: Path, allow: str = "", resolver: Resolver | None = None
) -> AsyncIterator[tuple[Platform, httpx.AsyncClient]]:
    def build(settings: Settings) -> Services:
        svc = Services.build(settings)
        if resolver is not None:
            svc.outbound = OutboundPolicy.from_settings(settings, resolver=resolver)
        return svc

    async with start_platform(tmp_path, settings_overrides={"outbound_allow": allow}, services_factory=build) as p:
        user: DashboardUser = await p.create_user()
        async with p.api(user) as api:
            yield p, api


def config(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "PBX",
        "ari_endpoint_url": url,
        "stasis_app_name": "vr3ai",
        "app_password": "ari-password-1",
        "websocket_client_name": "vr3ai",
        **extra,
    }


def llm_workflow(base_url: str) -> dict[str, Any]:
    return {
        "name": "LLM line",
        "definition": {
            "settings": {"llm": {"provider": "openai_compatible", "base_url": base_url, "model": "m"}},
            "nodes": [
                {"id": "hello", "type": "start", "greeting": "Hello."},
                {"id": "assist", "type": "agent", "prompt": "Help the caller."},
            ],
            "edges": [{"id": "e1", "from": "hello", "to": "assist"}],
        },
    }


def refused_at(r: httpx.Response, loc: list[Any]) -> str:
    """The 422's message for ``loc``; it must name the policy."""
    assert r.status_code == 422, r.text
    items = [d for d in r.json()["detail"] if d["loc"] == loc]
    assert items, r.json()
    assert POLICY in items[0]["msg"], items[0]["msg"]
    return str(items[0]["msg"])


# --- the policy's rules ----------------------------------------------------------------------------


def _refused(policy: OutboundPolicy, address: str, port: int = 8088) -> bool:
    import ipaddress

    return policy.refusal(ipaddress.ip_address(address), port) is not None


def test_rules_of_the_default_and_public_modes() -> None:
    default = OutboundPolicy("")
    for address in ("169.254.169.254", "169.254.0.1", "fe80::1", "fd00:ec2::254"):
        assert _refused(default, address), address
    for address in ("127.0.0.1", "::1", "10.1.2.3", "192.168.1.10", "172.16.0.5", "8.8.8.8"):
        assert not _refused(default, address), address
    assert not _refused(OutboundPolicy("169.254.169.254"), "169.254.169.254")

    public = OutboundPolicy("public")
    for address in ("127.0.0.1", "::1", "10.1.2.3", "192.168.1.10", "172.16.0.5", "fc00::1", "100.64.0.1",
                    "0.0.0.0", "169.254.169.254"):
        assert _refused(public, address), address
    assert not _refused(public, "8.8.8.8")
    listed = OutboundPolicy("public, 10.1.2.0/24")
    assert not _refused(listed, "10.1.2.3") and _refused(listed, "10.1.3.3")

    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/8x'"):
        OutboundPolicy("public,10.0.0.0/8x")


async def test_ipv4_mapped_ipv6_is_the_ipv4_address() -> None:
    with pytest.raises(OutboundRefused):
        await OutboundPolicy("").vet("::ffff:169.254.169.254", 80)


# --- on save: a 422 that names the policy ------------------------------------------------------------


async def test_metadata_address_refused_on_save(tmp_path: Path) -> None:
    async with platform_with(tmp_path) as (_, api):
        for url in ("http://169.254.169.254", "http://[fd00:ec2::254]:80", "http://[fe80::1]:8088"):
            r = await api.post("/telephony-configurations", json=config(url))
            refused_at(r, ["body", "ari_endpoint_url"])
        assert (await api.get("/telephony-configurations")).json()["items"] == []

        # Moving a saved configuration there is refused too, and changes nothing.
        r = await api.post("/telephony-configurations", json=config("http://127.0.0.1:8088"))
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        r = await api.patch(f"/telephony-configurations/{cid}", json={"ari_endpoint_url": "http://169.254.169.254"})
        refused_at(r, ["body", "ari_endpoint_url"])
        assert (await api.get(f"/telephony-configurations/{cid}")).json()["ari_endpoint_url"] == "http://127.0.0.1:8088"

        r = await api.post("/workflows", json=llm_workflow("http://169.254.169.254/v1"))
        refused_at(r, ["body", "definition", "settings", "llm", "base_url"])

    # Listed, the operator's explicit choice, it is allowed.
    async with platform_with(tmp_path / "listed", allow="169.254.169.254") as (_, api):
        r = await api.post("/telephony-configurations", json=config("http://169.254.169.254"))
        assert r.status_code == 201, r.text


async def test_public_mode_refuses_loopback_and_private_unless_listed(tmp_path: Path) -> None:
    urls = ["http://127.0.0.1:8088", "http://[::1]:8088", "http://10.1.2.3:8088", "http://192.168.1.10:8088"]
    async with platform_with(tmp_path, allow="public") as (_, api):
        for url in urls:
            r = await api.post("/telephony-configurations", json=config(url, name=url))
            assert "only public addresses" in refused_at(r, ["body", "ari_endpoint_url"])
        r = await api.post("/workflows", json=llm_workflow("http://10.1.2.3:11434/v1"))
        refused_at(r, ["body", "definition", "settings", "llm", "base_url"])

    async with platform_with(tmp_path / "listed", allow="public,10.1.2.0/24") as (_, api):
        r = await api.post("/telephony-configurations", json=config("http://10.1.2.3:8088"))
        assert r.status_code == 201, r.text
        r = await api.post("/telephony-configurations", json=config("http://10.1.3.3:8088", stasis_app_name="b"))
        refused_at(r, ["body", "ari_endpoint_url"])

    # Without 'public' (a PBX on the same host or LAN), they stay allowed.
    async with platform_with(tmp_path / "default") as (_, api):
        for i, url in enumerate(urls):
            r = await api.post("/telephony-configurations", json=config(url, stasis_app_name=f"app{i}"))
            assert r.status_code == 201, r.text


async def test_host_name_resolving_to_refused_address_is_refused(tmp_path: Path) -> None:
    # The operating system's answer for localhost (/etc/hosts) in a multi-tenant install.
    async with platform_with(tmp_path, allow="public", resolver=real_resolver) as (_, api):
        r = await api.post("/telephony-configurations", json=config("http://localhost:8088"))
        assert "localhost" in refused_at(r, ["body", "ari_endpoint_url"])

    answers = {
        "pbx.tenant.example": ["169.254.169.254"],
        # One refused address among allowed ones is enough (round-robin DNS would pick it sometimes).
        "llm.tenant.example": ["93.184.215.14", "169.254.169.254"],
        "good.tenant.example": ["93.184.215.14"],
    }
    async with platform_with(tmp_path / "seam", resolver=table(answers)) as (_, api):
        r = await api.post("/telephony-configurations", json=config("http://pbx.tenant.example:8088"))
        msg = refused_at(r, ["body", "ari_endpoint_url"])
        assert "169.254" not in msg  # names the host the tenant gave, not what it resolved to
        r = await api.post("/workflows", json=llm_workflow("http://llm.tenant.example/v1"))
        refused_at(r, ["body", "definition", "settings", "llm", "base_url"])
        r = await api.post("/telephony-configurations", json=config("http://good.tenant.example:8088"))
        assert r.status_code == 201, r.text
        # A name that does not resolve now may be a PBX that is offline: saved, checked at call time.
        r = await api.post("/telephony-configurations", json=config("http://later.example:8088", stasis_app_name="x"))
        assert r.status_code == 201, r.text


async def test_platform_own_port_refused(tmp_path: Path) -> None:
    # Listed or not: 127.0.0.0/8 in the list does not open the platform's own port.
    async with platform_with(tmp_path, allow="127.0.0.0/8") as (p, api):
        port = p.settings.server.port
        for url in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://127.0.0.1:{port}/ari"):
            r = await api.post("/telephony-configurations", json=config(url))
            assert "own port" in refused_at(r, ["body", "ari_endpoint_url"])
        r = await api.post("/workflows", json=llm_workflow(f"http://127.0.0.1:{port}/v1"))
        refused_at(r, ["body", "definition", "settings", "llm", "base_url"])
        # Any other port of this host is a PBX's or an LLM's.
        other = port + 1 if port < 65535 else 1
        r = await api.post("/telephony-configurations", json=config(f"http://127.0.0.1:{other}"))
        assert r.status_code == 201, r.text

        # The ARI client refuses it at request time too (nothing reaches our own API).
        client = AriClient(f"http://127.0.0.1:{port}", "vr3ai", "pw", policy=p.services.outbound)
        try:
            with pytest.raises(AriError) as e:
                await client.info()
            assert e.value.status == 0 and POLICY in e.value.message
        finally:
            await client.aclose()


async def test_llm_base_url_with_path_or_query_refused(tmp_path: Path) -> None:
    async with platform_with(tmp_path) as (_, api):
        for url in (
            "http://127.0.0.1:9200/_cluster/settings?x=",
            "http://127.0.0.1:11434/v1?key=1",
            "http://127.0.0.1:11434/v1#frag",
            "http://user:pw@127.0.0.1:11434/v1",
            "http://127.0.0.1:8500/v1/agent/self",
            "http://127.0.0.1:2379/internal/admin",
            "http://127.0.0.1:11434/v1/../admin",
        ):
            r = await api.post("/workflows", json=llm_workflow(url))
            assert r.status_code == 422, (url, r.text)
            locs = [d["loc"] for d in r.json()["detail"]]
            assert ["body", "definition", "settings", "llm", "base_url"] in locs, (url, locs)
        # Today's common forms keep working.
        for url in (
            "http://127.0.0.1:11434",
            "http://127.0.0.1:11434/v1",
            "http://127.0.0.1:8000/v1/",
            "https://api.openai.com/v1",
            "https://openrouter.ai/api/v1",
            "https://api.groq.com/openai/v1",
            "http://127.0.0.1:8080/v1/chat/completions",
        ):
            r = await api.post("/workflows", json=llm_workflow(url))
            assert r.status_code == 201, (url, r.text)


# --- at request time ---------------------------------------------------------------------------------


async def test_dns_rebinding_cannot_redirect_a_connection() -> None:
    """The name is checked once and the connection goes to the checked address; a later answer
    pointing elsewhere is checked again and refused, and nothing reaches the second address."""
    info = b'{"system": {"version": "22.10.1"}}'
    async with recording_server(lambda m, p: ok_json(info), "127.0.0.1") as honest, \
            recording_server(lambda m, p: ok_json(info), "127.0.0.2") as inner:
        lookups: list[str] = []

        async def rebinding(host: str, port: int) -> list[str]:
            lookups.append(host)
            return ["127.0.0.1"] if len(lookups) == 1 else ["127.0.0.2"]

        policy = OutboundPolicy("public,127.0.0.1", resolver=rebinding, cache_ttl_s=0)
        name = f"pbx.rebind.example:{honest.port}"
        client = AriClient(f"http://{name}", "vr3ai", "pw", policy=policy)
        try:
            assert (await client.info())["system"]["version"] == "22.10.1"
            # It reached the vetted address under the original name (Host header), after one lookup:
            # the HTTP library did not resolve the name again (it could not have: only our seam knows it).
            assert len(lookups) == 1 and honest.requests[0].headers["host"] == name

            with pytest.raises(AriError) as e:  # the second answer: checked, refused
                await client.info()
            assert POLICY in e.value.message and len(lookups) == 2
        finally:
            await client.aclose()
        assert inner.connections == 0

    # The WebSocket too: the first answer is used for the connection, the Host header keeps the name.
    seen: list[str] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen.append(ws.request.headers["Host"])
        await ws.send("hello")

    async with serve(handler, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        lookups.clear()
        policy = OutboundPolicy("public,127.0.0.1", resolver=rebinding)
        async with policy.websocket(f"ws://pbx.rebind.example:{port}/ari/events") as ws:
            assert await ws.recv() == "hello"
        assert seen == [f"pbx.rebind.example:{port}"] and len(lookups) == 1
        with pytest.raises(OutboundRefused):
            async with policy.websocket(f"ws://pbx.rebind.example:{port}/ari/events"):
                pass


async def test_redirecting_server_is_not_followed() -> None:
    """A tenant's server answers with a redirect to an internal address: neither the ARI REST
    client, nor the ARI events WebSocket, nor the LLM client goes there."""
    async with recording_server(lambda m, p: ok_json()) as target:

        def answer(method: str, path: str) -> tuple[int, dict[str, str], bytes]:
            if path == "/ari/asterisk/info":
                return ok_json(b'{"system": {"version": "22.10.1"}}')
            if path.startswith("/ari/asterisk/modules/"):
                return ok_json(b'{"name": "x", "status": "Running"}')
            if method == "DELETE" and path.startswith("/ari/bridges/"):  # the write probe: a writable user
                return 404, {"Content-Type": "application/json"}, b'{"message": "Bridge not found"}'
            scheme = "ws" if path.startswith("/ari/events") else "http"
            return 302, {"Location": f"{scheme}://{target.host}:{target.port}{path}"}, b""

        async with recording_server(answer) as tenant:
            client = AriClient(tenant.origin, "vr3ai", "pw")
            stream = AriEventStream(
                config_id="c1",
                endpoint_url=tenant.origin,
                app="vr3ai",
                password="pw",
                client=client,
                on_event=lambda e: None,
                on_connected=_nothing,
                policy=client.policy,
            )
            try:
                stream.start()
                for _ in range(200):
                    if stream.state == ConnectionState.FAILED:
                        break
                    await asyncio.sleep(0.01)
                assert stream.state == ConnectionState.FAILED and "302" in (stream.last_error or ""), stream.status()
                assert target.connections == 0

                with pytest.raises(AriError) as e:
                    await client.request("GET", "/channels")
                assert e.value.status == 302
            finally:
                await stream.stop()
                await client.aclose()
            assert any(r.path.startswith("/ari/events") for r in tenant.requests)

            responder = build_responder(llm_workflow(f"{tenant.origin}/v1")["definition"], {})
            try:
                async for _ in responder.opening():
                    pass
                async for _ in responder.respond(CallerTurn(kind="speech", text="hello")):
                    pass
            finally:
                await responder.aclose()  # type: ignore[attr-defined]
            assert any(r.path == "/v1/chat/completions" for r in tenant.requests)
        assert target.connections == 0


async def _nothing() -> None:
    return None


async def test_llm_error_body_not_stored_in_run_events() -> None:
    page = b"<html>internal admin console: db_password=hunter2 root token 7f3a</html>"
    async with recording_server(lambda m, p: (500, {"Content-Type": "text/html"}, page)) as server:
        responder = build_responder(llm_workflow(f"{server.origin}/v1")["definition"], {})
        try:
            async for _ in responder.opening():
                pass
            async for _ in responder.respond(CallerTurn(kind="speech", text="hello")):
                pass
        finally:
            await responder.aclose()  # type: ignore[attr-defined]
    events = json.dumps(responder.state.events)
    assert "HTTP 500" in events
    for word in ("admin console", "hunter2", "db_password", "7f3a"):
        assert word not in events, events


async def test_diagnostics_do_not_tell_network_failures_apart(tmp_path: Path) -> None:
    """A closed port and a name that does not resolve read the same: diagnostics are not a port
    scanner. The fix list (ours, not the remote's) still says what to check."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    async with platform_with(tmp_path) as (p, api):
        details = []
        for i, url in enumerate((f"http://127.0.0.1:{closed}", "http://no-such-pbx.example:8088")):
            r = await api.post("/telephony-configurations", json=config(url, stasis_app_name=f"a{i}"))
            assert r.status_code == 201, r.text
            checks = {c.key: c for c in await run_diagnostics(p.services, r.json()["id"], media_probe=False)}
            c = checks["ari_reachable"]
            assert c.ok is False and "firewall" in c.fix
            details.append(c.detail.replace(f"{url}/ari", "URL"))
        assert details[0] == details[1] and NO_ANSWER in details[0], details


def _tls_files(d: Path, name: str) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for the DNS name ``name`` only (no IP address in it)."""
    import subprocess

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=outbound-test-ca",
        "-keyout", "ca.key", "-out", "ca.pem", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", "server.key", "-out", "server.csr")
    (d / "ext.cnf").write_text(f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "ext.cnf", "-out", "server.pem")
    return d / "ca.pem", d / "server.pem", d / "server.key"


async def test_tls_to_the_vetted_address_checks_the_name(tmp_path: Path) -> None:
    """Connecting to the vetted address keeps TLS honest: the server name (SNI) and the certificate
    check are the host name's, not the address's; a certificate for another name fails."""
    import ssl

    name = "pbx.tls.example"
    ca, cert, key = _tls_files(tmp_path, name)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    sni: list[str | None] = []
    server_ctx.sni_callback = lambda sock, server_name, ctx: sni.append(server_name)  # type: ignore[assignment,misc]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = srv.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(ca))
    try:
        policy = OutboundPolicy("", resolver=table({name: ["127.0.0.1"], "other.tls.example": ["127.0.0.1"]}))
        async with policy.http_client(verify=client_ctx) as http:
            r = await http.get(f"https://{name}:{port}/ari/asterisk/info")
            assert r.status_code == 200 and sni == [name]
            with pytest.raises(httpx.ConnectError):  # the certificate does not name this host
                await http.get(f"https://other.tls.example:{port}/ari/asterisk/info")
    finally:
        srv.close()
        await srv.wait_closed()
