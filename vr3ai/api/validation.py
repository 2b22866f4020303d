"""Field rules shared by the request schemas. Each raises ``ValueError`` with a message that reads
well after the field name (``stasis_app_name: has leading or trailing spaces; …``)."""

from __future__ import annotations

import re
import string
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, field_validator

from vr3ai.telephony.registry import PROVIDERS

_EXTRA_SPACES = (
    "has leading or trailing spaces; ensure there are no extra spaces in the credentials "
    "(Asterisk compares them character by character)"
)
_IDENT = re.compile(r"[A-Za-z0-9_.-]+")
# A dialable target / inbound extension: digits, letters and the characters Asterisk extensions use.
# No '/', '&' or ',' — they would split one dial string into several channels or options.
_EXTENSION = re.compile(r"[A-Za-z0-9+*#_.-]+")
_DIAL_TARGET = re.compile(r"[A-Za-z0-9+*#_.@-]+")
_TECH = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# The resource of a full dial string: what PJSIP/IAX2/Local/DAHDI resources and SIP URIs use. No ','
# or '&' (Dial options, a second channel), no spaces, no '$' or '(' (nothing that looks like dialplan).
_DIAL_RESOURCE = re.compile(r"[A-Za-z0-9+*#_.@:;=/~\[\]-]+")
_CHANNEL_TECHS = {
    t.lower(): t
    for t in ("PJSIP", "SIP", "IAX2", "DAHDI", "Local", "Motif", "Skinny", "MGCP", "UNISTIM", "ooh323", "Console")
}
"""Channel technologies a dial string may name (compared case-insensitively, as Asterisk does): the
drivers that place calls to phones, trunks or the dialplan."""


def _no_outer_spaces(value: str) -> None:
    if value != value.strip():
        raise ValueError(_EXTRA_SPACES)


def _identifier(value: str) -> str:
    """ARI user names and websocket_client.conf section names."""
    _no_outer_spaces(value)
    if not value:
        raise ValueError("must not be empty")
    if any(c.isspace() for c in value):
        raise ValueError("must not contain spaces")
    if not _IDENT.fullmatch(value):
        raise ValueError("may only contain letters, digits, '_', '.' and '-'")
    if len(value) > 200:
        raise ValueError("must be at most 200 characters")
    return value


def _password(value: str) -> str:
    _no_outer_spaces(value)
    if not value:
        raise ValueError("must not be empty")
    if any(not c.isprintable() for c in value):
        raise ValueError("must not contain control characters or line breaks")
    if len(value) > 500:
        raise ValueError("must be at most 500 characters")
    return value


def _display_name(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    if len(value) > 200:
        raise ValueError("must be at most 200 characters")
    return value.strip()


def _media_username(value: str) -> str:
    _no_outer_spaces(value)
    if not value:
        raise ValueError("must not be empty (leave it out or set null to have one generated)")
    if ":" in value or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("must not contain ':', spaces or control characters (HTTP Basic auth)")
    if len(value) > 200:
        raise ValueError("must be at most 200 characters")
    return value


def _from_extension(value: str) -> str:
    _no_outer_spaces(value)
    tech, slash, resource = value.rpartition("/") if "/" in value else ("", "", value)
    if not resource or (slash and not _TECH.fullmatch(tech)) or not _DIAL_TARGET.fullmatch(resource):
        raise ValueError("must be an extension like '6001' or a channel like 'PJSIP/6001'")
    if len(value) > 100:
        raise ValueError("must be at most 100 characters")
    return value


def _dial_template(value: str) -> str:
    _no_outer_spaces(value)
    if any(c.isspace() for c in value):
        raise ValueError("must not contain spaces")
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(value) if f is not None]
    except ValueError as e:
        raise ValueError(f"is not a valid template ({e}); write it like 'PJSIP/{{to}}'") from e
    if not any(f == "to" for f, _, _ in fields):
        raise ValueError("must contain '{to}', where the number to call is inserted, like 'PJSIP/{to}'")
    if any(f != "to" or spec or conv for f, spec, conv in fields):
        raise ValueError("may only use the placeholder '{to}'")
    if len(value) > 200:
        raise ValueError("must be at most 200 characters")
    return value


def _address(value: str) -> str:
    _no_outer_spaces(value)
    if not value:
        raise ValueError("must not be empty")
    if not _EXTENSION.fullmatch(value):
        raise ValueError("must be a SIP extension like '8000': digits, letters and + * # _ . - only")
    if len(value) > 100:
        raise ValueError("must be at most 100 characters")
    return value


def dial_string_problem(value: str) -> str | None:
    """Why ``value`` is not a full dial string Asterisk can originate (``TECH/resource``), or None."""
    tech, _, resource = value.partition("/")
    if tech.lower() not in _CHANNEL_TECHS:
        known = ", ".join(sorted(_CHANNEL_TECHS.values()))
        return f"is a dial string with an unknown channel technology '{tech}' (known: {known})"
    if "," in value or "&" in value:
        # ',' would start Dial options and '&' a second channel: one test call dials one channel.
        return "must be one dial string: ',' and '&' are not allowed"
    if not resource or not _DIAL_RESOURCE.fullmatch(resource):
        return (
            "must be a dial string like 'PJSIP/6001', 'PJSIP/6001/sip:6001@pbx' or 'Local/6001@from-internal': "
            "letters, digits and + * # _ . @ : ; = / - only"
        )
    return None


def _dial_to(value: str) -> str:
    """Who a call goes to: an extension or number (dialled through the configuration's dial
    template), or a full dial string of a known channel technology (dialled as written)."""
    _no_outer_spaces(value)
    if not value:
        raise ValueError("must not be empty")
    if len(value) > 200:
        raise ValueError("must be at most 200 characters")
    if "/" in value:
        problem = dial_string_problem(value)
        if problem:
            raise ValueError(problem)
        return value
    if not _DIAL_TARGET.fullmatch(value):
        raise ValueError(
            "must be an extension or number like '6001' or '+15551234567', or a full dial string like 'PJSIP/6001'"
        )
    if len(value) > 100:
        raise ValueError("must be at most 100 characters")
    return value


def _secret_name(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    if not _IDENT.fullmatch(value):
        raise ValueError("may only contain letters, digits, '_', '.' and '-'")
    if len(value) > 200:
        raise ValueError("must be at most 200 characters")
    return value


def _secret_value(value: str) -> str:
    if value != value.strip():
        raise ValueError("has leading or trailing spaces; ensure there are no extra spaces in the secret")
    if not value:
        raise ValueError("must not be empty")
    if len(value) > 20000:
        raise ValueError("must be at most 20000 characters")
    return value


def _provider(value: str) -> str:
    if value not in PROVIDERS:  # the one provider list: vr3ai.telephony.registry
        raise ValueError(f"must be one of: {', '.join(PROVIDERS)}")
    return value


Identifier = Annotated[str, AfterValidator(_identifier)]
Password = Annotated[str, AfterValidator(_password)]
DisplayName = Annotated[str, AfterValidator(_display_name)]
MediaUsername = Annotated[str, AfterValidator(_media_username)]
FromExtension = Annotated[str, AfterValidator(_from_extension)]
DialTemplate = Annotated[str, AfterValidator(_dial_template)]
Address = Annotated[str, AfterValidator(_address)]
DialTo = Annotated[str, AfterValidator(_dial_to)]
SecretName = Annotated[str, AfterValidator(_secret_name)]
SecretValue = Annotated[str, AfterValidator(_secret_value)]
Provider = Annotated[str, AfterValidator(_provider)]


def _unstorable(value: Any, where: str = "") -> str | None:
    """Why ``value`` (or a string anywhere inside it) cannot be stored, or None."""
    if isinstance(value, str):
        at = f" (at {where})" if where else ""
        if "\x00" in value:
            return f"must not contain NUL characters{at}"
        try:
            value.encode()
        except UnicodeEncodeError:
            return f"must be valid Unicode: unpaired surrogate escape{at}"
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            problem = _unstorable(k, where) or _unstorable(v, f"{where}.{k}" if where else str(k))
            if problem:
                return problem
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if problem := _unstorable(v, f"{where}[{i}]"):
                return problem
    return None


class RequestBody(BaseModel):
    """Base of the request bodies: refuses text no storage can take, wherever it is in the body.
    JSON can carry both, and they used to surface as 500s: an unpaired surrogate (``"\\ud800"``)
    cannot be encoded as UTF-8 at all, and PostgreSQL text columns reject NUL."""

    @field_validator("*", mode="before")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        if problem := _unstorable(value):
            raise ValueError(problem)
        return value


def check_unique(values: list[str]) -> list[str]:
    seen: set[str] = set()
    for i, v in enumerate(values):
        if v in seen:
            raise ValueError(f"item {i} ('{v}') is listed twice")
        seen.add(v)
    return values
