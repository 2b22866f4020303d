"""The guide's troubleshooting list, checked by the machine instead of by a person.

:func:`run_diagnostics` walks one ARI configuration from the outside in — can we reach ARI, do the
credentials work, are the modules loaded, is our Stasis app ours, does Asterisk know the WebSocket
client name, can Asterisk reach our media WebSocket, does every phone number lead to a workflow,
is there quota left — and returns one :class:`Check` per item with the fix in the guide's words.

Choices worth knowing:

* Diagnostics use their **own short-lived** :class:`AriClient` (3 s timeouts, two connections)
  with the configuration's decrypted password, so a slow or wedged Asterisk cannot eat into the
  listener's connection pool, and a broken listener cannot hide a working Asterisk. The password
  stays inside that client (HTTP Basic header); no check's text ever contains it.
* **No server's text reaches the page.** The ARI endpoint is whatever the tenant typed, so what it
  answers is never quoted: a check says the status code and our own words (:class:`AriError`'s
  ``message``); the server's error text is only *matched* against Asterisk's known answers. The few
  values we do show (version, websocket_client ``uri``, module status) are held to their expected
  shape first. Details are redacted with this configuration's own passwords only — never with a
  process-wide set, which would tell one tenant which of its strings are another tenant's secrets.
* **WebSocket client name without side effects**: ``POST /channels/externalMedia`` with an *empty*
  ``format``. Asterisk validates ``external_host`` (the websocket_client section) before ``format``
  (``res/ari/resource_channels.c``; confirmed in our ground-truth capture), so
  ``400 external_host must be a valid websocket_client connection id.`` means the name is unknown and
  ``400 format cannot be empty`` means it exists — and no channel is created either way. Should some
  Asterisk version accept the request anyway, the channel id we passed is hung up at once.
* **Media reachability** is the only check that creates something: a real externalMedia channel
  with a dedicated ``vr3m-<tag>-diag…`` id (our prefix, so the listener's reconcile would also clean
  it up), registered with the media server first. Success is our media server receiving Asterisk's
  connection; ``ChannelDestroyed`` cause 3 means Asterisk could not connect. It runs only while the
  listener is connected (the channel's events reach us through it) and is always hung up.
* **Not a port scanner**: an endpoint that gives no HTTP answer gets one fixed text, whether the
  name did not resolve, the port was closed or the packets were dropped (the fix list still says
  what to check); details come only from an HTTP answer. The client follows the outbound policy.
* ``ok`` is ``True`` (pass), ``False`` (fail, with a fix) or ``None`` (not checked or cannot tell,
  with the reason in ``detail``). Checks that depend on an earlier failure are reported as ``None``
  rather than piling up failures with the same cause.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import select

from vr3ai.db.models import Organization, PhoneNumber, TelephonyConfiguration, Workflow
from vr3ai.logs import Redactor
from vr3ai.telephony.ari.client import READ_ONLY_TEXT, AriClient, AriError, release_problem, safe_version, safe_ws_uri
from vr3ai.telephony.ari.snippets import MEDIA_PATH, TLS_NOTE, media_ws_uri

if TYPE_CHECKING:
    from vr3ai.telephony.ports import ProcessServices

log = logging.getLogger("vr3ai.telephony.ari.diagnostics")

REQUEST_TIMEOUT_S = 3.0
DETAIL_MAX = 600
"""Longest check text shown."""
MEDIA_PROBE_TIMEOUT_S = 8.0
"""Asterisk gives up on a media connection after reconnect_attempts × (timeout + interval): ~2-4 s
with the defaults; we wait a little longer so a slow TLS handshake still counts as reachable."""

FIX_REACH = (
    "Verify the ARI endpoint URL is correct and reachable from your VR3 AI instance. Check that the Asterisk "
    "HTTP server is running (http.conf has enabled = yes). Ensure firewall rules allow traffic on the ARI port "
    "(default: 8088)."
)
FIX_CREDENTIALS = (
    "Verify the Stasis App Name matches the ARI user section name in ari.conf. Check the App Password matches "
    "the password in ari.conf. Ensure there are no extra spaces in the credentials."
)
FIX_READ_ONLY = (
    "In ari.conf, set read_only = no in the section named like the Stasis App Name, then run "
    "module reload res_ari.so in the Asterisk CLI."
)
FIX_RES_ARI = (
    "Confirm the ARI module is loaded: run module show like res_ari in the Asterisk CLI. ari.conf must have "
    "enabled = yes in [general]."
)
FIX_CHAN_WEBSOCKET = (
    "Verify chan_websocket is loaded: run module show like chan_websocket in the Asterisk CLI (module load "
    "chan_websocket.so). Known-working setups: Asterisk 22+, or Asterisk 20 LTS with these modules included."
)
FIX_RES_WEBSOCKET_CLIENT = (
    "Verify res_websocket_client is loaded: run module show like res_websocket_client in the Asterisk CLI "
    "(module load res_websocket_client.so); it loads websocket_client.conf."
)
FIX_APP = (
    "Confirm the ARI WebSocket connection is active. Verify the Stasis App Name matches the ARI user section "
    "name in ari.conf, and that no other program connects with the same ARI user."
)
FIX_WS_NAME = (
    "Ensure the WebSocket Client Name in VR3 AI matches the section name in websocket_client.conf, then run "
    "module reload res_websocket_client.so in the Asterisk CLI."
)
FIX_URI = (
    "Check that websocket_client.conf is correctly configured with the right VR3 AI URI: the URI in "
    "websocket_client.conf must point to the correct VR3 AI host and port (see the Asterisk setup panel)."
)
FIX_MEDIA = (
    "Check the URI in websocket_client.conf points to the correct VR3 AI host and port. Verify network "
    "connectivity and firewall rules allow WebSocket traffic between Asterisk and VR3 AI. Verify the VR3 AI "
    "instance is running and accepting WebSocket connections. If using TLS, ensure certificates are correctly "
    "configured on both sides and tls_enabled = yes."
)
FIX_NUMBERS = (
    "Verify the called extension is added as a phone number under your ARI configuration in "
    "/telephony-configurations and has an Inbound workflow assigned. Confirm the workflow exists and belongs "
    "to the same organization as the ARI config."
)
FIX_WARNINGS = (
    "Ensure the dialplan routes calls to Stasis(your_app_name) and the called extension is a phone number of "
    'this configuration; the messages above are the warnings VR3 AI logged ("no matching phone number '
    'registered for config", "has no inbound_workflow_id assigned").'
)
FIX_QUOTA = "Check that your organization has available quota (Account page: concurrent calls and monthly minutes)."

_UNKNOWN_WS_CLIENT = "external_host must be a valid websocket_client connection id"
_FORMAT_EMPTY = "format cannot be empty"


@dataclass
class Check:
    name: str
    ok: bool | None
    """True = pass, False = fail (see ``fix``), None = not checked / cannot tell (see ``detail``)."""
    detail: str
    fix: str = ""
    key: str = ""
    """Stable identifier for tests and the UI (``ari_reachable``, ``credentials``, ...)."""


@dataclass
class _Target:
    row: TelephonyConfiguration
    org: Organization
    numbers: list[PhoneNumber]
    workflows: dict[str, Workflow]


class _MediaProbe:
    """Stands in for a call in the listener's channel map while the media probe runs: the listener
    hands it the probe channel's events instead of treating the channel as an orphan."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.started: asyncio.Future[None] = loop.create_future()
        self.destroyed: asyncio.Future[tuple[int | None, str]] = loop.create_future()

    def feed(self, event: dict[str, Any]) -> None:
        etype = event.get("type")
        if etype == "StasisStart" and not self.started.done():
            self.started.set_result(None)
        elif etype == "ChannelDestroyed" and not self.destroyed.done():
            cause = event.get("cause")
            self.destroyed.set_result((cause if isinstance(cause, int) else None, str(event.get("cause_txt") or "")))


async def run_diagnostics(
    services: ProcessServices,
    config_id: str,
    *,
    organization_id: str | None = None,
    media_probe: bool = True,
) -> list[Check]:
    """Check one configuration. ``organization_id``: refuse (LookupError) a configuration of another
    organization, exactly like a missing one. ``media_probe=False`` skips the one check that places
    a (short, silent) channel on the Asterisk."""
    target = await _load(services, config_id, organization_id)
    row = target.row
    checks: list[Check] = []
    url = row.ari_endpoint_url
    try:
        password = services.box.decrypt(row.app_password_enc)
    except ValueError as e:
        checks.append(Check("ARI credentials", False, str(e), "Enter the App Password again (Edit).", "credentials"))
        checks += await _local_checks(services, target)
        return checks

    client = AriClient(
        url, row.stasis_app_name, password, max_connections=2, timeout=REQUEST_TIMEOUT_S, policy=services.outbound
    )
    redactor = Redactor([password])
    try:
        authenticated = await _check_ari(client, row, checks)
        if authenticated:
            modules_ok = await _check_modules(client, checks)
        else:
            modules_ok = False
            for key, name in (
                ("chan_websocket", "chan_websocket loaded"),
                ("res_websocket_client", "res_websocket_client loaded"),
            ):
                checks.append(Check(name, None, "not checked: ARI did not accept our requests", "", key))
        checks.append(await _check_app(services, client, row, authenticated))
        name_known = await _check_ws_client_name(client, row) if authenticated else None
        checks.append(
            name_known
            or Check(
                "WebSocket Client Name known to Asterisk",
                None,
                "not checked: ARI did not accept our requests",
                "",
                "ws_client_name",
            )
        )
        if name_known is not None and name_known.ok is False:
            # Without a section of that name there is no uri to compare; saying "compare it by
            # hand" here would send the operator to the wrong file section.
            checks.append(
                Check(
                    "websocket_client.conf URI points to VR3 AI",
                    None,
                    "not checked: Asterisk does not know this WebSocket Client Name (see above)",
                    "",
                    "ws_client_uri",
                )
            )
        else:
            checks.append(await _check_ws_client_uri(services, client, row, authenticated))
        checks.append(
            await _check_media(
                services, client, row, enabled=media_probe and modules_ok and bool(name_known and name_known.ok)
            )
        )
    finally:
        await client.aclose()
    checks += await _local_checks(services, target)
    for c in checks:
        # Second line of defence: this configuration's password never rides along (no other value
        # is looked for, so what is replaced tells nobody anything they did not type themselves).
        c.detail = redactor.redact(c.detail)[:DETAIL_MAX]
    log.info(
        "diagnostics finished",
        extra={"config_id": row.id, "failed": [c.key for c in checks if c.ok is False]},
    )
    return checks


async def _load(services: ProcessServices, config_id: str, organization_id: str | None) -> _Target:
    async with services.db.session() as s:
        row = await s.get(TelephonyConfiguration, config_id)
        if row is None or (organization_id is not None and row.organization_id != organization_id):
            raise LookupError("telephony configuration not found")
        org = await s.get(Organization, row.organization_id)
        assert org is not None
        numbers = list(
            (
                await s.scalars(
                    select(PhoneNumber)
                    .where(PhoneNumber.telephony_configuration_id == row.id)
                    .order_by(PhoneNumber.address)
                )
            ).all()
        )
        wf_ids = {n.inbound_workflow_id for n in numbers if n.inbound_workflow_id}
        workflows = (
            {w.id: w for w in (await s.scalars(select(Workflow).where(Workflow.id.in_(wf_ids)))).all()}
            if wf_ids
            else {}
        )
    return _Target(row, org, numbers, workflows)


# --- ARI ------------------------------------------------------------------------------------------


async def _check_ari(client: AriClient, row: TelephonyConfiguration, checks: list[Check]) -> bool:
    """ARI reachable, credentials valid, res_ari answering. Returns whether requests are accepted."""
    base = client.base_url
    t0 = time.monotonic()
    try:
        info = await client.info()
    except AriError as e:
        if e.status == 0:
            # e.message is our own text (NO_ANSWER or the outbound policy's refusal), whatever the
            # network did: the cause of a failure is not told apart (no port scanning through us).
            checks.append(
                Check(
                    "ARI endpoint reachable", False, f"No answer from {base}: {e.message}.", FIX_REACH, "ari_reachable"
                )
            )
            checks.append(Check("ARI credentials", None, "not checked: ARI is not reachable", "", "credentials"))
            checks.append(Check("ARI module (res_ari)", None, "not checked: ARI is not reachable", "", "res_ari"))
            return False
        checks.append(
            Check("ARI endpoint reachable", True, f"Asterisk's HTTP server answers at {base}.", "", "ari_reachable")
        )
        if e.status == 401:
            checks.append(
                Check(
                    "ARI credentials",
                    False,
                    f"ARI rejected the user '{row.stasis_app_name}' and its password (HTTP 401). The Stasis App "
                    "Name must match the user section in ari.conf and the App Password must match its password, "
                    "with no extra spaces.",
                    FIX_CREDENTIALS,
                    "credentials",
                )
            )
            checks.append(Check("ARI module (res_ari)", None, "not checked: credentials rejected", "", "res_ari"))
        elif e.status == 404:
            checks.append(Check("ARI credentials", None, "not checked: no ARI at this URL", "", "credentials"))
            checks.append(
                Check(
                    "ARI module (res_ari)",
                    False,
                    f"{base} answers HTTP but has no ARI (HTTP 404): res_ari is not loaded or ari.conf has "
                    "enabled = no, or the ARI Endpoint URL points to another web server.",
                    FIX_RES_ARI,
                    "res_ari",
                )
            )
        else:
            checks.append(
                Check(
                    "ARI credentials",
                    None,
                    f"ARI answered HTTP {e.status}: {e.message}",
                    FIX_CREDENTIALS,
                    "credentials",
                )
            )
            checks.append(Check("ARI module (res_ari)", None, "not checked", "", "res_ari"))
        return False
    ms = (time.monotonic() - t0) * 1000
    version = safe_version(info)
    checks.append(
        Check(
            "ARI endpoint reachable",
            True,
            f"{base} answered in {ms:.0f} ms" + (f" (Asterisk {version})." if version else "."),
            "",
            "ari_reachable",
        )
    )
    checks.append(Check("ARI credentials", True, f"ARI accepted the user '{row.stasis_app_name}'.", "", "credentials"))
    checks.append(Check("ARI module (res_ari)", True, "res_ari answers ARI requests.", "", "res_ari"))
    checks.append(await _check_write(client, row))
    if problem := release_problem(version):
        checks.append(Check("Asterisk release", False, problem, problem.rsplit(". ", 1)[-1], "asterisk_release"))
    elif version:
        checks.append(
            Check(
                "Asterisk release", True, f"Asterisk {version} names the call in MEDIA_START.", "", "asterisk_release"
            )
        )
    return True


async def _check_write(client: AriClient, row: TelephonyConfiguration) -> Check:
    """A read-only ARI user passes every check above and then fails every call at answer (403)."""
    name = "ARI user may control calls"
    try:
        writable = await client.may_write()
    except AriError as e:
        return Check(name, None, f"Could not tell: ARI answered a write probe with {e.message}.", "", "ari_write")
    if not writable:
        return Check(name, False, READ_ONLY_TEXT.format(user=row.stasis_app_name), FIX_READ_ONLY, "ari_write")
    return Check(name, True, f"ARI user '{row.stasis_app_name}' is not read-only.", "", "ari_write")


async def _module_status(client: AriClient, name: str) -> str | None:
    """'Running', another status word, None when Asterisk does not know the module."""
    try:
        mod = await client.module(f"{name}.so")
    except AriError as e:
        return f"unknown (HTTP {e.status or 'no answer'}: {e.message})"
    if mod is None:
        return None
    status = mod.get("status") if isinstance(mod, dict) else None
    # Asterisk's words are "Running" and "Not Running"; anything else is not quoted.
    return status if status in ("Running", "Not Running") else "unknown"


async def _check_modules(client: AriClient, checks: list[Check]) -> bool:
    ok_all = True
    for key, fix in (("chan_websocket", FIX_CHAN_WEBSOCKET), ("res_websocket_client", FIX_RES_WEBSOCKET_CLIENT)):
        status = await _module_status(client, key)
        if status is not None and status.lower() == "running":
            checks.append(Check(f"{key} loaded", True, f"{key}.so is Running.", "", key))
            continue
        ok_all = False
        detail = f"{key}.so is not loaded in this Asterisk." if status is None else f"{key}.so status: {status}."
        checks.append(Check(f"{key} loaded", False, detail + " External media cannot work without it.", fix, key))
    return ok_all


async def _listener_status(services: ProcessServices, config_id: str) -> dict[str, Any] | None:
    if services.telephony is None:
        return None
    status: Any = services.telephony.status(config_id)
    if inspect.isawaitable(status):
        status = await status
    return dict(status.get("ari") or {}) if isinstance(status, dict) else None


async def _check_app(
    services: ProcessServices, client: AriClient, row: TelephonyConfiguration, authenticated: bool
) -> Check:
    name = "Stasis app registered by VR3 AI"
    app = row.stasis_app_name
    ari = await _listener_status(services, row.id)
    if ari is None:
        return Check(
            name,
            None,
            "The telephony listener is not running in this VR3 AI process, so nothing holds the Stasis app.",
            "Start VR3 AI with telephony enabled (VR3AI_START_TELEPHONY=1).",
            "stasis_app",
        )
    state = str(ari.get("state") or "unknown")
    error = ari.get("last_error")
    if state == "replaced":
        return Check(
            name,
            False,
            f"Another client subscribed the Stasis app '{app}' and now receives its calls (ApplicationReplaced). "
            "VR3 AI does not take it back by itself, so two programs do not steal calls from each other.",
            FIX_APP + " Then click Reconnect on this page.",
            "stasis_app",
        )
    if state != "connected":
        detail = f"The ARI WebSocket connection is {state}" + (f": {error}" if error else ".")
        if not row.enabled:
            detail = "This configuration is disabled, so VR3 AI does not connect to its Stasis app."
        return Check(name, False, detail, FIX_APP, "stasis_app")
    if not authenticated:
        return Check(
            name, None, "The listener reports connected, but ARI rejected our check requests.", FIX_APP, "stasis_app"
        )
    try:
        found = await client.application(app)
    except AriError as e:
        return Check(name, None, f"Could not ask Asterisk about the app: {e.message}", "", "stasis_app")
    if found is None:
        return Check(
            name,
            False,
            f"The listener reports connected, but Asterisk does not list the application '{app}'.",
            FIX_APP,
            "stasis_app",
        )
    return Check(
        name,
        True,
        f"The ARI WebSocket connection is active and Asterisk lists the application '{app}'. The dialplan must "
        f"send calls to Stasis({app}).",
        "",
        "stasis_app",
    )


async def _check_ws_client_name(client: AriClient, row: TelephonyConfiguration) -> Check:
    name = "WebSocket Client Name known to Asterisk"
    ws_name = row.websocket_client_name
    channel_id = f"vr3m-{_tag(row.id)}-diag{secrets.token_hex(4)}"
    params = {
        "app": row.stasis_app_name,
        "channelId": channel_id,
        "external_host": ws_name,
        "transport": "websocket",
        "encapsulation": "none",
        "connection_type": "client",
        # Empty on purpose: Asterisk rejects it only after it has looked the section up (see docstring).
        "format": "",
    }
    try:
        await client.request("POST", "/channels/externalMedia", params=params)
    except AriError as e:
        if e.status == 400 and _UNKNOWN_WS_CLIENT in e.remote:
            return Check(
                name,
                False,
                f"Asterisk has no websocket_client section named '{ws_name}' ({_UNKNOWN_WS_CLIENT}).",
                FIX_WS_NAME,
                "ws_client_name",
            )
        if e.status == 400 and _FORMAT_EMPTY in e.remote:
            return Check(name, True, f"websocket_client.conf has a section [{ws_name}].", "", "ws_client_name")
        return Check(
            name, None, f"Asterisk answered HTTP {e.status or 'no answer'}: {e.message}", FIX_WS_NAME, "ws_client_name"
        )
    # This Asterisk created a channel despite the empty format: remove it before it dials anyone.
    try:
        await client.hangup(channel_id)
    except AriError:
        pass
    return Check(name, True, f"Asterisk accepted the WebSocket client '{ws_name}'.", "", "ws_client_name")


async def _check_ws_client_uri(
    services: ProcessServices, client: AriClient, row: TelephonyConfiguration, authenticated: bool
) -> Check:
    name = "websocket_client.conf URI points to VR3 AI"
    settings = services.settings
    expected = media_ws_uri(settings.effective_public_url(), tls_port=_tls_port(services))
    if not authenticated:
        return Check(name, None, f"not checked; it should be {expected}", "", "ws_client_uri")
    try:
        data = await client.request(
            "GET", f"/asterisk/config/dynamic/res_websocket_client/websocket_client/{row.websocket_client_name}"
        )
    except AriError:
        data = None
    # Only these two attributes are read: the object also holds the media password.
    attrs = {
        str(i.get("attribute")): i.get("value")
        for i in (data if isinstance(data, list) else [])
        if isinstance(i, dict) and i.get("attribute") in ("uri", "tls_enabled")
    }
    uri = safe_ws_uri(attrs.get("uri"))
    if not uri:
        return Check(
            name,
            None,
            f"Asterisk does not expose websocket_client.conf over ARI; compare it by hand: uri = {expected}",
            FIX_URI,
            "ws_client_uri",
        )
    got, want = urlsplit(uri), urlsplit(expected)
    tls_on = str(attrs.get("tls_enabled", "")).lower() in ("yes", "true", "1", "on")
    if got.scheme.lower() == "wss" and "tls_enabled" in attrs and not tls_on:
        return Check(
            name,
            False,
            f"uri = {uri} but tls_enabled is not yes. {TLS_NOTE}",
            "Add tls_enabled = yes to the section.",
            "ws_client_uri",
        )
    if got.path.rstrip("/") != MEDIA_PATH:
        return Check(
            name,
            False,
            f"uri = {uri} has the path '{got.path or '/'}'; VR3 AI listens on {MEDIA_PATH}.",
            FIX_URI,
            "ws_client_uri",
        )
    if (got.scheme.lower(), got.hostname, got.port) != (want.scheme.lower(), want.hostname, want.port):
        return Check(
            name,
            None,
            f"uri = {uri}, this VR3 AI's public URL gives {expected}. Fine if both name this server; otherwise fix "
            "the uri (or set VR3AI_PUBLIC_URL).",
            FIX_URI,
            "ws_client_uri",
        )
    return Check(name, True, f"uri = {uri}", "", "ws_client_uri")


async def _check_media(
    services: ProcessServices, client: AriClient, row: TelephonyConfiguration, *, enabled: bool
) -> Check:
    name = "Media WebSocket reachable from Asterisk"
    media = services.media
    manager = services.telephony
    conn = manager.connection(row.id) if manager is not None and hasattr(manager, "connection") else None
    if not enabled:
        return Check(name, None, "not checked: the checks above must pass first", "", "media")
    if media is None or not hasattr(media, "expect") or conn is None or not getattr(conn, "connected", False):
        return Check(
            name,
            None,
            "not checked: needs the ARI WebSocket connection to be active and the media server running in this process",
            "",
            "media",
        )
    channel_id = f"vr3m-{_tag(row.id)}-diag{secrets.token_hex(4)}"
    auth = None
    if row.media_username and row.media_password_enc:
        auth = (row.media_username, services.box.decrypt(row.media_password_enc))
    connected = media.expect(channel_id, basic_auth=auth)
    probe = _MediaProbe()
    # The listener routes a channel's events to whatever object this map holds for its id.
    calls: dict[str, Any] = conn.calls
    calls[channel_id] = probe
    t0 = time.monotonic()
    try:
        try:
            await client.external_media(
                app=row.stasis_app_name, channel_id=channel_id, external_host=row.websocket_client_name
            )
        except AriError as e:
            return Check(name, False, f"externalMedia failed: {e.message} (HTTP {e.status})", FIX_MEDIA, "media")
        await asyncio.wait(
            {connected, probe.destroyed}, timeout=MEDIA_PROBE_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        ms = (time.monotonic() - t0) * 1000
        if connected.done() and not connected.cancelled() and connected.exception() is None:
            return Check(name, True, f"Asterisk connected to VR3 AI's media WebSocket in {ms:.0f} ms.", "", "media")
        if connected.done() and not connected.cancelled() and connected.exception() is not None:
            return Check(
                name, False, f"VR3 AI refused Asterisk's media connection: {connected.exception()}", FIX_MEDIA, "media"
            )
        if probe.destroyed.done():
            cause, cause_txt = probe.destroyed.result()
            expected = media_ws_uri(services.settings.effective_public_url(), tls_port=_tls_port(services))
            if cause == 3 or cause is None:
                detail = (
                    f"Asterisk could not connect to the media WebSocket (channel destroyed, cause {cause}"
                    f"{' ' + cause_txt if cause_txt else ''}). VR3 AI expects it at {expected}."
                )
                return Check(name, False, detail, FIX_MEDIA, "media")
            # Any other cause: Asterisk got through, then the connection was closed. The media server
            # closes a connection whose Basic credentials do not match this configuration's.
            return Check(
                name,
                False,
                f"Asterisk reached VR3 AI at {expected} but the connection was closed (cause {cause}"
                f"{' ' + cause_txt if cause_txt else ''}): the username and password of the websocket_client.conf "
                "section must match this configuration's media username and password.",
                FIX_MEDIA,
                "media",
            )
        return Check(name, False, f"Asterisk did not connect within {MEDIA_PROBE_TIMEOUT_S:.0f} s.", FIX_MEDIA, "media")
    finally:
        if calls.get(channel_id) is probe:
            del calls[channel_id]
        try:
            await client.hangup(channel_id)
        except AriError:
            pass
        if not connected.done():
            media.cancel(channel_id)


# --- local (database) checks ----------------------------------------------------------------------


async def _local_checks(services: ProcessServices, target: _Target) -> list[Check]:
    out = [_check_numbers(target), await _check_recent_warnings(services, target.row.id)]
    out.append(await _check_quota(services, target.org))
    return out


def _check_numbers(target: _Target) -> Check:
    name = "Phone numbers have an Inbound workflow"
    if not target.numbers:
        return Check(
            name,
            False,
            "This configuration has no phone numbers, so every inbound call is refused.",
            "Add each SIP extension (e.g. 8000) in the Phone numbers section and set its Inbound workflow. "
            + FIX_NUMBERS,
            "phone_numbers",
        )
    parts: list[str] = []
    bad = False
    for n in target.numbers:
        wf = target.workflows.get(n.inbound_workflow_id or "")
        if n.inbound_workflow_id is None:
            bad = True
            parts.append(f"{n.address} → no Inbound workflow")
        elif wf is None or wf.organization_id != target.row.organization_id:
            bad = True
            parts.append(f"{n.address} → a workflow that does not exist in this organization")
        else:
            parts.append(f"{n.address} → {wf.name}")
    return Check(name, not bad, "; ".join(parts), FIX_NUMBERS if bad else "", "phone_numbers")


async def _check_recent_warnings(services: ProcessServices, config_id: str) -> Check:
    name = "No recent call warnings"
    if services.telephony is None:
        return Check(name, None, "not checked: the telephony listener is not running", "", "recent_warnings")
    status: Any = services.telephony.status(config_id)
    if inspect.isawaitable(status):
        status = await status
    events = [e for e in (status.get("recent_events") or []) if isinstance(e, dict)] if isinstance(status, dict) else []
    bad = [e for e in events if e.get("level") in ("warning", "error")]
    if not bad:
        return Check(name, True, "No refused or failed calls since the listener started.", "", "recent_warnings")
    shown = "; ".join(str(e.get("message")) for e in bad[-3:])
    more = f" (and {len(bad) - 3} earlier)" if len(bad) > 3 else ""
    return Check(name, False, shown + more, FIX_WARNINGS, "recent_warnings")


async def _check_quota(services: ProcessServices, org: Organization) -> Check:
    name = "Organization quota available"
    async with services.db.session() as s:
        fresh = await s.get(Organization, org.id)
        assert fresh is not None
        q = await services.quota.status(s, fresh)
    minutes = (
        f"{q.minutes_used:g} of {q.minutes_per_month} minutes used this month"
        if q.minutes_per_month is not None
        else f"{q.minutes_used:g} minutes used this month (no monthly limit)"
    )
    calls = f"{q.active_calls} of {q.max_concurrent_calls} concurrent calls in use"
    if q.max_concurrent_calls <= 0:
        return Check(name, False, f"{calls}: this organization may not take any call.", FIX_QUOTA, "quota")
    if q.minutes_per_month is not None and q.seconds_used >= q.minutes_per_month * 60:
        return Check(name, False, f"Monthly minutes exhausted: {minutes}.", FIX_QUOTA, "quota")
    if q.active_calls >= q.max_concurrent_calls:
        return Check(name, False, f"All call slots are busy right now: {calls}.", FIX_QUOTA, "quota")
    return Check(name, True, f"{calls}; {minutes}.", "", "quota")


def _tag(config_id: str) -> str:
    # The listener's channel-id tag (AriConnection.tag): reconcile recognises ids with it as ours.
    return config_id.replace("-", "")[:8]


def _tls_port(services: ProcessServices) -> int:
    media = services.settings.media
    return media.tls_port if media.tls_port and media.tls_cert and media.tls_key else 0
