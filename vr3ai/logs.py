"""Structured logs (one JSON object per line) with secrets redacted.

Secrets are kept out of log calls by construction (we never format them into messages), and this
filter is the second line of defence: every registered secret value is replaced wherever it shows
up, in the message, in ``extra`` fields and in exception text. ``vr3ai.core.secrets`` registers
each password and key it decrypts or creates.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from typing import Any

_REDACTED = "***"
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_pattern: re.Pattern[str] | None = None
# Credentials that show up inside URLs or headers even when nobody registered them.
_INLINE = re.compile(r"(api_key=[^&\s:]+:)[^&\s\"']+|(Basic\s+)[A-Za-z0-9+/=]{8,}|(://[^/\s:@]+:)[^@\s/]+@")

_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def register_secret(value: str | None) -> None:
    """Make sure ``value`` never appears in a log line. Short values are ignored (too many false hits)."""
    global _pattern
    if not value or len(value) < 4:
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets.add(value)
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def redact(text: str) -> str:
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(_REDACTED, text)

    def _inline(m: re.Match[str]) -> str:
        prefix = m.group(1) or m.group(2) or m.group(3)
        return prefix + _REDACTED + ("@" if m.group(3) else "")

    return _INLINE.sub(_inline, text)


def _redact_value(value: Any) -> Any:
    # Anything that is not plain JSON is turned into (redacted) text here rather than by
    # json.dumps(default=str) later, which would bypass redaction. A dead weakref proxy raises on
    # any use, so even the type checks are guarded.
    try:
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return redact(value)
        if isinstance(value, dict):
            return {str(k): _redact_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set):
            return [_redact_value(v) for v in value]
        return redact(str(value))
    except ReferenceError:
        return "<gone>"
    except Exception:
        return "<unprintable>"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = _redact_value(value)
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={_redact_value(v)}"
            for k, v in record.__dict__.items()
            if k not in _STD_ATTRS and not k.startswith("_")
        )
        base = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {redact(record.getMessage())}"
        if extras:
            base += f" [{extras}]"
        if record.exc_info:
            base += "\n" + redact(self.formatException(record.exc_info))
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
