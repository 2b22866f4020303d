"""``/secrets``: named organization secrets (e.g. an LLM API key) that workflows refer to by name.

Write-only by design: values go in, only names (and the hosts a value may be sent to) come out.
``allowed_hosts`` binds a value to the hosts it may be sent to; it can only be changed together
with the value (see ``vr3ai.core.secret_hosts``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from vr3ai.api.deps import OrgDep, ServicesDep, Timestamp, matches_nothing
from vr3ai.api.errors import ApiRoute
from vr3ai.api.limits import LIMIT_RESPONSE, enforce_count
from vr3ai.api.validation import RequestBody, SecretName, SecretValue
from vr3ai.core.secret_hosts import MAX_ALLOWED_HOSTS, normalize_host_entry
from vr3ai.db.models import OrganizationSecret

router = APIRouter(tags=["secrets"], route_class=ApiRoute)


AllowedHost = Annotated[str, AfterValidator(normalize_host_entry)]


class SecretIn(RequestBody):
    model_config = ConfigDict(extra="forbid")
    name: SecretName
    value: SecretValue
    allowed_hosts: list[AllowedHost] | None = Field(
        default=None,
        max_length=MAX_ALLOWED_HOSTS,
        examples=[["api.openai.com"]],
        description="Hosts (``host`` or ``host:port``) the value may be sent to. Omitted: unchanged when the "
        "secret exists, otherwise bound by the first workflow saved with it.",
    )


class SecretOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str
    allowed_hosts: list[str] = []
    created_at: Timestamp


class SecretList(BaseModel):
    items: list[SecretOut]


@router.post(
    "/secrets",
    response_model=SecretOut,
    status_code=201,
    responses={
        200: {"model": SecretOut, "description": "A secret of that name existed; its value was replaced."},
        **LIMIT_RESPONSE,
    },
)
async def put_secret(body: SecretIn, org: OrgDep, svc: ServicesDep, response: Response) -> OrganizationSecret:
    """Create the secret, or replace its value if the name exists (200 then)."""
    encrypted = svc.box.encrypt(body.value)
    for attempt in range(2):
        async with svc.db.session() as s:
            row = await s.scalar(
                select(OrganizationSecret).where(
                    OrganizationSecret.organization_id == org.id, OrganizationSecret.name == body.name
                )
            )
            hosts = list(dict.fromkeys(body.allowed_hosts)) if body.allowed_hosts is not None else None
            if row is None:
                await enforce_count(s, org.id, "secrets")
                row = OrganizationSecret(
                    organization_id=org.id, name=body.name, value_enc=encrypted, allowed_hosts=hosts or []
                )
                s.add(row)
            else:
                row.value_enc = encrypted
                if hosts is not None:
                    row.allowed_hosts = hosts
                response.status_code = 200
            try:
                await s.commit()
            except IntegrityError:
                # Two requests created the same name at once; the second one becomes an update.
                if attempt:
                    raise
                continue
            return row
    raise AssertionError("unreachable")


@router.get("/secrets", response_model=SecretList)
async def list_secrets(org: OrgDep, svc: ServicesDep) -> SecretList:
    async with svc.db.session() as s:
        rows = (
            await s.scalars(
                select(OrganizationSecret)
                .where(OrganizationSecret.organization_id == org.id)
                .order_by(OrganizationSecret.name)
            )
        ).all()
    return SecretList(items=[SecretOut.model_validate(r) for r in rows])


@router.delete("/secrets/{name}", status_code=204)
async def delete_secret(name: str, org: OrgDep, svc: ServicesDep) -> Response:
    if matches_nothing(name):
        raise HTTPException(404, "secret not found")
    async with svc.db.session() as s, s.begin():
        res = await s.execute(
            delete(OrganizationSecret).where(
                OrganizationSecret.organization_id == org.id, OrganizationSecret.name == name
            )
        )
    if not res.rowcount:  # type: ignore[attr-defined]
        raise HTTPException(404, "secret not found")
    return Response(status_code=204)
