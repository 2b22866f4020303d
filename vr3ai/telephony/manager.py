"""One listener per active telephony configuration; follows configuration create/update/delete.

The API calls :meth:`config_changed` / :meth:`config_deleted` after it commits, so a saved
configuration connects (or reconnects with new credentials) at once, without a restart.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from vr3ai.core.calls import NewRun
from vr3ai.core.quota import QuotaExceeded
from vr3ai.db.models import TelephonyConfiguration, new_id
from vr3ai.telephony.ari.connection import AriConnection
from vr3ai.telephony.deps import AgentFactory, CallDeps
from vr3ai.telephony.registry import PROVIDERS

if TYPE_CHECKING:
    from vr3ai.telephony.ports import ProcessServices

log = logging.getLogger("vr3ai.telephony.manager")


class CallRefused(Exception):
    """An outbound/test call could not be placed; ``status_code`` is the HTTP status to answer."""

    def __init__(self, message: str, status_code: int = 409) -> None:
        super().__init__(message)
        self.status_code = status_code


class TelephonyManager:
    def __init__(self, services: ProcessServices, agent_factory: AgentFactory) -> None:
        self.services = services
        self.agent_factory = agent_factory
        self.deps = CallDeps.from_services(services, agent_factory)
        self.connections: dict[str, AriConnection] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self.services.db.session() as s:
            rows = list(
                (
                    await s.execute(select(TelephonyConfiguration).where(TelephonyConfiguration.enabled.is_(True)))
                ).scalars()
            )
        for row in rows:
            await self._start_row(row)

    async def stop(self) -> None:
        async with self._lock:
            conns = list(self.connections.values())
            self.connections.clear()
        await asyncio.gather(*(c.stop("VR3 AI is shutting down") for c in conns), return_exceptions=True)

    async def drain(self, grace_s: float) -> None:
        """Graceful stop: refuse new calls, let live ones go on for up to ``grace_s``, then end the
        rest cleanly (hangup, teardown, run closed with a reason)."""
        for conn in self.connections.values():
            conn.draining = True
        deadline = asyncio.get_running_loop().time() + max(grace_s, 0.0)
        while any(c.live for c in self.connections.values()):
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.1)
        await self.stop()

    async def _start_row(self, row: TelephonyConfiguration) -> None:
        spec = PROVIDERS.get(row.provider)
        if spec is None or not row.enabled:
            return
        try:
            config = spec.load(row, self.services.box)
        except ValueError as e:
            log.error("cannot start listener", extra={"config_id": row.id, "error": str(e)})
            return
        conn = spec.connect(self.deps, config)
        self.connections[row.id] = conn
        conn.start()

    async def config_changed(self, config_id: str) -> None:
        async with self._lock:
            async with self.services.db.session() as s:
                row = await s.get(TelephonyConfiguration, config_id)
            current = self.connections.get(config_id)
            if row is None or not row.enabled:
                if current is not None:
                    del self.connections[config_id]
                    await current.stop("telephony configuration disabled")
                return
            spec = PROVIDERS.get(row.provider)
            if spec is None:
                return
            new_config = spec.load(row, self.services.box)
            if current is not None:
                same = current.config.fingerprint() == new_config.fingerprint()
                if same and current.stream.state != "replaced":
                    current.config.name = new_config.name
                    return
                del self.connections[config_id]
                await current.stop("telephony configuration updated")
            await self._start_row(row)

    async def config_deleted(self, config_id: str) -> None:
        async with self._lock:
            current = self.connections.pop(config_id, None)
        if current is not None:
            await current.stop("telephony configuration deleted")

    def status(self, config_id: str) -> dict[str, Any]:
        conn = self.connections.get(config_id)
        if conn is None:
            return {"ari": {"state": "stopped", "since": None, "last_error": "no listener for this configuration"}}
        return conn.status()

    def connection(self, config_id: str) -> AriConnection | None:
        return self.connections.get(config_id)

    async def place_call(
        self, *, organization_id: str, workflow_id: str, config_id: str, to: str, from_extension: str | None = None
    ) -> str:
        """``to``: an extension/number (through the dial template) or a full dial string (as is).
        ``from_extension``: one of the configuration's From Extensions (default the first); its
        number, tech prefix removed, is the caller ID Asterisk presents."""
        conn = self.connections.get(config_id)
        if conn is None or conn.config.organization_id != organization_id:
            raise CallRefused("telephony configuration is not active", 409)
        if not conn.connected:
            detail = f": {conn.stream.last_error}" if conn.stream.last_error else ""
            raise CallRefused(f"the ARI connection of this configuration is {conn.stream.state}{detail}", 409)
        to = to.strip()
        if not to or any(c.isspace() for c in to):
            raise CallRefused("'to' must be an extension, a number or a dial string without spaces", 422)
        endpoint = to if "/" in to else conn.config.dial_template.replace("{to}", to)
        if from_extension is not None and from_extension not in conn.config.from_extensions:
            raise CallRefused("'from' must be one of the configuration's From Extensions", 422)
        from_ext = from_extension or (conn.config.from_extensions[0] if conn.config.from_extensions else "")
        caller_number = from_ext.split("/")[-1] if from_ext else ""
        caller_id = f'"VR3 AI" <{caller_number}>' if caller_number else None
        workflow = await self.deps.store.workflow(organization_id=organization_id, workflow_id=workflow_id)
        if workflow is None:
            raise CallRefused("workflow not found", 404)
        context = {
            "caller_number": caller_number,
            "called_number": to,
            "direction": "outbound",
            "call_id": None,
            "provider": conn.provider,
        }
        run_id = new_id()
        call = conn.prepare_outbound(run_id)
        context["call_id"] = call.channel_id
        try:
            await self.deps.store.create_run(
                run_id, NewRun(organization_id, workflow_id, config_id, "outbound", context, call.channel_id)
            )
        except QuotaExceeded as e:
            conn.forget(call)
            raise CallRefused(f"quota: {e.reason}", 429) from None
        except BaseException:
            conn.forget(call)
            raise
        call.context = context
        conn.start_outbound(call, workflow, endpoint, caller_id)
        return run_id
