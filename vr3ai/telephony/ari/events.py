"""The ARI events WebSocket of one configuration: connect, stay alive, reconnect, explain failures.

* Before each connect a REST pre-flight (``GET /asterisk/info``, the two media modules) turns the
  usual set-up mistakes into sentences a PBX operator can act on: wrong password, unreachable host,
  ARI not loaded, chan_websocket / res_websocket_client missing.
* Liveness: WebSocket pings every 8 s with an 8 s timeout, so a dead link is noticed within ~16 s
  even when no events flow (Asterisk answers pings itself).
* Reconnect with capped exponential backoff and jitter (0.25 s growing ×1.6 to 2 s), reset after
  a connection that stayed up for 30 s: an Asterisk restart takes 0.5–1.5 s, and a steeper curve
  would leave us sleeping for seconds after Asterisk is back. A retry costs one small REST GET, so
  a 2 s cap is cheap even against an Asterisk that stays down for hours.
* ``ApplicationReplaced`` means another client subscribed our Stasis app and now receives our
  calls. We surface state ``replaced`` and log an error; we do NOT grab the app back automatically,
  because two platforms stealing one app from each other lose calls on both sides. A configuration
  update (or ``reconnect()``) takes it back deliberately.
* The WebSocket connects through the outbound policy (``vr3ai.core.outbound``): to the
  vetted address, without redirects (a 3xx is a failed handshake, not a new target).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import websockets

from vr3ai.core.outbound import OutboundPolicy, OutboundRefused, default_policy
from vr3ai.logs import RedactingLogger, Redactor
from vr3ai.telephony.ari.client import (
    READ_ONLY_TEXT,
    AriClient,
    AriError,
    events_url,
    release_problem,
    safe_version,
)

log = logging.getLogger("vr3ai.telephony.ari.events")

EventHandler = Callable[[dict[str, Any]], None]
ConnectedHandler = Callable[[], Awaitable[None]]

PING_INTERVAL_S = 8.0
PING_TIMEOUT_S = 8.0
BACKOFF_START_S = 0.25
BACKOFF_CAP_S = 2.0
BACKOFF_FACTOR = 1.6
STABLE_AFTER_S = 30.0
MAX_EVENT_BYTES = 1024 * 1024
"""Largest ARI event accepted; a larger one closes the socket (1009) and we reconnect. Asterisk's
events are a few kB (a channel snapshot with its variables); the limit bounds what the server at a
tenant's ``ari_endpoint_url`` can make us hold and parse per message."""
REQUIRED_MODULES = ("chan_websocket.so", "res_websocket_client.so")


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _channel(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict) or not isinstance(value.get("id"), str) or not value["id"]:
        return None
    dialplan = value.get("dialplan") if isinstance(value.get("dialplan"), dict) else {}
    caller = value.get("caller") if isinstance(value.get("caller"), dict) else {}
    return {
        **value,
        "state": _str(value.get("state")),
        "dialplan": {
            "context": _str(dialplan.get("context")),
            "exten": _str(dialplan.get("exten")),
            "app_name": _str(dialplan.get("app_name")),
            "app_data": _str(dialplan.get("app_data")),
        },
        "caller": {"name": _str(caller.get("name")), "number": _str(caller.get("number"))},
    }


def sanitize_event(raw: Any) -> dict[str, Any] | None:
    """The fields of an ARI event that call handling reads, with the types it relies on.

    Asterisk sends well-formed events, but a proxy, a version change or a bug must never crash the
    listener or a call: everything downstream of this function can trust the shapes below, and an
    event without a usable ``type`` is dropped. Unknown fields pass through untouched."""
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        return None
    event: dict[str, Any] = dict(raw)
    for key in ("channel", "peer", "replace_channel"):
        if key in event:
            event[key] = _channel(event[key])
    args = event.get("args")
    event["args"] = [a for a in args if isinstance(a, str)] if isinstance(args, list) else []
    cause = event.get("cause")
    event["cause"] = cause if isinstance(cause, int) and not isinstance(cause, bool) else None
    event["cause_txt"] = _str(event.get("cause_txt"))
    event["dialstatus"] = _str(event.get("dialstatus"))
    event["soft"] = event.get("soft") is True
    return event


class ConnectionState:
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    REPLACED = "replaced"
    STOPPED = "stopped"


class PreflightError(Exception):
    pass


class AriEventStream:
    def __init__(
        self,
        *,
        config_id: str,
        endpoint_url: str,
        app: str,
        password: str,
        client: AriClient,
        on_event: EventHandler,
        on_connected: ConnectedHandler,
        policy: OutboundPolicy | None = None,
    ) -> None:
        self.config_id = config_id
        self.policy = policy or default_policy()
        self.endpoint_url = endpoint_url
        self.app = app
        self._auth_header = "Basic " + base64.b64encode(f"{app}:{password}".encode()).decode()
        self.log = RedactingLogger(log, Redactor([password]))
        self.client = client
        self.on_event = on_event
        self.on_connected = on_connected
        self.state = ConnectionState.CONNECTING
        self.since = datetime.now(UTC)
        self.last_error: str | None = None
        self.connected_count = 0
        self.last_connect_duration_s: float | None = None
        self.asterisk_info: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._ws: Any = None
        self._stop = asyncio.Event()
        self._reclaim = asyncio.Event()

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"ari-events-{self.config_id}")

    async def stop(self) -> None:
        self._stop.set()
        self._reclaim.set()
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._set_state(ConnectionState.STOPPED, None)

    def reconnect(self) -> None:
        """Take the app back after ``replaced`` (an operator's explicit choice)."""
        self._reclaim.set()

    def _set_state(self, state: str, error: str | None) -> None:
        if state != self.state or error != self.last_error:
            if state != self.state:
                self.since = datetime.now(UTC)
            self.state = state
            self.last_error = error
            level = logging.ERROR if state in (ConnectionState.FAILED, ConnectionState.REPLACED) else logging.INFO
            self.log.log(level, "ARI connection %s", state, extra={"config_id": self.config_id, "error": error})

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "since": self.since.isoformat(),
            "last_error": self.last_error,
            "asterisk_version": safe_version(self.asterisk_info),
            "reconnects": max(self.connected_count - 1, 0),
            "last_connect_duration_s": self.last_connect_duration_s,
        }

    # --- main loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = BACKOFF_START_S
        down_since = time.monotonic()
        while not self._stop.is_set():
            if self.state != ConnectionState.FAILED:
                self._set_state(ConnectionState.CONNECTING, self.last_error)
            up_at: float | None = None
            try:
                await self._preflight()
                async with self.policy.websocket(
                    events_url(self.endpoint_url, self.app),
                    additional_headers={"Authorization": self._auth_header},
                    ping_interval=PING_INTERVAL_S,
                    ping_timeout=PING_TIMEOUT_S,
                    open_timeout=5,
                    close_timeout=2,
                    max_size=MAX_EVENT_BYTES,
                    max_queue=4096,
                ) as ws:
                    self._ws = ws
                    up_at = time.monotonic()
                    self.last_connect_duration_s = round(up_at - down_since, 3)
                    self.connected_count += 1
                    self._set_state(ConnectionState.CONNECTED, None)
                    try:
                        await self.on_connected()
                    except Exception as e:  # reconcile problems must not kill the listener
                        self.log.exception("reconcile after connect failed", extra={"config_id": self.config_id})
                        # The type only: the text may quote what the server sent.
                        self.last_error = f"reconcile failed: {type(e).__name__}"
                    replaced = await self._read(ws)
                    self._ws = None
                    if replaced:
                        await self._wait_reclaim()
                        backoff = BACKOFF_START_S
                        down_since = time.monotonic()
                        continue
                    if not self._stop.is_set():
                        self._set_state(ConnectionState.CONNECTING, "ARI events WebSocket closed by Asterisk")
            except asyncio.CancelledError:
                raise
            except PreflightError as e:
                self._set_state(ConnectionState.FAILED, str(e))
            except OutboundRefused as e:
                self._set_state(ConnectionState.FAILED, str(e))
            except (OSError, websockets.exceptions.WebSocketException, TimeoutError) as e:
                self._set_state(ConnectionState.FAILED, self._ws_error_text(e))
            except Exception as e:  # never let one bad event kill the listener
                self.log.exception("ARI listener error", extra={"config_id": self.config_id})
                self._set_state(ConnectionState.FAILED, f"unexpected error: {type(e).__name__}")
            finally:
                self._ws = None
            if self._stop.is_set():
                break
            if up_at is not None:
                down_since = time.monotonic()
                if time.monotonic() - up_at > STABLE_AFTER_S:
                    backoff = BACKOFF_START_S
            delay = random.uniform(backoff / 2, backoff)
            backoff = min(backoff * BACKOFF_FACTOR, BACKOFF_CAP_S)
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def _read(self, ws: Any) -> bool:
        """Read events until the socket closes. Returns True if we were replaced."""
        async for raw in ws:
            try:
                event = sanitize_event(json.loads(raw))
            except (TypeError, ValueError, RecursionError):
                event = None
            if event is None:
                self.log.warning("ignoring malformed ARI event", extra={"config_id": self.config_id})
                continue
            if event.get("type") == "ApplicationReplaced":
                self._set_state(
                    ConnectionState.REPLACED,
                    f"another ARI client subscribed to Stasis app '{self.app}' and now receives its calls; "
                    "VR3 AI stopped receiving calls for this configuration. Stop the other client (or give it "
                    "its own ari.conf user), then save this configuration again to reconnect.",
                )
                await ws.close()
                return True
            try:
                self.on_event(event)
            except Exception:
                self.log.exception(
                    "ARI event handler failed", extra={"config_id": self.config_id, "event_type": event.get("type")}
                )
        return False

    async def _wait_reclaim(self) -> None:
        self._reclaim.clear()
        await self._reclaim.wait()

    async def _preflight(self) -> None:
        try:
            self.asterisk_info = await self.client.info()
        except AriError as e:
            raise PreflightError(self._rest_error_text(e)) from None
        if problem := release_problem(safe_version(self.asterisk_info)):
            raise PreflightError(problem)
        # A read-only user connects and receives StasisStart like any other, and then every answer
        # fails with 403: refuse to call that "connected".
        try:
            writable = await self.client.may_write()
        except AriError as e:
            raise PreflightError(self._rest_error_text(e)) from None
        if not writable:
            raise PreflightError(READ_ONLY_TEXT.format(user=self.app))
        missing = []
        for name in REQUIRED_MODULES:
            try:
                mod = await self.client.module(name)
            except AriError:
                mod = {"status": "unknown"}
            if mod is None or str(mod.get("status", "")).lower() != "running":
                missing.append(name.removesuffix(".so"))
        if missing:
            raise PreflightError(
                f"Asterisk is reachable but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                "loaded: external media cannot work. Load it (module load chan_websocket.so / "
                "res_websocket_client.so) and check with 'module show like chan_websocket'."
            )

    def _rest_error_text(self, e: AriError) -> str:
        url = self.client.base_url
        if e.status == 401:
            return (
                f"ARI at {url} rejected the credentials: check that the Stasis App Name matches the user "
                "section in ari.conf and the App Password matches its password (no extra spaces)."
            )
        if e.status == 403:
            return f"ARI user '{self.app}' is not allowed to control calls: set read_only = no in ari.conf."
        if e.status == 404:
            return (
                f"{url} answers HTTP but has no ARI: check the ARI Endpoint URL and that res_ari is loaded "
                "(module show like res_ari) and ari.conf has enabled = yes."
            )
        if e.status == 0:
            return (
                f"cannot reach ARI at {url}: {e.message}. Check that Asterisk is running, http.conf has "
                "enabled = yes and the right bindaddr/bindport, and that the firewall allows the port."
            )
        return f"ARI at {url} answered {e.status}: {e.message}"

    def _ws_error_text(self, e: Exception) -> str:
        if isinstance(e, websockets.exceptions.InvalidStatus):
            status = e.response.status_code
            if status == 401:
                return self._rest_error_text(AriError(401, "unauthorized"))
            return f"ARI events WebSocket refused with HTTP {status}"
        if isinstance(e, websockets.exceptions.ConnectionClosed):
            if e.sent is not None and e.sent.code == 1009:
                return f"ARI events WebSocket closed: an event was larger than {MAX_EVENT_BYTES} bytes"
            return "ARI events WebSocket dropped (Asterisk stopped or the network failed)"
        if isinstance(e, TimeoutError):
            return "ARI events WebSocket did not open within 5 s"
        return f"ARI events WebSocket failed: {type(e).__name__}"
