"""``/organizations/me``: who the API key belongs to and how much quota is left."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from vr3ai.api.deps import OrgDep, ServicesDep
from vr3ai.api.errors import ApiRoute
from vr3ai.core.limits import limits_of
from vr3ai.core.recordings import recording_bytes_used
from vr3ai.db.models import Organization

router = APIRouter(tags=["organizations"], route_class=ApiRoute)


class QuotaOut(BaseModel):
    max_concurrent_calls: int
    active_calls: int
    minutes_per_month: int | None
    """``null``: no monthly limit."""
    minutes_used: float
    seconds_used: int


class LimitsOut(BaseModel):
    """What the organization may store; set by the operator (``vr3ai org set-limits``)."""

    max_telephony_configurations: int
    max_workflows: int
    max_phone_numbers: int
    max_secrets: int
    max_definition_bytes: int
    max_recording_mb: int
    recording_mb_used: float


class OrganizationOut(BaseModel):
    id: str
    name: str
    quota: QuotaOut
    limits: LimitsOut | None = None


@router.get("/organizations/me", response_model=OrganizationOut)
async def get_my_organization(org: OrgDep, svc: ServicesDep) -> OrganizationOut:
    async with svc.db.session() as s:
        # Re-read: the row loaded during authentication may predate a call that just started.
        fresh = await s.get(Organization, org.id)
        assert fresh is not None
        q = await svc.quota.status(s, fresh)
        used = await recording_bytes_used(s, fresh.id)
    return OrganizationOut(
        id=fresh.id,
        name=fresh.name,
        quota=QuotaOut(
            max_concurrent_calls=q.max_concurrent_calls,
            active_calls=q.active_calls,
            minutes_per_month=q.minutes_per_month,
            minutes_used=q.minutes_used,
            seconds_used=q.seconds_used,
        ),
        limits=LimitsOut(**limits_of(fresh), recording_mb_used=round(used / 1_000_000, 2)),
    )
