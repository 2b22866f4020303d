"""What the dashboard's forms do, delegated to the REST API's own route functions.

The dashboard does not re-implement a single rule: a form is parsed into the API's request model
(``ConfigCreate``, ``NumberPatch``, ...) and handed to the same function that serves
``POST /api/v1/...``. So normalisation (endpoint URLs), uniqueness of a Stasis app per Asterisk,
encryption of passwords, organization scoping and the notification of the telephony manager are
identical for both, and a rule added to the API applies here at once.

Errors come back as :class:`FormErrors`, ``{field: message}`` plus page-level messages, whatever
raised them: pydantic (field rules), ``RequestValidationError`` (the API's own 422s) or
``HTTPException`` (404 / 409 / 429 / 503). This module is the one place that knows the API's
function signatures.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from vr3ai.api import telephony as api_telephony
from vr3ai.api import workflows as api_workflows
from vr3ai.api.errors import clean_errors
from vr3ai.db.models import Organization
from vr3ai.services import Services

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@dataclass
class FormErrors(Exception):
    fields: dict[str, str] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    status_code: int = 422

    def __bool__(self) -> bool:
        return bool(self.fields or self.messages)


def errors_from_items(items: Sequence[Any]) -> FormErrors:
    out = FormErrors()
    for err in clean_errors(items):
        loc = [p for p in err["loc"] if p != "body"]
        if not loc:
            out.messages.append(err["msg"])
            continue
        name = str(loc[0])
        msg = err["msg"]
        if len(loc) > 1 and isinstance(loc[1], int):
            msg = f"item {loc[1] + 1}: {msg}"
        out.fields.setdefault(name, msg)
    return out


def _from_http(e: HTTPException, conflict_field: str | None) -> FormErrors:
    message = e.detail if isinstance(e.detail, str) else "request failed"
    if e.status_code == 409 and conflict_field:
        return FormErrors(fields={conflict_field: message}, status_code=409)
    return FormErrors(messages=[message], status_code=e.status_code)


def build(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model(**data)
    except ValidationError as e:
        raise errors_from_items(e.errors()) from None


async def call(coro: Awaitable[T], *, conflict_field: str | None = None) -> T:
    try:
        return await coro
    except RequestValidationError as e:
        raise errors_from_items(list(e.errors())) from None
    except HTTPException as e:
        raise _from_http(e, conflict_field) from None


# --- telephony configurations -------------------------------------------------------------------


async def create_configuration(svc: Services, org: Organization, data: dict[str, Any]) -> str:
    body = build(api_telephony.ConfigCreate, data)
    out = await call(api_telephony.create_configuration(body, org, svc), conflict_field="stasis_app_name")
    return out.id


async def update_configuration(svc: Services, org: Organization, config_id: str, data: dict[str, Any]) -> None:
    body = build(api_telephony.ConfigPatch, data)
    await call(api_telephony.update_configuration(config_id, body, org, svc), conflict_field="stasis_app_name")


async def delete_configuration(svc: Services, org: Organization, config_id: str) -> None:
    await call(api_telephony.delete_configuration(config_id, org, svc))


async def configuration_status(svc: Services, org: Organization, config_id: str) -> dict[str, Any]:
    return await call(api_telephony.configuration_status(config_id, org, svc))


async def create_number(svc: Services, org: Organization, config_id: str, data: dict[str, Any]) -> str:
    body = build(api_telephony.NumberCreate, data)
    number = await call(api_telephony.create_number(config_id, body, org, svc), conflict_field="address")
    return number.id


async def update_number(svc: Services, org: Organization, config_id: str, number_id: str, data: dict[str, Any]) -> None:
    body = build(api_telephony.NumberPatch, data)
    await call(api_telephony.update_number(config_id, number_id, body, org, svc), conflict_field="address")


async def delete_number(svc: Services, org: Organization, config_id: str, number_id: str) -> None:
    await call(api_telephony.delete_number(config_id, number_id, org, svc))


# --- workflows ----------------------------------------------------------------------------------


async def create_workflow(svc: Services, org: Organization, name: str, definition: dict[str, Any]) -> str:
    body = build(api_workflows.WorkflowCreate, {"name": name, "definition": definition})
    wf = await call(api_workflows.create_workflow(body, org, svc))
    return wf.id


async def update_workflow(
    svc: Services, org: Organization, workflow_id: str, name: str, definition: dict[str, Any]
) -> None:
    body = build(api_workflows.WorkflowPatch, {"name": name, "definition": definition})
    await call(api_workflows.update_workflow(workflow_id, body, org, svc))


async def delete_workflow(svc: Services, org: Organization, workflow_id: str) -> None:
    await call(api_workflows.delete_workflow(workflow_id, org, svc))


async def place_call(
    svc: Services, org: Organization, workflow_id: str, config_id: str, to: str, from_extension: str | None = None
) -> str:
    fields: dict[str, str] = {"telephony_configuration_id": config_id, "to": to}
    if from_extension:
        fields["from"] = from_extension
    body = build(api_workflows.CallCreate, fields)
    accepted = await call(api_workflows.place_call(workflow_id, body, org, svc))
    return accepted.run_id
