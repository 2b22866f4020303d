"""Structured logs (one JSON object per line) with secrets redacted.

Secrets are kept out of log calls by construction (we never format them into messages); redaction
is the second line of defence, and it is **per object**, never process-wide:

* every line gets the generic inline patterns (credentials inside URLs, HTTP Basic headers,
  ``api_key=`` parameters), whoever logged it;
* an object that holds secrets (an ARI connection, a call, a diagnostics run) logs through a
  :class:`RedactingLogger` carrying a :class:`Redactor` built from *its own* configuration's
  values, and only those are replaced in its lines.

Why not one set of every value ever decrypted (what this module used to keep): it was fed by every
tenant, including ``POST /secrets``, so text that one tenant controls (its own "Asterisk"'s error
messages) came back with *other* tenants' passwords turned into ``***`` — an oracle; a common word
stored as a secret vanished from every log; and each new value rebuilt one regular expression over
all of them (seconds of CPU per thousand secrets, then work on every line in proportion to the
number of secrets of the whole installation). A per-object redactor is built once from a handful
of values and costs the same whatever the other tenants store.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable, MutableMapping
from typing import Any

_REDACTED = "***"
_MIN_SECRET_LEN = 4
"""Shorter values are not redacted: they would hit ordinary text everywhere."""
_REDACTOR_ATTR = "_vr3ai_redactor"
"""LogRecord attribute a :class:`RedactingLogger` sets (leading ``_``: never printed as a field)."""
# Credentials that show up inside URLs or headers even when nobody registered them.
_INLINE = re.compile(r"(api_key=[^&\s:]+:)[^&\s\"']+|(Basic\s+)[A-Za-z0-9+/=]{8,}|(://[^/\s:@]+:)[^@\s/]+@")

_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _inline(m: re.Match[str]) -> str:
    prefix = m.group(1) or m.group(2) or m.group(3)
    return prefix + _REDACTED + ("@" if m.group(3) else "")


def redact(text: str) -> str:
    """The generic inline patterns only (URL credentials, Basic headers, ``api_key=``). Knows no
    stored secret: use an object's :class:`Redactor` for those."""
    return _INLINE.sub(_inline, text)


class Redactor:
    """Replaces a fixed, small set of values (one configuration's passwords, one call's keys),
    then applies the generic patterns. Immutable: built once, shared freely."""

    __slots__ = ("_pattern", "_values")

    def __init__(self, values: Iterable[str | None] = ()) -> None:
        # Longest first, so a value that contains another is replaced whole.
        self._values = tuple(sorted({v for v in values if v and len(v) >= _MIN_SECRET_LEN}, key=len, reverse=True))
        self._pattern = re.compile("|".join(re.escape(v) for v in self._values)) if self._values else None

    def with_values(self, values: Iterable[str | None]) -> Redactor:
        """A redactor for this object's values plus ``values`` (e.g. a call's organization secrets)."""
        return Redactor([*self._values, *values])

    def redact(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(_REDACTED, text)
        return redact(text)


GENERIC = Redactor()


class RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """``logger`` whose records carry ``redactor``: the formatters below apply it to the message,
    the extra fields and the exception text of every line logged through this adapter."""

    def __init__(self, logger: logging.Logger, redactor: Redactor, extra: dict[str, Any] | None = None) -> None:
        super().__init__(logger, extra or {})
        self.redactor = redactor

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**self.extra, **(kwargs.get("extra") or {}), _REDACTOR_ATTR: self.redactor}  # type: ignore[dict-item]
        return msg, kwargs


def _redactor_of(record: logging.LogRecord) -> Redactor:
    found = record.__dict__.get(_REDACTOR_ATTR)
    return found if isinstance(found, Redactor) else GENERIC


def _redact_value(value: Any, redactor: Redactor = GENERIC) -> Any:
    # Anything that is not plain JSON is turned into (redacted) text here rather than by
    # json.dumps(default=str) later, which would bypass redaction. A dead weakref proxy raises on
    # any use, so even the type checks are guarded.
    try:
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return redactor.redact(value)
        if isinstance(value, dict):
            return {str(k): _redact_value(v, redactor) for k, v in value.items()}
        if isinstance(value, list | tuple | set):
            return [_redact_value(v, redactor) for v in value]
        return redactor.redact(str(value))
    except ReferenceError:
        return "<gone>"
    except Exception:
        return "<unprintable>"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        redactor = _redactor_of(record)
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redactor.redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = _redact_value(value, redactor)
        if record.exc_info:
            out["exc"] = redactor.redact(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        redactor = _redactor_of(record)
        extras = " ".join(
            f"{k}={_redact_value(v, redactor)}"
            for k, v in record.__dict__.items()
            if k not in _STD_ATTRS and not k.startswith("_")
        )
        base = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {redactor.redact(record.getMessage())}"
        if extras:
            base += f" [{extras}]"
        if record.exc_info:
            base += "\n" + redactor.redact(self.formatException(record.exc_info))
        return base


def setup_logging(json_lines: bool = True, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party loggers that would print request URLs with credentials at INFO/DEBUG.
    for noisy in ("httpx", "httpcore", "websockets", "uvicorn.access", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
