"""One error shape for the whole API.

Every error body carries ``message`` (a sentence for humans and logs) and ``detail``. For 422 the
``detail`` list keeps FastAPI's shape (``type``, ``loc``, ``msg``) so generic clients keep working,
but we drop pydantic's ``input``/``ctx`` echo: a rejected ``app_password`` with a trailing space
would otherwise be sent straight back in the response. Our own checks (a definition node that
does not exist, a workflow id from another organization) raise :func:`field_error` and come out
in exactly the same shape as pydantic's.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.utils import get_flat_params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

# pydantic prefixes messages of validators that raise ValueError; the field name already says
# which check failed, the prefix only adds noise.
_PREFIXES = ("Value error, ", "Assertion failed, ")
_SOURCES = ("body", "query", "path", "header", "cookie")

# Nicer wording for pydantic's most common built-in messages.
_REWRITES = {
    "missing": "field required",
    "extra_forbidden": "unknown field",
    "json_invalid": "request body is not valid JSON",
    "dict_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
}


def field_error(loc: Sequence[str | int], msg: str, type_: str = "value_error") -> RequestValidationError:
    """A 422 for one field, indistinguishable from one pydantic raised. ``raise field_error(...)``."""
    return field_errors([(loc, msg)], type_)


def field_errors(
    items: Iterable[tuple[Sequence[str | int], str]], type_: str = "value_error"
) -> RequestValidationError:
    return RequestValidationError([{"type": type_, "loc": tuple(loc), "msg": msg} for loc, msg in items])


def format_loc(loc: Sequence[Any]) -> str:
    """``("body", "definition", "edges", 1, "to")`` → ``definition.edges[1].to``."""
    parts = list(loc)
    if parts and parts[0] in _SOURCES and len(parts) > 1:
        parts = parts[1:]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "request"


def clean_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    cleaned: list[dict[str, Any]] = []
    for err in errors:
        loc = [p if isinstance(p, int) else str(p) for p in err.get("loc", ())]
        type_ = str(err.get("type", "value_error"))
        msg = str(err.get("msg", "invalid value"))
        for prefix in _PREFIXES:
            if msg.startswith(prefix):
                msg = msg[len(prefix) :]
        msg = _REWRITES.get(type_, msg)
        if type_ == "missing" and loc == ["body"]:
            msg = "request body required (JSON)"
        cleaned.append({"type": type_, "loc": loc, "msg": msg})
    return cleaned


def summary(errors: list[dict[str, Any]]) -> str:
    parts = [f"{format_loc(e['loc'])}: {e['msg']}" for e in errors]
    return "Invalid request: " + "; ".join(parts) if parts else "Invalid request"


def validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = clean_errors(exc.errors())
    return JSONResponse(status_code=422, content={"message": summary(errors), "detail": errors})


def http_response(exc: StarletteHTTPException) -> Response:
    headers = getattr(exc, "headers", None)
    if exc.status_code in (204, 304) or exc.status_code < 200:
        return Response(status_code=exc.status_code, headers=headers)
    detail = exc.detail
    message = detail if isinstance(detail, str) else "request failed"
    return JSONResponse({"message": message, "detail": detail}, status_code=exc.status_code, headers=headers)


class ErrorOut(BaseModel):
    """The body of every error response but 422."""

    message: str
    detail: Any
    """The same sentence as ``message`` for the API's own errors."""


class FieldErrorOut(BaseModel):
    type: str
    loc: list[str | int]
    """Where the problem is, like ``["body", "definition", "edges", 1, "to"]``."""
    msg: str


class ValidationErrorOut(BaseModel):
    """The body of a 422: one summary sentence, and one item per field in error."""

    message: str
    detail: list[FieldErrorOut]


def error_response(description: str, model: type[BaseModel] = ErrorOut) -> dict[str, Any]:
    """An OpenAPI ``responses`` entry for an error status, for routes to list the ones they raise."""
    return {"model": model, "description": description}


class ApiRoute(APIRoute):
    """Formats the API's errors at the route itself, so the shape does not depend on handlers being
    installed on whichever app mounts ``api_router`` (the dashboard calls the route functions
    directly and still sees the raw exceptions).

    It also documents the errors every route can answer with (401; 404 for a path id; 400 and 422
    for request data), so the OpenAPI document lists each status a client can actually get and the
    real shape of its body; routes add their own (409, 429, ...) with ``responses=``."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        common: dict[int | str, dict[str, Any]] = {
            401: error_response("Missing, invalid or revoked API key."),
        }
        if self.param_convertors:
            common[404] = error_response("No such object in your organization.")
        if self.body_field is not None:
            common[400] = error_response("The request body could not be decoded.")
        if self.body_field is not None or get_flat_params(self.dependant):
            # Replaces FastAPI's default 422 entry, which describes a body shape we do not send.
            common[422] = error_response("Invalid request data; `detail` names each field.", ValidationErrorOut)
        self.responses = {**common, **self.responses}

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return validation_response(exc)
            except StarletteHTTPException as exc:
                return http_response(exc)

        return route_handler


async def _validation_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return validation_response(exc)


async def _http_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return http_response(exc)


def install_error_handlers(app: FastAPI) -> None:
    """Optional, app-wide: the same shape for errors raised outside API routes (unknown paths)."""
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
