"""The FastAPI application: REST API, media WebSocket, dashboard, and the ARI listeners' lifecycle.

Start-up order matters: migrations, then runs left unfinished by a previous process are closed
(their media sockets died with it, so they cannot continue; their Asterisk leftovers are removed
by each listener's reconcile pass once it connects), then the voice runtime loads its models once
for the whole process, then the listeners start taking calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from vr3ai.api import api_router
from vr3ai.api.docs import install_docs
from vr3ai.bodylimit import BodySizeLimit, workflow_rules
from vr3ai.core import media_auth
from vr3ai.core.recordings import sweep_forever
from vr3ai.core.runs import RunOutcome
from vr3ai.db.migrate import upgrade
from vr3ai.media.engine import MediaEngine, MediaTuning
from vr3ai.media.server import MediaRegistry, media_router
from vr3ai.services import Services
from vr3ai.settings import Settings
from vr3ai.telephony.deps import AgentFactory
from vr3ai.web import web_router

log = logging.getLogger("vr3ai.app")

RETENTION_SWEEP_EVERY_S = 3600.0


async def close_orphan_runs(svc: Services) -> int:
    closed = 0
    for run in await svc.runs.unfinished():
        done = await svc.runs.finish(
            run.id,
            RunOutcome(
                status="failed",
                end_reason="call lost: VR3 AI stopped while the call was up",
                events=[{"level": "error", "message": "closed at start-up of a new VR3 AI process", "at_ms": None}],
            ),
        )
        closed += int(done)
    async with svc.db.session() as s, s.begin():
        await svc.quota.resync(s)
    if closed:
        log.warning("closed runs left unfinished by the previous process", extra={"runs": closed})
    return closed


async def prewarm_saved_workflows(svc: Services) -> int:
    """Queue every saved workflow's static texts for background synthesis: greetings of all
    workflows first, then their other fixed texts. With the disk cache under the data dir this is
    work only for texts never synthesised before."""
    from sqlalchemy import select

    from vr3ai.agent.factory import static_speech
    from vr3ai.db.models import Workflow

    async with svc.db.session() as s:
        definitions = (await s.scalars(select(Workflow.definition).order_by(Workflow.updated_at.desc()))).all()
    speech = [x for x in (static_speech(svc.voice, d) for d in definitions) if x is not None]
    queued = sum(svc.voice.warm(texts[:1], tts) for tts, texts in speech)
    queued += sum(svc.voice.warm(texts[1:], tts) for tts, texts in speech)
    if queued:
        log.info("synthesising fixed texts of saved workflows in the background", extra={"texts": queued})
    return queued


def _load_factory(spec: str) -> AgentFactory | None:
    """``package.module:callable`` → the callable; a class is instantiated once (a factory object)."""
    if not spec:
        return None
    import importlib
    import inspect

    module_name, _, attr = spec.partition(":")
    obj = getattr(importlib.import_module(module_name), attr)
    return obj() if inspect.isclass(obj) else obj  # type: ignore[no-any-return]


def create_app(
    settings: Settings | None = None,
    services: Services | None = None,
    agent_factory: AgentFactory | None = None,
    bootstrap: Callable[[Services], Awaitable[None]] | None = None,
) -> FastAPI:
    """``bootstrap`` runs at start-up right after the migrations, before any listener starts (``vr3ai
    serve`` creates the first organization there): the one place the schema is brought up to date."""
    settings = settings or Settings.from_env()
    svc = services or Services.build(settings)
    # The process's one media engine: clock, tick reader, send batch and their tuning.
    svc.media = svc.media or MediaRegistry(
        engine=MediaEngine(MediaTuning.from_settings(settings.media)),
        require_credentials=True,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await upgrade(svc.db)
        if bootstrap is not None:
            await bootstrap(svc)
        await svc.db.warm()
        await close_orphan_runs(svc)
        await media_auth.backfill(svc.db, svc.box)  # before any listener takes a call
        factory = agent_factory or _load_factory(settings.server.agent_factory)
        voice: Any = None
        if factory is None and settings.voice.voice:
            from functools import partial

            from vr3ai.agent.factory import RuntimeConfig, VoiceRuntime, build_agent

            # Models load once per process, here, not per call.
            voice = VoiceRuntime(RuntimeConfig.from_settings(settings))
            VoiceRuntime.set_shared(voice)
            await voice.start()
            svc.voice = voice
            factory = partial(build_agent, runtime=voice)
            await prewarm_saved_workflows(svc)
        sweeper: asyncio.Task[None] | None = None
        storage = settings.storage
        if storage.recording_retention_days > 0:
            sweeper = asyncio.create_task(
                sweep_forever(svc.db, storage.data_dir, storage.recording_retention_days, RETENTION_SWEEP_EVERY_S),
                name="recording-retention",
            )
        if settings.server.start_telephony:
            from vr3ai.telephony.manager import TelephonyManager

            if factory is None:
                from vr3ai.agent.factory import build_agent as factory  # type: ignore[assignment]
            svc.telephony = TelephonyManager(svc, factory)
            await svc.telephony.start()
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            if svc.telephony is not None:
                await svc.telephony.stop()
                svc.telephony = None
            if voice is not None:
                await voice.close()
            await svc.media.engine.aclose()
            await svc.db.dispose()

    app = FastAPI(title="VR3 AI", version="0.1.0", lifespan=lifespan, docs_url=None, openapi_url="/openapi.json")
    app.state.services = svc
    install_docs(app, "/docs")
    # Before anything reads a body (FastAPI parses it ahead of authentication): vr3ai.bodylimit.
    app.add_middleware(
        BodySizeLimit,
        default=settings.server.max_body_bytes,
        rules=workflow_rules(settings.server.max_workflow_body_bytes),
    )
    app.include_router(api_router)
    app.include_router(media_router(svc.media))
    app.include_router(web_router())
    return app
