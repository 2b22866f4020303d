"""``/telephony-configurations``: Asterisk ARI connections, their phone numbers and live status.

Rules worth knowing (see also ``vr3ai.core.endpoints``):

* Passwords (``app_password``, ``media_password``) are write-only: encrypted at rest with the
  process's secret box, answered only as ``*_password_set`` booleans.
* Media credentials are always there (``vr3ai.core.media_auth``): left out at creation, or set to
  null later, VR3 AI generates them. The owner reads the media password in one place only, the
  ``websocket_client.conf`` text of ``GET .../asterisk-snippets`` (which Asterisk needs).
* A Stasis app may be used by one configuration per Asterisk across the whole installation:
  Asterisk keeps one ARI WebSocket per app, so a second configuration would replace the first
  connection and the two would steal each other's calls (409). The check compares the normalised
  endpoint key, so ``http://PBX:8088/`` and ``http://pbx:8088`` collide.
* The running telephony manager is told after every committed change, so a new or edited
  configuration connects without a restart.
* An ``ari_endpoint_url`` the outbound policy refuses (``vr3ai.core.outbound``) is a 422 on save,
  naming the policy, rather than a listener that fails later.
"""

from __future__ import annotations

import inspect
import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from vr3ai.api.deps import OrgDep, ServicesDep, Timestamp, get_owned, matches_nothing, non_null
from vr3ai.api.errors import ApiRoute, error_response, field_error, field_errors
from vr3ai.api.limits import LIMIT_RESPONSE, enforce_count
from vr3ai.api.validation import (
    Address,
    DialTemplate,
    DisplayName,
    FromExtension,
    Identifier,
    MediaUsername,
    Password,
    Provider,
    RequestBody,
    check_unique,
)
from vr3ai.core import media_auth
from vr3ai.core.endpoints import normalize_ari_endpoint
from vr3ai.core.outbound import OutboundRefused
from vr3ai.db.models import Organization, PhoneNumber, TelephonyConfiguration, Workflow
from vr3ai.services import Services
from vr3ai.telephony.ari import snippets
from vr3ai.telephony.registry import DEFAULT_PROVIDER

log = logging.getLogger("vr3ai.api.telephony")
router = APIRouter(tags=["telephony"], route_class=ApiRoute)
_APP_TAKEN = {409: error_response("The Stasis app is already used on this Asterisk.")}
_NUMBER_TAKEN = {409: error_response("The extension is already registered on this configuration.")}

EndpointUrl = Annotated[str, AfterValidator(lambda v: normalize_ari_endpoint(v).url)]
FromExtensions = Annotated[list[FromExtension], Field(max_length=100), AfterValidator(check_unique)]


class ConfigCreate(RequestBody):
    model_config = ConfigDict(extra="forbid")
    name: DisplayName
    provider: Provider = DEFAULT_PROVIDER.key
    ari_endpoint_url: EndpointUrl = Field(examples=["http://asterisk.example.com:8088"])
    stasis_app_name: Identifier = Field(description="The ARI user (section name in ari.conf).")
    app_password: Password = Field(description="The ARI user's password. Write-only.")
    websocket_client_name: Identifier = Field(description="The section name in websocket_client.conf.")
    from_extensions: FromExtensions = Field(default_factory=list, examples=[["PJSIP/6001"]])
    dial_template: DialTemplate = "PJSIP/{to}"
    media_username: MediaUsername | None = Field(
        default=None, description="The user Asterisk presents on the media WebSocket. Generated when left out."
    )
    media_password: Password | None = Field(
        default=None,
        description="Write-only. Generated when left out; read it in the websocket_client.conf snippet.",
    )
    enabled: bool = True


class ConfigPatch(RequestBody):
    model_config = ConfigDict(extra="forbid")
    name: DisplayName | None = None
    provider: Provider | None = None
    ari_endpoint_url: EndpointUrl | None = None
    stasis_app_name: Identifier | None = None
    app_password: Password | None = None
    websocket_client_name: Identifier | None = None
    from_extensions: FromExtensions | None = None
    dial_template: DialTemplate | None = None
    media_username: MediaUsername | None = Field(
        default=None, description="null: generate a new one (media authentication cannot be switched off)."
    )
    media_password: Password | None = Field(
        default=None, description="Write-only. null: generate a new one (see the websocket_client.conf snippet)."
    )
    enabled: bool | None = None


_REQUIRED = (
    "name",
    "provider",
    "ari_endpoint_url",
    "stasis_app_name",
    "app_password",
    "websocket_client_name",
    "from_extensions",
    "dial_template",
    "enabled",
)


class ConfigOut(BaseModel):
    id: str
    name: str
    provider: str
    ari_endpoint_url: str
    stasis_app_name: str
    app_password_set: bool
    websocket_client_name: str
    from_extensions: list[str]
    dial_template: str
    media_username: str | None
    media_password_set: bool
    enabled: bool
    created_at: Timestamp
    updated_at: Timestamp

    @classmethod
    def of(cls, row: TelephonyConfiguration) -> ConfigOut:
        return cls(
            id=row.id,
            name=row.name,
            provider=row.provider,
            ari_endpoint_url=row.ari_endpoint_url,
            stasis_app_name=row.stasis_app_name,
            app_password_set=bool(row.app_password_enc),
            websocket_client_name=row.websocket_client_name,
            from_extensions=list(row.from_extensions or []),
            dial_template=row.dial_template,
            media_username=row.media_username,
            media_password_set=bool(row.media_password_enc),
            enabled=row.enabled,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class ConfigList(BaseModel):
    items: list[ConfigOut]


class SnippetOut(BaseModel):
    filename: str
    title: str
    text: str
    notes: list[str]


class SnippetList(BaseModel):
    media_uri: str = Field(description="Where Asterisk dials the media WebSocket.")
    items: list[SnippetOut] = Field(
        description="ari.conf, http.conf, extensions.conf, websocket_client.conf (with this configuration's media "
        "username and password: a secret), then the Asterisk CLI reload commands."
    )


class NumberCreate(RequestBody):
    model_config = ConfigDict(extra="forbid")
    address: Address = Field(description="The SIP extension callers dial, e.g. 8000.")
    inbound_workflow_id: str | None = None


class NumberPatch(RequestBody):
    model_config = ConfigDict(extra="forbid")
    address: Address | None = None
    inbound_workflow_id: str | None = None


class NumberOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    telephony_configuration_id: str
    address: str
    inbound_workflow_id: str | None
    created_at: Timestamp


class NumberList(BaseModel):
    items: list[NumberOut]


def _app_conflict(app: str, endpoint_url: str, same_org: TelephonyConfiguration | None) -> HTTPException:
    msg = (
        f"Stasis app '{app}' on {endpoint_url} is already used by another telephony configuration. "
        "Asterisk keeps one ARI connection per Stasis app, so two configurations sharing one app "
        "would steal each other's calls. Create a separate ARI user in ari.conf for this "
        "configuration and use its name as stasis_app_name."
    )
    if same_org is not None:
        # Only ever name a configuration of the caller's own organization.
        msg += f" (Your configuration '{same_org.name}', id {same_org.id}, uses it.)"
    return HTTPException(409, msg)


async def _check_app_free(
    s: AsyncSession, org: Organization, row: TelephonyConfiguration, exclude_id: str | None
) -> None:
    q = select(TelephonyConfiguration).where(
        TelephonyConfiguration.provider == row.provider,
        TelephonyConfiguration.endpoint_key == row.endpoint_key,
        TelephonyConfiguration.stasis_app_name == row.stasis_app_name,
    )
    if exclude_id is not None:
        q = q.where(TelephonyConfiguration.id != exclude_id)
    # No autoflush: flushing the pending edit here would hit the unique constraint before we can
    # answer with the explanatory 409.
    with s.no_autoflush:
        other = await s.scalar(q.limit(1))
    if other is not None:
        raise _app_conflict(
            row.stasis_app_name, row.ari_endpoint_url, other if other.organization_id == org.id else None
        )


async def _check_outbound(svc: Services, url: str) -> None:
    try:
        await svc.outbound.check_url(url)
    except OutboundRefused as e:
        raise field_error(("body", "ari_endpoint_url"), str(e)) from None


async def _notify(svc: Services, config_id: str, *, deleted: bool = False) -> None:
    """Tell the live telephony manager. The change is already committed, so a failure here must not
    turn into an error response: the manager reconciles from the database on its next start."""
    if svc.telephony is None:
        return
    try:
        if deleted:
            await svc.telephony.config_deleted(config_id)
        else:
            await svc.telephony.config_changed(config_id)
    except Exception:
        log.exception("telephony manager failed to apply configuration change", extra={"config_id": config_id})


@router.post(
    "/telephony-configurations", response_model=ConfigOut, status_code=201, responses={**_APP_TAKEN, **LIMIT_RESPONSE}
)
async def create_configuration(body: ConfigCreate, org: OrgDep, svc: ServicesDep) -> ConfigOut:
    endpoint = normalize_ari_endpoint(body.ari_endpoint_url)
    await _check_outbound(svc, endpoint.url)
    row = TelephonyConfiguration(
        organization_id=org.id,
        name=body.name,
        provider=body.provider,
        ari_endpoint_url=endpoint.url,
        endpoint_key=endpoint.key,
        stasis_app_name=body.stasis_app_name,
        app_password_enc=svc.box.encrypt(body.app_password),
        websocket_client_name=body.websocket_client_name,
        from_extensions=list(body.from_extensions),
        dial_template=body.dial_template,
        media_username=body.media_username or media_auth.generate_username(),
        media_password_enc=svc.box.encrypt(body.media_password or media_auth.generate_password()),
        enabled=body.enabled,
    )
    async with svc.db.session() as s:
        await _check_app_free(s, org, row, None)
        await enforce_count(s, org.id, "telephony_configurations")
        s.add(row)
        try:
            await s.commit()
        except IntegrityError:
            # Lost a race with a concurrent create: the unique constraint has the last word.
            raise _app_conflict(row.stasis_app_name, row.ari_endpoint_url, None) from None
    await _notify(svc, row.id)
    return ConfigOut.of(row)


@router.get("/telephony-configurations", response_model=ConfigList)
async def list_configurations(org: OrgDep, svc: ServicesDep) -> ConfigList:
    async with svc.db.session() as s:
        rows = (
            await s.scalars(
                select(TelephonyConfiguration)
                .where(TelephonyConfiguration.organization_id == org.id)
                .order_by(TelephonyConfiguration.created_at, TelephonyConfiguration.id)
            )
        ).all()
    return ConfigList(items=[ConfigOut.of(r) for r in rows])


@router.get("/telephony-configurations/{config_id}", response_model=ConfigOut)
async def get_configuration(config_id: str, org: OrgDep, svc: ServicesDep) -> ConfigOut:
    async with svc.db.session() as s:
        return ConfigOut.of(await get_owned(s, TelephonyConfiguration, config_id, org.id, "telephony configuration"))


@router.patch("/telephony-configurations/{config_id}", response_model=ConfigOut, responses=_APP_TAKEN)
async def update_configuration(config_id: str, body: ConfigPatch, org: OrgDep, svc: ServicesDep) -> ConfigOut:
    fields = body.model_fields_set
    if bad := non_null(fields, body.model_dump(), _REQUIRED):
        raise field_errors(bad)
    if body.ari_endpoint_url is not None:
        await _check_outbound(svc, normalize_ari_endpoint(body.ari_endpoint_url).url)
    async with svc.db.session() as s:
        row = await get_owned(s, TelephonyConfiguration, config_id, org.id, "telephony configuration")
        for name in ("name", "provider", "stasis_app_name", "websocket_client_name", "dial_template", "enabled"):
            if name in fields:
                setattr(row, name, getattr(body, name))
        if "from_extensions" in fields:
            row.from_extensions = list(body.from_extensions or [])
        if "ari_endpoint_url" in fields:
            assert body.ari_endpoint_url is not None
            endpoint = normalize_ari_endpoint(body.ari_endpoint_url)
            if endpoint.key != row.endpoint_key and body.app_password is None:
                # The stored password is write-only; moving the endpoint would hand it to a server
                # that nobody typed it for. Whoever moves it must know it (or set a new one).
                raise field_error(
                    ("body", "app_password"),
                    "is required when ari_endpoint_url moves to another server (scheme, host or port): the "
                    "stored password is never sent to a new server unless it is entered again",
                )
            row.ari_endpoint_url, row.endpoint_key = endpoint.url, endpoint.key
        if body.app_password is not None:
            row.app_password_enc = svc.box.encrypt(body.app_password)
        if "media_username" in fields:
            row.media_username = body.media_username or media_auth.generate_username()
        if "media_password" in fields:
            row.media_password_enc = svc.box.encrypt(body.media_password or media_auth.generate_password())
        media_auth.fill_missing(row, svc.box)  # a row an older version saved without credentials

        await _check_app_free(s, org, row, row.id)
        try:
            await s.commit()
        except IntegrityError:
            raise _app_conflict(row.stasis_app_name, row.ari_endpoint_url, None) from None
    await _notify(svc, row.id)
    return ConfigOut.of(row)


@router.delete("/telephony-configurations/{config_id}", status_code=204)
async def delete_configuration(config_id: str, org: OrgDep, svc: ServicesDep) -> Response:
    async with svc.db.session() as s, s.begin():
        row = await get_owned(s, TelephonyConfiguration, config_id, org.id, "telephony configuration")
        await s.delete(row)
    await _notify(svc, config_id, deleted=True)
    return Response(status_code=204)


@router.get("/telephony-configurations/{config_id}/asterisk-snippets", response_model=SnippetList)
async def configuration_snippets(config_id: str, org: OrgDep, svc: ServicesDep, response: Response) -> SnippetList:
    """The Asterisk side of this configuration as text to paste. The websocket_client.conf text holds the
    media password: the only response that does, answered only to the configuration's organization."""
    async with svc.db.session() as s:
        row = await get_owned(s, TelephonyConfiguration, config_id, org.id, "telephony configuration")
        extensions = list(
            (
                await s.scalars(
                    select(PhoneNumber.address)
                    .where(PhoneNumber.telephony_configuration_id == row.id, PhoneNumber.organization_id == org.id)
                    .order_by(PhoneNumber.address)
                )
            ).all()
        )
    items, media_uri = snippets.configuration_snippets(svc.settings, svc.box, row, extensions)
    response.headers["Cache-Control"] = "no-store"
    return SnippetList(
        media_uri=media_uri,
        items=[SnippetOut(filename=i.filename, title=i.title, text=i.text, notes=list(i.notes)) for i in items],
    )


@router.get("/telephony-configurations/{config_id}/status")
async def configuration_status(config_id: str, org: OrgDep, svc: ServicesDep) -> dict[str, Any]:
    """Live state of the configuration's ARI connection:
    ``{"ari": {"state": "connected|connecting|failed|replaced|stopped", "since", "last_error"}}``."""
    async with svc.db.session() as s:
        await get_owned(s, TelephonyConfiguration, config_id, org.id, "telephony configuration")
    if svc.telephony is None:
        return {"ari": {"state": "stopped", "since": None, "last_error": "telephony is not running in this process"}}
    status = svc.telephony.status(config_id)
    if inspect.isawaitable(status):
        status = await status
    return dict(status)


# --- phone numbers ------------------------------------------------------------------------------


async def _check_inbound_workflow(s: AsyncSession, org: Organization, workflow_id: str | None) -> None:
    if workflow_id is None:
        return
    found = await s.scalar(select(Workflow.id).where(Workflow.id == workflow_id, Workflow.organization_id == org.id))
    if found is None:
        # 422, not 404: the URL is fine, the field is wrong. Same answer whether the id exists in
        # another organization or nowhere.
        raise field_error(("body", "inbound_workflow_id"), "no workflow with this id in your organization")


def _number_conflict(address: str) -> HTTPException:
    return HTTPException(409, f"extension '{address}' is already registered on this telephony configuration")


async def _check_address_free(s: AsyncSession, config_id: str, address: str, exclude_id: str | None) -> None:
    q = select(PhoneNumber.id).where(
        PhoneNumber.telephony_configuration_id == config_id, PhoneNumber.address == address
    )
    if exclude_id is not None:
        q = q.where(PhoneNumber.id != exclude_id)
    with s.no_autoflush:
        taken = await s.scalar(q.limit(1))
    if taken is not None:
        raise _number_conflict(address)


@router.post(
    "/telephony-configurations/{config_id}/phone-numbers",
    response_model=NumberOut,
    status_code=201,
    responses={**_NUMBER_TAKEN, **LIMIT_RESPONSE},
)
async def create_number(config_id: str, body: NumberCreate, org: OrgDep, svc: ServicesDep) -> PhoneNumber:
    async with svc.db.session() as s:
        await get_owned(s, TelephonyConfiguration, config_id, org.id, "telephony configuration")
        await _check_inbound_workflow(s, org, body.inbound_workflow_id)
        await _check_address_free(s, config_id, body.address, None)
        await enforce_count(s, org.id, "phone_numbers")
        number = PhoneNumber(
            organization_id=org.id,
            telephony_configuration_id=config_id,
            address=body.address,
            inbound_workflow_id=body.inbound_workflow_id,
        )
        s.add(number)
        try:
            await s.commit()
        except IntegrityError:
            raise _number_conflict(body.address) from None
    return number


@router.get("/telephony-configurations/{config_id}/phone-numbers", response_model=NumberList)
async def list_numbers(config_id: str, org: OrgDep, svc: ServicesDep) -> NumberList:
    async with svc.db.session() as s:
        await get_owned(s, TelephonyConfiguration, config_id, org.id, "telephony configuration")
        rows = (
            await s.scalars(
                select(PhoneNumber)
                .where(PhoneNumber.telephony_configuration_id == config_id, PhoneNumber.organization_id == org.id)
                .order_by(PhoneNumber.address)
            )
        ).all()
    return NumberList(items=[NumberOut.model_validate(r) for r in rows])


async def _owned_number(s: AsyncSession, org: Organization, config_id: str, number_id: str) -> PhoneNumber:
    await get_owned(s, TelephonyConfiguration, config_id, org.id, "telephony configuration")
    if matches_nothing(number_id):
        raise HTTPException(404, "phone number not found")
    number = await s.scalar(
        select(PhoneNumber).where(
            PhoneNumber.id == number_id,
            PhoneNumber.telephony_configuration_id == config_id,
            PhoneNumber.organization_id == org.id,
        )
    )
    if number is None:
        raise HTTPException(404, "phone number not found")
    return number


@router.get("/telephony-configurations/{config_id}/phone-numbers/{number_id}", response_model=NumberOut)
async def get_number(config_id: str, number_id: str, org: OrgDep, svc: ServicesDep) -> PhoneNumber:
    async with svc.db.session() as s:
        return await _owned_number(s, org, config_id, number_id)


@router.patch(
    "/telephony-configurations/{config_id}/phone-numbers/{number_id}",
    response_model=NumberOut,
    responses=_NUMBER_TAKEN,
)
async def update_number(
    config_id: str, number_id: str, body: NumberPatch, org: OrgDep, svc: ServicesDep
) -> PhoneNumber:
    fields = body.model_fields_set
    if bad := non_null(fields, body.model_dump(), ("address",)):
        raise field_errors(bad)
    async with svc.db.session() as s:
        number = await _owned_number(s, org, config_id, number_id)
        if "inbound_workflow_id" in fields:
            await _check_inbound_workflow(s, org, body.inbound_workflow_id)
            number.inbound_workflow_id = body.inbound_workflow_id
        if body.address is not None:
            await _check_address_free(s, config_id, body.address, number.id)
            number.address = body.address
        try:
            await s.commit()
        except IntegrityError:
            raise _number_conflict(number.address) from None
    return number


@router.delete("/telephony-configurations/{config_id}/phone-numbers/{number_id}", status_code=204)
async def delete_number(config_id: str, number_id: str, org: OrgDep, svc: ServicesDep) -> Response:
    async with svc.db.session() as s, s.begin():
        await s.delete(await _owned_number(s, org, config_id, number_id))
    return Response(status_code=204)
