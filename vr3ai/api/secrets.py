"""``/secrets``: named organization secrets (e.g. an LLM API key) that workflows refer to by name.

Write-only by design: values go in, only names come out.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from vr3ai.api.deps import OrgDep, ServicesDep, Timestamp, matches_nothing
from vr3ai.api.errors import ApiRoute
from vr3ai.api.validation import RequestBody, SecretName, SecretValue
from vr3ai.db.models import OrganizationSecret

router = APIRouter(tags=["secrets"], route_class=ApiRoute)


class SecretIn(RequestBody):
    model_config = ConfigDict(extra="forbid")
    name: SecretName
    value: SecretValue


class SecretOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str
    created_at: Timestamp


class SecretList(BaseModel):
    items: list[SecretOut]


@router.post(
    "/secrets",
    response_model=SecretOut,
    status_code=201,
    responses={200: {"model": SecretOut, "description": "A secret of that name existed; its value was replaced."}},
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
            if row is None:
                row = OrganizationSecret(organization_id=org.id, name=body.name, value_enc=encrypted)
                s.add(row)
            else:
                row.value_enc = encrypted
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
