"""chan_websocket control messages (Asterisk 22.10), both directions, plain-text and JSON.

Why a module of its own: the same messages exist in two spellings (``control_message_format`` /
dial option ``f()``), the session must speak whichever one Asterisk chose for the call, and tests
must be able to play Asterisk. So every message is a frozen dataclass, and there are exactly four
functions: :func:`parse_event` / :func:`format_event` (Asterisk -> us, and the fake Asterisk in
tests) and :func:`format_command` / :func:`parse_command` (us -> Asterisk).

Rules taken from ``chan_websocket.c`` 22.10.1 (see the reference doc, §3.7-3.9):

* Text payloads longer than 128 bytes are silently ignored by Asterisk, so :func:`format_command`
  refuses to build them (``ValueError``), instead of letting a command vanish on the wire.
* Plain text is whitespace-delimited: ``COMMAND[ <argument>]`` and events ``NAME key:value ...``.
  Correlation ids therefore must not contain whitespace or ``:``; we also keep them to a safe
  ASCII set so the JSON and plain spellings are byte-for-byte predictable.
* ``SET_MEDIA_DIRECTION`` exists only in JSON.

:func:`parse_event` and :func:`parse_command` never raise: anything unexpected comes back as
:class:`UnknownEvent` / :class:`UnknownCommand` (well-formed, unknown name) or :class:`Malformed`
(could not be read at all). The socket is untrusted input; a parser exception there would kill the
reader, which would stall Asterisk (its writes block when we stop reading).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Literal

MAX_TEXT_BYTES: Final = 128
"""Asterisk's MAX_TEXT_MESSAGE_LEN: longer TEXT messages are dropped without an ERROR event."""

_CORRELATION_ID_RE: Final = re.compile(r"[A-Za-z0-9._~+=@#/-]{1,64}")
# 64 keeps the longest JSON spelling (STOP_MEDIA_BUFFERING, 55 bytes of overhead) under 128 bytes.


class ControlFormat(StrEnum):
    """How Asterisk spells control messages on this call (chan_websocket.conf or ``f()``)."""

    PLAIN = "plain-text"
    JSON = "json"


MediaDirection = Literal["both", "in", "out"]
_DIRECTIONS: Final = frozenset({"both", "in", "out"})


def is_valid_correlation_id(value: str) -> bool:
    """Safe in both spellings: no whitespace, no ``:``, no quotes/backslashes, 1-64 ASCII chars."""
    return bool(_CORRELATION_ID_RE.fullmatch(value))


# ------------------------------------------------------------------------------------------------
# Events (Asterisk -> app)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaStart:
    """First message on every media socket. ``channel_id`` is the ARI channel id (22.7+)."""

    connection_id: str
    channel: str
    channel_id: str
    format: str
    optimal_frame_size: int
    ptime: int
    channel_variables: dict[str, str] = field(default_factory=dict)
    """Only in JSON mode: every variable on the WebSocket channel at connect time."""


@dataclass(frozen=True, slots=True)
class MediaXoff:
    """Asterisk's queue reached 900 frames: stop sending audio."""

    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class MediaXon:
    """Asterisk's queue fell below 800 frames after an XOFF (also one tick after a flush)."""

    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class QueueDrained:
    """One-shot answer to REPORT_QUEUE_DRAINED: the queue ran empty."""

    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class MediaBufferingCompleted:
    """The STOP_MEDIA_BUFFERING marker reached the head of the queue."""

    correlation_id: str | None = None
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class MediaMarkProcessed:
    """A MARK_MEDIA marker reached the head of the queue: everything before it was played."""

    correlation_id: str | None = None
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class DtmfEnd:
    digit: str
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class Status:
    """Reply to GET_STATUS. ``queue_length`` counts audio frames only (markers are not counted)."""

    channel_id: str | None
    queue_length: int
    xon_level: int
    xoff_level: int
    queue_full: bool
    bulk_media: bool
    media_paused: bool


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """Asterisk refused a command (bad JSON, passthrough, direction, ...)."""

    error_text: str
    channel_id: str | None = None


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """Well-formed, but a name this code does not know (a newer Asterisk)."""

    name: str
    raw: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """Could not be read as any control message."""

    raw: str
    reason: str


Event = (
    MediaStart
    | MediaXoff
    | MediaXon
    | QueueDrained
    | MediaBufferingCompleted
    | MediaMarkProcessed
    | DtmfEnd
    | Status
    | ErrorEvent
)
ParsedEvent = Event | UnknownEvent | Malformed


# ------------------------------------------------------------------------------------------------
# Commands (app -> Asterisk)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    pass


@dataclass(frozen=True, slots=True)
class Hangup:
    pass


@dataclass(frozen=True, slots=True)
class StartMediaBuffering:
    pass


@dataclass(frozen=True, slots=True)
class StopMediaBuffering:
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True)
class MarkMedia:
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True)
class FlushMedia:
    pass


@dataclass(frozen=True, slots=True)
class PauseMedia:
    pass


@dataclass(frozen=True, slots=True)
class ContinueMedia:
    pass


@dataclass(frozen=True, slots=True)
class GetStatus:
    pass


@dataclass(frozen=True, slots=True)
class ReportQueueDrained:
    pass


@dataclass(frozen=True, slots=True)
class SetMediaDirection:
    """JSON only (Asterisk answers the plain spelling with an ERROR)."""

    direction: MediaDirection


@dataclass(frozen=True, slots=True)
class UnknownCommand:
    name: str
    raw: str


Command = (
    Answer
    | Hangup
    | StartMediaBuffering
    | StopMediaBuffering
    | MarkMedia
    | FlushMedia
    | PauseMedia
    | ContinueMedia
    | GetStatus
    | ReportQueueDrained
    | SetMediaDirection
)
ParsedCommand = Command | UnknownCommand | Malformed
_SimpleCommand = (
    Answer | Hangup | StartMediaBuffering | FlushMedia | PauseMedia | ContinueMedia | GetStatus | ReportQueueDrained
)

_SIMPLE_COMMANDS: Final[dict[str, type[_SimpleCommand]]] = {
    "ANSWER": Answer,
    "HANGUP": Hangup,
    "START_MEDIA_BUFFERING": StartMediaBuffering,
    "FLUSH_MEDIA": FlushMedia,
    "PAUSE_MEDIA": PauseMedia,
    "CONTINUE_MEDIA": ContinueMedia,
    "GET_STATUS": GetStatus,
    "REPORT_QUEUE_DRAINED": ReportQueueDrained,
}
_COMMAND_NAMES: Final[dict[type[Any], str]] = {
    **{cls: name for name, cls in _SIMPLE_COMMANDS.items()},
    StopMediaBuffering: "STOP_MEDIA_BUFFERING",
    MarkMedia: "MARK_MEDIA",
    SetMediaDirection: "SET_MEDIA_DIRECTION",
}

# Pre-rendered because they are sent on hot paths (flush on every barge-in).
_SIMPLE_TEXT: Final[dict[tuple[type[Any], ControlFormat], str]] = {
    **{(cls, ControlFormat.PLAIN): name for name, cls in _SIMPLE_COMMANDS.items()},
    **{
        (cls, ControlFormat.JSON): json.dumps({"command": name}, separators=(",", ":"))
        for name, cls in _SIMPLE_COMMANDS.items()
    },
}


def format_command(command: Command, fmt: ControlFormat = ControlFormat.PLAIN) -> str:
    """The TEXT payload for ``command``. Raises ``ValueError`` if Asterisk would not accept it
    (bad correlation id, > 128 bytes, SET_MEDIA_DIRECTION in plain text)."""
    simple = _SIMPLE_TEXT.get((type(command), fmt))
    if simple is not None:
        return simple
    if isinstance(command, StopMediaBuffering | MarkMedia):
        name = _COMMAND_NAMES[type(command)]
        cid = command.correlation_id
        if cid is not None and not is_valid_correlation_id(cid):
            raise ValueError(f"correlation id not safe for chan_websocket: {cid!r}")
        if fmt is ControlFormat.PLAIN:
            text = name if cid is None else f"{name} {cid}"
        else:
            obj: dict[str, str] = {"command": name}
            if cid is not None:
                obj["correlation_id"] = cid
            text = json.dumps(obj, separators=(",", ":"))
    elif isinstance(command, SetMediaDirection):
        if fmt is not ControlFormat.JSON:
            raise ValueError("SET_MEDIA_DIRECTION exists only in JSON control format")
        if command.direction not in _DIRECTIONS:
            raise ValueError(f"invalid media direction: {command.direction!r}")
        text = json.dumps({"command": "SET_MEDIA_DIRECTION", "direction": command.direction}, separators=(",", ":"))
    else:
        raise TypeError(f"not a command: {command!r}")
    if len(text.encode()) > MAX_TEXT_BYTES:
        raise ValueError(f"command longer than {MAX_TEXT_BYTES} bytes would be ignored by Asterisk")
    return text


def parse_command(text: str) -> ParsedCommand:
    """Read a command the way chan_websocket does (used by the fake Asterisk in tests). Never raises."""
    try:
        return _parse_command(text)
    except Exception as exc:  # the contract is "never raises"; any bug here must not kill a reader
        return Malformed(_clip(text), f"parser error: {type(exc).__name__}")


def _parse_command(text: str) -> ParsedCommand:
    if not isinstance(text, str):
        return Malformed(repr(text)[:200], "not a string")
    stripped = text.strip()
    if not stripped:
        return Malformed("", "empty")
    if len(stripped.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        return Malformed(_clip(text), "longer than 128 bytes")
    if stripped.startswith("{"):
        obj = _load_json_object(stripped)
        if obj is None:
            return Malformed(_clip(text), "invalid JSON")
        name = obj.get("command")
        if not isinstance(name, str):
            return Malformed(_clip(text), "missing command")
        cid_raw = obj.get("correlation_id")
        cid = cid_raw if isinstance(cid_raw, str) and cid_raw else None
        if name in _SIMPLE_COMMANDS:
            return _SIMPLE_COMMANDS[name]()
        if name == "STOP_MEDIA_BUFFERING":
            return StopMediaBuffering(cid)
        if name == "MARK_MEDIA":
            return MarkMedia(cid)
        if name == "SET_MEDIA_DIRECTION":
            direction = obj.get("direction")
            if isinstance(direction, str) and direction in _DIRECTIONS:
                return SetMediaDirection(direction)  # type: ignore[arg-type]
            return Malformed(_clip(text), "invalid direction")
        return UnknownCommand(name, _clip(text))
    name, _, arg = stripped.partition(" ")
    arg = arg.strip()
    if name in _SIMPLE_COMMANDS:
        return _SIMPLE_COMMANDS[name]()
    if name == "STOP_MEDIA_BUFFERING":
        return StopMediaBuffering(arg or None)
    if name == "MARK_MEDIA":
        return MarkMedia(arg or None)
    return UnknownCommand(name, _clip(text))


# ------------------------------------------------------------------------------------------------
# Event parsing / formatting
# ------------------------------------------------------------------------------------------------

_NODATA_EVENTS: Final[dict[str, type[MediaXoff | MediaXon | QueueDrained]]] = {
    "MEDIA_XOFF": MediaXoff,
    "MEDIA_XON": MediaXon,
    "QUEUE_DRAINED": QueueDrained,
}
_CORRELATED_EVENTS: Final[dict[str, type[MediaBufferingCompleted | MediaMarkProcessed]]] = {
    "MEDIA_BUFFERING_COMPLETED": MediaBufferingCompleted,
    "MEDIA_MARK_PROCESSED": MediaMarkProcessed,
}
_EVENT_NAMES: Final[dict[type[Any], str]] = {
    MediaStart: "MEDIA_START",
    **{cls: name for name, cls in _NODATA_EVENTS.items()},
    **{cls: name for name, cls in _CORRELATED_EVENTS.items()},
    DtmfEnd: "DTMF_END",
    Status: "STATUS",
    ErrorEvent: "ERROR",
}
_NAME_RE: Final = re.compile(r"[A-Z][A-Z0-9_]*")


def parse_event(text: str | bytes) -> ParsedEvent:
    """Parse one TEXT message from Asterisk, in either spelling (detected per message). Never raises."""
    try:
        if isinstance(text, bytes | bytearray | memoryview):
            text = bytes(text).decode("utf-8", "replace")
        return _parse_event(text)
    except Exception as exc:  # the contract is "never raises"; any bug here must not kill a reader
        return Malformed(_clip(text), f"parser error: {type(exc).__name__}")


def detect_format(text: str) -> ControlFormat:
    """Which spelling a message uses (Asterisk strips whitespace; JSON is always an object)."""
    return ControlFormat.JSON if text.lstrip().startswith("{") else ControlFormat.PLAIN


def _parse_event(text: str) -> ParsedEvent:
    if not isinstance(text, str):
        return Malformed(repr(text)[:200], "not a string")
    stripped = text.strip()
    if not stripped:
        return Malformed("", "empty")
    if stripped.startswith("{"):
        return _parse_json_event(stripped, text)
    return _parse_plain_event(stripped, text)


def _parse_plain_event(stripped: str, raw: str) -> ParsedEvent:
    name, _, rest = stripped.partition(" ")
    rest = rest.strip()
    if not _NAME_RE.fullmatch(name):
        return Malformed(_clip(raw), "no event name")
    if name in _NODATA_EVENTS:
        fields = _plain_fields(rest)
        return _NODATA_EVENTS[name](channel_id=fields.get("channel_id") if fields else None)
    if name in _CORRELATED_EVENTS:
        # The argument is the correlation id verbatim, not key:value.
        return _CORRELATED_EVENTS[name](correlation_id=rest or None)
    if name == "ERROR":
        # error_text is free text with spaces and runs to the end of the line.
        head, sep, error_text = rest.partition("error_text:")
        if not sep:
            return ErrorEvent(error_text=rest, channel_id=None)
        fields = _plain_fields(head) or {}
        return ErrorEvent(error_text=error_text.strip(), channel_id=fields.get("channel_id"))
    fields = _plain_fields(rest)
    if fields is None:
        return Malformed(_clip(raw), f"{name}: fields are not key:value")
    if name == "MEDIA_START":
        return _media_start(fields, {}, raw)
    if name == "DTMF_END":
        digit = fields.get("digit", "")
        if len(digit) != 1:
            return Malformed(_clip(raw), "DTMF_END without a single digit")
        return DtmfEnd(digit=digit, channel_id=fields.get("channel_id"))
    if name == "STATUS":
        return _status(fields, raw)
    return UnknownEvent(name, _clip(raw))


def _plain_fields(rest: str) -> dict[str, str] | None:
    fields: dict[str, str] = {}
    for token in rest.split():
        key, sep, value = token.partition(":")
        if not sep or not key:
            return None
        fields[key] = value
    return fields


def _parse_json_event(stripped: str, raw: str) -> ParsedEvent:
    obj = _load_json_object(stripped)
    if obj is None:
        return Malformed(_clip(raw), "invalid JSON")
    name = obj.get("event")
    if not isinstance(name, str) or not name:
        return Malformed(_clip(raw), "missing event")
    channel_id = _opt_str(obj.get("channel_id"))
    if name in _NODATA_EVENTS:
        return _NODATA_EVENTS[name](channel_id=channel_id)
    if name in _CORRELATED_EVENTS:
        cid = _opt_str(obj.get("correlation_id")) or None
        return _CORRELATED_EVENTS[name](correlation_id=cid, channel_id=channel_id)
    if name == "ERROR":
        text = obj.get("error_text")
        return ErrorEvent(error_text=text.strip() if isinstance(text, str) else "", channel_id=channel_id)
    if name == "DTMF_END":
        digit = obj.get("digit")
        if not isinstance(digit, str) or len(digit) != 1:
            return Malformed(_clip(raw), "DTMF_END without a single digit")
        return DtmfEnd(digit=digit, channel_id=channel_id)
    if name == "MEDIA_START":
        fields = {k: v for k, v in obj.items() if k != "channel_variables"}
        variables_raw = obj.get("channel_variables")
        variables: dict[str, str] = {}
        if isinstance(variables_raw, dict):
            variables = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in variables_raw.items()}
        return _media_start(fields, variables, raw)
    if name == "STATUS":
        return _status(obj, raw)
    return UnknownEvent(name, _clip(raw))


def _media_start(fields: dict[str, Any], variables: dict[str, str], raw: str) -> ParsedEvent:
    channel_id = _opt_str(fields.get("channel_id"))
    fmt = _opt_str(fields.get("format"))
    size = _as_int(fields.get("optimal_frame_size"))
    ptime = _as_int(fields.get("ptime"))
    if not channel_id or not fmt or size is None or ptime is None:
        return Malformed(_clip(raw), "MEDIA_START lacks channel_id/format/optimal_frame_size/ptime")
    return MediaStart(
        connection_id=_opt_str(fields.get("connection_id")) or "",
        channel=_opt_str(fields.get("channel")) or "",
        channel_id=channel_id,
        format=fmt,
        optimal_frame_size=size,
        ptime=ptime,
        channel_variables=variables,
    )


def _status(fields: dict[str, Any], raw: str) -> ParsedEvent:
    ints = {k: _as_int(fields.get(k)) for k in ("queue_length", "xon_level", "xoff_level")}
    bools = {k: _as_bool(fields.get(k)) for k in ("queue_full", "bulk_media", "media_paused")}
    if any(v is None for v in ints.values()) or any(v is None for v in bools.values()):
        return Malformed(_clip(raw), "STATUS fields missing or mistyped")
    return Status(
        channel_id=_opt_str(fields.get("channel_id")),
        queue_length=ints["queue_length"] or 0,
        xon_level=ints["xon_level"] or 0,
        xoff_level=ints["xoff_level"] or 0,
        queue_full=bool(bools["queue_full"]),
        bulk_media=bool(bools["bulk_media"]),
        media_paused=bool(bools["media_paused"]),
    )


def format_event(event: Event, fmt: ControlFormat = ControlFormat.PLAIN) -> str:
    """Spell an event exactly as chan_websocket 22.10 does (for the fake Asterisk in tests).

    In plain text a ``None`` channel_id is left out (the 22.6 spelling)."""
    name = _EVENT_NAMES[type(event)]
    if fmt is ControlFormat.JSON:
        return json.dumps(_json_fields(name, event), separators=(",", ":"))
    if isinstance(event, MediaStart):
        return (
            f"MEDIA_START connection_id:{event.connection_id} channel:{event.channel} "
            f"channel_id:{event.channel_id} format:{event.format} "
            f"optimal_frame_size:{event.optimal_frame_size} ptime:{event.ptime}"
        )
    if isinstance(event, MediaXoff | MediaXon | QueueDrained):
        return name
    if isinstance(event, MediaBufferingCompleted | MediaMarkProcessed):
        return name if not event.correlation_id else f"{name} {event.correlation_id}"
    if isinstance(event, DtmfEnd):
        return f"DTMF_END digit:{event.digit}" + _plain_cid(event.channel_id)
    if isinstance(event, Status):
        return (
            f"STATUS{_plain_cid(event.channel_id)} queue_length:{event.queue_length} "
            f"xon_level:{event.xon_level} xoff_level:{event.xoff_level} "
            f"queue_full:{_b(event.queue_full)} bulk_media:{_b(event.bulk_media)} "
            f"media_paused:{_b(event.media_paused)}"
        )
    if isinstance(event, ErrorEvent):
        return f"ERROR{_plain_cid(event.channel_id)} error_text:{event.error_text}"
    raise TypeError(f"not an event: {event!r}")  # pragma: no cover


def _json_fields(name: str, event: Event) -> dict[str, Any]:
    out: dict[str, Any] = {"event": name}
    if isinstance(event, MediaStart):
        out.update(
            connection_id=event.connection_id,
            channel=event.channel,
            channel_id=event.channel_id,
            format=event.format,
            optimal_frame_size=event.optimal_frame_size,
            ptime=event.ptime,
            channel_variables=dict(event.channel_variables),
        )
        return out
    out["channel_id"] = event.channel_id or ""
    if isinstance(event, MediaBufferingCompleted | MediaMarkProcessed):
        out["correlation_id"] = event.correlation_id or ""
    elif isinstance(event, DtmfEnd):
        out["digit"] = event.digit
    elif isinstance(event, Status):
        out.update(
            queue_length=event.queue_length,
            xon_level=event.xon_level,
            xoff_level=event.xoff_level,
            queue_full=event.queue_full,
            bulk_media=event.bulk_media,
            media_paused=event.media_paused,
        )
    elif isinstance(event, ErrorEvent):
        out["error_text"] = event.error_text
    return out


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _load_json_object(text: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 12:
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if value == "true":
        return True
    if value == "false":
        return False
    return None


def _b(value: bool) -> str:
    return "true" if value else "false"


def _plain_cid(channel_id: str | None) -> str:
    return f" channel_id:{channel_id}" if channel_id else ""


def _clip(text: object, limit: int = 300) -> str:
    """Raw text kept in Unknown/Malformed values, bounded so a hostile peer cannot bloat logs."""
    if not isinstance(text, str):
        text = repr(text)
    return text if len(text) <= limit else text[:limit] + "..."
