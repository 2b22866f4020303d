"""ARI REST over one pooled httpx client per configuration.

Why a bounded pool: Asterisk's HTTP server accepts 100 sessions by default (http.conf
``sessionlimit``); a client that opens a connection per request under load exceeds it, and then calls
go unanswered and channels leak. One ``httpx.AsyncClient`` with ``max_connections`` well under that
limit queues requests instead. Credentials travel in the Authorization header only (never in URLs
that might be logged) and never appear in exception texts.

What the ARI server answers is *its* text, and the server is whatever the tenant typed into
``ari_endpoint_url``: so an :class:`AriError`'s ``message`` (which pages, statuses and run reasons
show) is always a fixed text of ours built from the status code, and the server's own words are
kept, capped, in ``remote`` — for matching a few known Asterisk answers and for the operator's log
(redacted with this configuration's own password), never for a tenant's eyes.

Every request goes through the outbound policy (``vr3ai.core.outbound``): the endpoint is a
tenant's choice, so we connect only to vetted addresses and never follow redirects. Network-level
failures all read the same (:data:`NO_ANSWER`): telling "refused", "timed out" and "no such host"
apart would let a tenant map hosts and ports from inside our network.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import httpx

from vr3ai.core.outbound import OutboundPolicy, OutboundRefused, default_policy
from vr3ai.logs import RedactingLogger, Redactor

log = logging.getLogger("vr3ai.telephony.ari.client")

HANGUP_REASONS = {
    "normal",
    "busy",
    "congestion",
    "no_answer",
    "timeout",
    "rejected",
    "unallocated",
    "normal_unspecified",
    "number_incomplete",
    "codec_mismatch",
    "interworking",
    "failure",
    "answered_elsewhere",
}


REMOTE_TEXT_MAX = 200
"""Characters of a server's error text kept in :attr:`AriError.remote` (and logged)."""
NO_ANSWER = "no HTTP answer (the host name did not resolve, nothing listens on that port, or the network dropped it)"
"""The one text for every network-level failure, whatever the cause."""


class AriError(Exception):
    """An ARI request failed. ``status`` is the HTTP status (0 = no HTTP answer). ``message`` is our
    own text (safe to show); ``remote`` the server's error text, capped: match it, log it, never
    show it."""

    def __init__(self, status: int, message: str, method: str = "", path: str = "", remote: str = "") -> None:
        super().__init__(f"ARI {method} {path} → {status or 'no answer'}: {message}")
        self.status = status
        self.message = message
        self.remote = remote[:REMOTE_TEXT_MAX]


WRITE_PROBE_BRIDGE = "vr3-write-probe-0000000000000000"
"""The bridge id :meth:`AriClient.may_write` deletes; no code creates one of that name."""

READ_ONLY_TEXT = (
    "ARI user '{user}' is read-only (read_only = yes in ari.conf): Asterisk accepts its connection but "
    "refuses every call with 403 Forbidden. Set read_only = no in its section of ari.conf and run "
    "'module reload res_ari.so' in the Asterisk CLI; VR3 AI reconnects by itself."
)
"""What the configuration's state and the diagnostics say about a read-only ARI user."""


def status_text(status: int) -> str:
    """The standard reason phrase of ``status`` — ours, not the one on the server's status line."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "unexpected HTTP status"


_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+~_-]{0,39}")


_HOST = re.compile(r"[0-9A-Za-z.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")
_PATH = re.compile(r"/[0-9A-Za-z._~/-]{0,200}")


def safe_ws_uri(value: Any) -> str | None:
    """A ``ws(s)://host[:port]/path`` URI read from the server (websocket_client.conf's ``uri``),
    rebuilt from its checked parts, or None when it does not have that shape."""
    if not isinstance(value, str) or len(value) > 300:
        return None
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    host = parts.netloc.rsplit("@", 1)[-1]
    host = host[: host.rindex(":")] if port is not None else host
    path = parts.path or "/"
    if parts.scheme.lower() not in ("ws", "wss") or not _HOST.fullmatch(host) or not _PATH.fullmatch(path):
        return None
    return f"{parts.scheme.lower()}://{host}{f':{port}' if port is not None else ''}{path}"


def safe_version(info: Any) -> str | None:
    """``system.version`` of ``GET /asterisk/info`` if it looks like a version, else None: the one
    value of a server's answer we show, so it is held to a version's shape."""
    system = info.get("system") if isinstance(info, dict) else None
    version = system.get("version") if isinstance(system, dict) else None
    return version if isinstance(version, str) and _VERSION.fullmatch(version) else None


FIRST_WITH_CHANNEL_ID = {20: (20, 17, 0), 22: (22, 7, 0)}
"""Per release branch, the first release whose MEDIA_START names the call's channel (``channel_id``,
asterisk #1544). Only the branches whose version is known are listed: others are not judged."""


def release_problem(version: str | None) -> str | None:
    """Why Asterisk ``version`` (``system.version`` of ``/asterisk/info``) cannot carry VR3 AI's
    calls, or None when it can or we cannot tell (an unlisted branch, a GIT build).

    Before ``channel_id`` in MEDIA_START, a media socket does not say which call it belongs to, so
    VR3 AI refuses it and every call fails at media setup."""
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", version or "")
    if m is None:
        return None
    parts = (int(m[1]), int(m[2]), int(m[3]))
    first = FIRST_WITH_CHANNEL_ID.get(parts[0])
    if first is None or parts >= first:
        return None
    needed = " or ".join(".".join(map(str, v)) for v in sorted(FIRST_WITH_CHANNEL_ID.values(), reverse=True))
    return (
        f"Asterisk {version} cannot carry VR3 AI's calls: its media WebSocket does not say which call it "
        f"belongs to (channel_id in MEDIA_START), so every call would fail at media setup. Upgrade "
        f"Asterisk to {needed} or later."
    )


def ari_base_url(endpoint_url: str) -> str:
    """``http://host:8088`` (as the guide asks users to enter) → ``http://host:8088/ari``."""
    url = endpoint_url.strip().rstrip("/")
    if url.endswith("/ari"):
        url = url[: -len("/ari")]
    return url + "/ari"


def events_url(endpoint_url: str, app: str) -> str:
    parts = urlsplit(ari_base_url(endpoint_url))
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path}/events?app={app}&subscribeAll=false"


class AriClient:
    def __init__(
        self,
        endpoint_url: str,
        username: str,
        password: str,
        *,
        max_connections: int = 16,
        timeout: float = 5.0,
        policy: OutboundPolicy | None = None,
    ) -> None:
        self.base_url = ari_base_url(endpoint_url)
        self.username = username
        self.log = RedactingLogger(log, Redactor([password]))
        self.policy = policy or default_policy()
        self._http = self.policy.http_client(
            base_url=self.base_url,
            auth=httpx.BasicAuth(username, password),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        ok_missing: bool = False,
    ) -> Any:
        """Send one request; JSON body or None (204). ``ok_missing``: a 404 returns None (a race we
        expect, e.g. deleting a channel that just hung up)."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = await self._http.request(method, path, params=clean, json=json)
        except OutboundRefused as e:
            raise AriError(0, str(e), method, path) from None
        except httpx.HTTPError as e:
            # The cause stays in our own log (for the platform's operator), not in the text.
            log.info("ARI request failed", extra={"url": self.base_url, "error": type(e).__name__})
            raise AriError(0, NO_ANSWER, method, path) from None
        if resp.status_code == 404 and ok_missing:
            return None
        if resp.status_code >= 300:  # ARI never redirects; a 3xx is not followed (a new, unvetted target)
            remote = _message(resp)
            if resp.status_code != 404:
                # The operator's view of what the server said; the tenant sees only status_text().
                self.log.info(
                    "ARI request refused",
                    extra={"method": method, "path": path, "status": resp.status_code, "ari_message": remote},
                )
            raise AriError(resp.status_code, status_text(resp.status_code), method, path, remote)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            return resp.text

    # --- asterisk ---------------------------------------------------------------------------------
    async def info(self) -> dict[str, Any]:
        return await self.request("GET", "/asterisk/info")

    async def may_write(self) -> bool:
        """Whether this ARI user may change anything (``read_only = no`` in ari.conf).

        Asterisk answers every non-GET request of a read-only user with 403 before it even looks
        the resource up (res_ari.c), and everyone else's with the resource's own answer. So
        deleting a bridge that cannot exist is a write that changes nothing: 404 means writable,
        403 read-only. Any other answer raises (we cannot tell)."""
        try:
            await self.request("DELETE", f"/bridges/{WRITE_PROBE_BRIDGE}")
        except AriError as e:
            if e.status == 404:
                return True
            if e.status == 403:
                return False
            raise
        return True  # a bridge of that name existed and is gone: writable either way

    async def module(self, name: str) -> dict[str, Any] | None:
        return await self.request("GET", f"/asterisk/modules/{name}", ok_missing=True)

    async def applications(self) -> list[dict[str, Any]]:
        return await self.request("GET", "/applications")

    async def application(self, name: str) -> dict[str, Any] | None:
        return await self.request("GET", f"/applications/{name}", ok_missing=True)

    # --- channels ---------------------------------------------------------------------------------
    async def channels(self) -> list[dict[str, Any]]:
        return await self.request("GET", "/channels")

    async def channel(self, channel_id: str) -> dict[str, Any] | None:
        return await self.request("GET", f"/channels/{channel_id}", ok_missing=True)

    async def answer(self, channel_id: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/answer")

    async def hangup(self, channel_id: str, reason: str = "normal") -> bool:
        """Hang up; False if the channel was already gone."""
        assert reason in HANGUP_REASONS, reason
        try:
            await self.request("DELETE", f"/channels/{channel_id}", params={"reason": reason})
        except AriError as e:
            if e.status == 404:
                return False
            raise
        return True

    async def external_media(
        self,
        *,
        app: str,
        channel_id: str,
        external_host: str,
        fmt: str = "ulaw",
        transport_data: str | None = None,
        variables: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        params = {
            "app": app,
            "channelId": channel_id,
            "external_host": external_host,
            "transport": "websocket",
            "encapsulation": "none",
            "connection_type": "client",
            "format": fmt,
            "direction": "both",
            "transport_data": transport_data,
        }
        body = {"variables": variables} if variables else None
        return await self.request("POST", "/channels/externalMedia", params=params, json=body)

    async def originate(
        self,
        *,
        endpoint: str,
        app: str,
        app_args: str,
        channel_id: str,
        caller_id: str | None = None,
        timeout_s: int = 30,
        formats: str | None = "ulaw",
    ) -> dict[str, Any]:
        params = {
            "endpoint": endpoint,
            "app": app,
            "appArgs": app_args,
            "channelId": channel_id,
            "callerId": caller_id,
            "timeout": timeout_s,
            # Without formats a Local/ channel runs at slin192 and gets resampled twice (quieter).
            "formats": formats,
        }
        return await self.request("POST", "/channels", params=params)

    # --- bridges ----------------------------------------------------------------------------------
    async def bridges(self) -> list[dict[str, Any]]:
        return await self.request("GET", "/bridges")

    async def create_bridge(self, bridge_id: str, name: str = "") -> dict[str, Any]:
        return await self.request("POST", "/bridges", params={"type": "mixing", "bridgeId": bridge_id, "name": name})

    async def add_channels(self, bridge_id: str, channel_ids: list[str]) -> None:
        await self.request("POST", f"/bridges/{bridge_id}/addChannel", params={"channel": ",".join(channel_ids)})

    async def delete_bridge(self, bridge_id: str) -> bool:
        try:
            await self.request("DELETE", f"/bridges/{bridge_id}")
        except AriError as e:
            if e.status == 404:
                return False
            raise
        return True


def _message(resp: httpx.Response) -> str:
    """The server's error text, capped (ARI answers ``{"message": ...}``)."""
    try:
        data = resp.json()
        if isinstance(data, dict) and "message" in data:
            return str(data["message"])[:REMOTE_TEXT_MAX]
    except ValueError:
        pass
    return resp.text.strip()[:REMOTE_TEXT_MAX]

