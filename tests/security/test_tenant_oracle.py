"""Tenant B runs its own "Asterisk" and answers VR3 AI's ARI requests with candidate passwords. On
the old code the process-wide redactor turned every candidate that was another tenant's password
into ``***`` in B's diagnostics and status line: an oracle. Now no server text comes back at all,
and what is redacted is only ever B's own.

Everything runs for real: the platform on uvicorn with its telephony listeners, tenant B's server
on a real local port, the dashboard pages and the API over HTTP.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import pytest

from tests.security.hostile import run_hostile
from tests.web.fakes import closed_port_url
from tests.web.platform import Platform, start_platform


async def _wait_failed(p: Platform, api: Any, config_id: str) -> dict[str, Any]:
    # Waits for a state, not for a speed: the bound only keeps a broken run from hanging.
    for _ in range(200):
        status = (await api.get(f"/telephony-configurations/{config_id}/status")).json()
        if status["ari"]["state"] == "failed" and status["ari"].get("last_error"):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"tenant B's listener never failed: {status}")


def _answers(mode: str, candidates: str) -> Any:
    def answer(method: str, path: str) -> tuple[int, Any]:
        if mode == "refuse":
            return 500, {"message": candidates}
        # "half-open": info answers (with the candidates where the version goes), everything else is
        # refused with the candidates as Asterisk's message, the config API returns them as the uri.
        if path == "/ari/asterisk/info":
            return 200, {"system": {"version": candidates}}
        if path.startswith("/ari/asterisk/modules/"):
            return 200, {"name": path.rsplit("/", 1)[-1], "status": candidates}
        if path.startswith("/ari/asterisk/config/dynamic/"):
            return 200, [{"attribute": "uri", "value": f"ws://{candidates}/x"}, {"attribute": "tls_enabled"}]
        if path == "/ari/channels/externalMedia":
            return 400, {"message": f"external_host must be a valid websocket_client connection id {candidates}"}
        return 400, {"message": candidates}

    return answer


@pytest.mark.parametrize("mode", ["refuse", "half-open"])
async def test_hostile_ari_learns_nothing_about_other_tenants(tmp_path: Path, mode: str) -> None:
    password_a = "tenantA-ari-" + secrets.token_hex(6)
    org_secret_a = "tenantA-llm-" + secrets.token_hex(6)
    decoys = ["decoy-" + secrets.token_hex(5) for _ in range(3)]
    candidates = " ".join([decoys[0], password_a, decoys[1], org_secret_a, decoys[2]])
    async with (
        run_hostile(_answers(mode, candidates)) as hostile,
        start_platform(tmp_path, telephony=True) as p,
    ):
        a = await p.create_user(org_name="Tenant A")
        async with p.api(a) as api_a:
            r = await api_a.post(
                "/telephony-configurations",
                json={
                    "name": "A's PBX",
                    "ari_endpoint_url": closed_port_url(),
                    "stasis_app_name": "tenant_a",
                    "app_password": password_a,
                    "websocket_client_name": "tenant_a",
                },
            )
            assert r.status_code == 201, r.text
            assert (await api_a.post("/secrets", json={"name": "llm", "value": org_secret_a})).status_code == 201
            # A's listener holds the decrypted password while B probes.
            await _wait_failed(p, api_a, r.json()["id"])

        b = await p.create_user(org_name="Tenant B")
        bodies: list[tuple[str, str]] = []
        async with p.api(b) as api_b:
            r = await api_b.post(
                "/telephony-configurations",
                json={
                    "name": "B's PBX",
                    "ari_endpoint_url": hostile.url,
                    "stasis_app_name": "tenant_b",
                    "app_password": "tenantB-" + secrets.token_hex(6),
                    "websocket_client_name": "tenant_b",
                },
            )
            assert r.status_code == 201, r.text
            cid = r.json()["id"]
            await _wait_failed(p, api_b, cid)
            status = await api_b.get(f"/telephony-configurations/{cid}/status")
            bodies.append(("API status", status.text))
        async with p.dashboard(b) as web:
            for path in (
                "/telephony-configurations",
                f"/telephony-configurations/{cid}",
                f"/telephony-configurations/{cid}/status.json",
            ):
                page = await web.get(path)
                assert page.status_code == 200, path
                bodies.append((path, page.text))
            diag = await web.post_form(f"/telephony-configurations/{cid}/diagnostics")
            assert diag.status_code == 200
            assert 'data-check="credentials"' in diag.text
            bodies.append(("diagnostics", diag.text))

    # B's server was really asked (so the answers above had every chance to carry its text back).
    assert any(path == "/ari/asterisk/info" for _, path, _ in hostile.requests)
    for where, body in bodies:
        # A's values never come back, in clear or as a tell-tale ***; nor does B's server's text.
        for value in (password_a, org_secret_a, *decoys):
            assert value not in body, f"{where} quotes the hostile server's text ({value})"
        assert "***" not in body, f"{where} shows a redaction of text B's server sent"
