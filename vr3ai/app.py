"""The FastAPI application: REST API, media WebSocket, dashboard, and the ARI listeners' lifecycle."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from vr3ai.api import api_router, install_error_handlers
from vr3ai.db.migrate import upgrade
from vr3ai.services import Services
from vr3ai.settings import Settings

log = logging.getLogger("vr3ai.app")


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    svc = services or Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await upgrade(svc.db)
        await svc.quota_resync() if hasattr(svc, "quota_resync") else None
        if svc.telephony is not None:
            await svc.telephony.start()
        try:
            yield
        finally:
            if svc.telephony is not None:
                await svc.telephony.stop()
            await svc.db.dispose()

    app = FastAPI(title="VR3 AI", version="0.1.0", lifespan=lifespan, docs_url="/docs", openapi_url="/openapi.json")
    app.state.services = svc
    install_error_handlers(app)
    app.include_router(api_router)
    return app
