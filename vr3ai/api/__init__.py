"""REST API v1: one router per resource; business rules live in ``vr3ai.core``/``vr3ai.telephony``.

``api_router`` is mounted by the app; ``install_error_handlers`` gives every error the same shape
(``{"message", "detail"}``; 422 ``detail`` lists field locations).
"""

from fastapi import APIRouter

from vr3ai.api import organizations, runs, secrets, telephony, workflows
from vr3ai.api.errors import install_error_handlers

api_router = APIRouter(prefix="/api/v1")
for _module in (organizations, workflows, telephony, runs, secrets):
    api_router.include_router(_module.router)

__all__ = ["api_router", "install_error_handlers"]
