"""chan_websocket control messages: both spellings, ground-truth strings, and a fuzz run."""

from __future__ import annotations

import json
import random
import string

import pytest

from vr3ai.media.protocol import (
    MAX_TEXT_BYTES,
    Answer,
    Command,
    ContinueMedia,
    ControlFormat,
    DtmfEnd,
    ErrorEvent,
    Event,
    FlushMedia,
    GetStatus,
    Hangup,
    Malformed,
    MarkMedia,
    MediaBufferingCompleted,
    MediaMarkProcessed,
    MediaStart,
    MediaXoff,
    MediaXon,
    PauseMedia,
    QueueDrained,
    ReportQueueDrained,
    SetMediaDirection,
    StartMediaBuffering,
    Status,
    StopMediaBuffering,
    UnknownCommand,
    UnknownEvent,
    detect_format,
    format_command,
    format_event,
    is_valid_correlation_id,
    parse_command,
    parse_event,
)

CID = "inbound-media-763df425"

EVENTS: list[Event] = [
    MediaStart("vr3ai", "WebSocket/vr3ai/0x7fbb90012170", CID, "ulaw", 160, 20),
    MediaXoff(CID),
    MediaXon(CID),
    QueueDrained(CID),
    MediaBufferingCompleted("buf-1", CID),
    MediaBufferingCompleted(None, CID),
    MediaMarkProcessed("bulk2s-end", CID),
    MediaMarkProcessed(None, CID),
    DtmfEnd("1", CID),
    DtmfEnd("#", CID),
    DtmfEnd("*", CID),
    Status(CID, 100, 800, 900, False, False, False),
    Status(CID, 1000, 800, 900, True, True, True),
    ErrorEvent("SET_MEDIA_DIRECTION only supports JSON format.", CID),
]

COMMANDS: list[Command] = [
    Answer(),
    Hangup(),
    StartMediaBuffering(),
    StopMediaBuffering(),
    StopMediaBuffering("buf-1"),
    MarkMedia(),
    MarkMedia("m1"),
    FlushMedia(),
    PauseMedia(),
    ContinueMedia(),
    GetStatus(),
    ReportQueueDrained(),
]


def _plain_equivalent(event: Event) -> Event:
    """Plain text carries no channel_id for the no-data and correlated events."""
    if isinstance(event, MediaXoff | MediaXon | QueueDrained):
        return type(event)(None)
    if isinstance(event, MediaBufferingCompleted | MediaMarkProcessed):
        return type(event)(event.correlation_id, None)
    return event


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_event_round_trip_plain(event: Event) -> None:
    text = format_event(event, ControlFormat.PLAIN)
    assert detect_format(text) is ControlFormat.PLAIN
    assert parse_event(text) == _plain_equivalent(event)


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_event_round_trip_json(event: Event) -> None:
    text = format_event(event, ControlFormat.JSON)
    assert detect_format(text) is ControlFormat.JSON
    assert "\n" not in text and '": ' not in text and '", "' not in text  # compact, one line
    assert parse_event(text) == event


@pytest.mark.parametrize("command", COMMANDS, ids=repr)
@pytest.mark.parametrize("fmt", list(ControlFormat))
def test_command_round_trip(command: Command, fmt: ControlFormat) -> None:
    text = format_command(command, fmt)
    assert len(text.encode()) <= MAX_TEXT_BYTES
    assert parse_command(text) == command


def test_set_media_direction_is_json_only() -> None:
    cmd = SetMediaDirection("in")
    text = format_command(cmd, ControlFormat.JSON)
    assert json.loads(text) == {"command": "SET_MEDIA_DIRECTION", "direction": "in"}
    assert parse_command(text) == cmd
    with pytest.raises(ValueError):
        format_command(cmd, ControlFormat.PLAIN)
    with pytest.raises(ValueError):
        format_command(SetMediaDirection("sideways"), ControlFormat.JSON)  # type: ignore[arg-type]


def test_exact_wire_spellings() -> None:
    assert format_command(MarkMedia("m1")) == "MARK_MEDIA m1"
    assert format_command(MarkMedia("m1"), ControlFormat.JSON) == '{"command":"MARK_MEDIA","correlation_id":"m1"}'
    assert format_command(FlushMedia(), ControlFormat.JSON) == '{"command":"FLUSH_MEDIA"}'
    assert format_command(GetStatus()) == "GET_STATUS"
    assert format_command(StopMediaBuffering()) == "STOP_MEDIA_BUFFERING"


@pytest.mark.parametrize("bad", ["", "has space", "co:lon", 'qu"ote', "back\\slash", "é", "x" * 65, "tab\t"])
def test_bad_correlation_ids_refused(bad: str) -> None:
    assert not is_valid_correlation_id(bad)
    for fmt in ControlFormat:
        with pytest.raises(ValueError):
            format_command(MarkMedia(bad), fmt)


def test_commands_never_exceed_128_bytes() -> None:
    longest = "a" * 64
    for fmt in ControlFormat:
        for cmd in (MarkMedia(longest), StopMediaBuffering(longest)):
            assert len(format_command(cmd, fmt).encode()) <= MAX_TEXT_BYTES


def test_ground_truth_plain_messages() -> None:
    """Verbatim messages captured from Asterisk 22.10.1."""
    ms = parse_event(
        "MEDIA_START connection_id:vr3ai channel:WebSocket/vr3ai/0x7fbb90012170 "
        "channel_id:inbound-media-763df425 format:ulaw optimal_frame_size:160 ptime:20"
    )
    assert ms == MediaStart("vr3ai", "WebSocket/vr3ai/0x7fbb90012170", CID, "ulaw", 160, 20)
    st = parse_event(
        "STATUS channel_id:inbound-media-763df425 queue_length:100 xon_level:800 xoff_level:900 "
        "queue_full:false bulk_media:false media_paused:false"
    )
    assert st == Status(CID, 100, 800, 900, False, False, False)
    assert parse_event("MEDIA_MARK_PROCESSED bulk2s-end") == MediaMarkProcessed("bulk2s-end")
    assert parse_event("MEDIA_MARK_PROCESSED") == MediaMarkProcessed(None)
    assert parse_event("QUEUE_DRAINED") == QueueDrained()
    assert parse_event("MEDIA_XOFF") == MediaXoff()
    assert parse_event("MEDIA_XON") == MediaXon()
    assert parse_event("MEDIA_BUFFERING_COMPLETED buf-1") == MediaBufferingCompleted("buf-1")
    assert parse_event("DTMF_END digit:# channel_id:inbound-media-763df425") == DtmfEnd("#", CID)
    assert parse_event("DTMF_END digit:1") == DtmfEnd("1")  # 22.6 spelling
    err = parse_event("ERROR channel_id:c1 error_text:MARK_MEDIA not supported in passthrough mode\n")
    assert err == ErrorEvent("MARK_MEDIA not supported in passthrough mode", "c1")


def test_ground_truth_json_messages() -> None:
    cid = "inbound_json-media-0cb38b32"
    ms = parse_event(
        '{"event":"MEDIA_START","connection_id":"vr3ai","channel":"WebSocket/vr3ai/0x7fbb88018490",'
        '"channel_id":"edges-vars_json-3e0ef824","format":"ulaw","optimal_frame_size":160,"ptime":20,'
        '"channel_variables":{"VR3AI_TENANT":"t1","VR3AI_CALL_ID":"call-123",'
        '"MEDIA_WEBSOCKET_CONNECTION_ID":"vr3ai","MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE":"160"}}'
    )
    assert isinstance(ms, MediaStart)
    assert ms.channel_id == "edges-vars_json-3e0ef824"
    assert ms.channel_variables["VR3AI_CALL_ID"] == "call-123"
    assert parse_event(
        '{"event":"MEDIA_MARK_PROCESSED","channel_id":"inbound_json-media-0cb38b32","correlation_id":"m-json-1"}'
    ) == MediaMarkProcessed("m-json-1", cid)
    assert parse_event('{"event":"QUEUE_DRAINED","channel_id":"inbound_json-media-0cb38b32"}') == QueueDrained(cid)
    assert parse_event('{"event":"DTMF_END","channel_id":"inbound_json-media-0cb38b32","digit":"1"}') == DtmfEnd(
        "1", cid
    )
    assert parse_event(
        '{"event":"ERROR","channel_id":"inbound_json-media-0cb38b32","error_text":"Unable to parse JSON command"}'
    ) == ErrorEvent("Unable to parse JSON command", cid)
    assert parse_event(
        '{"event":"MEDIA_BUFFERING_COMPLETED","channel_id":"inbound_json-media-0cb38b32","correlation_id":""}'
    ) == MediaBufferingCompleted(None, cid)
    assert parse_event(
        '{"event":"STATUS","channel_id":"inbound_json-media-0cb38b32","queue_length":0,"xon_level":800,'
        '"xoff_level":900,"queue_full":false,"bulk_media":false,"media_paused":false}'
    ) == Status(cid, 0, 800, 900, False, False, False)


def test_opus_passthrough_media_start_parses() -> None:
    ev = parse_event("MEDIA_START connection_id:x channel:c channel_id:id format:opus optimal_frame_size:0 ptime:20")
    assert isinstance(ev, MediaStart) and ev.optimal_frame_size == 0


def test_unknown_and_malformed() -> None:
    assert parse_event("FUTURE_EVENT a:b") == UnknownEvent("FUTURE_EVENT", "FUTURE_EVENT a:b")
    assert isinstance(parse_event('{"event":"FUTURE_EVENT"}'), UnknownEvent)
    for bad in [
        "",
        "   ",
        "{",
        "{}",
        "[]",
        '{"event":5}',
        "lowercase",
        "MEDIA_START",
        "STATUS queue_length:x",
        "MEDIA_START channel_id:a format:ulaw optimal_frame_size:abc ptime:20",
        "DTMF_END digit:12",
        '{"event":"STATUS","queue_length":"many"}',
        "null",
        '"str"',
        "{" * 5000 + "}" * 5000,
    ]:
        assert isinstance(parse_event(bad), Malformed), bad
    assert parse_command("BOGUS_COMMAND with args") == UnknownCommand("BOGUS_COMMAND", "BOGUS_COMMAND with args")
    assert isinstance(parse_command("x" * 200), Malformed)
    assert isinstance(parse_command('{"command":"SET_MEDIA_DIRECTION","direction":"up"}'), Malformed)
    assert isinstance(parse_command("{bad json"), Malformed)


def test_parse_event_accepts_bytes() -> None:
    assert parse_event(b"MEDIA_XON") == MediaXon()
    assert isinstance(parse_event(b"\xff\xfe\x00"), Malformed)


# ------------------------------------------------------------------------------------------------ fuzz

_ALPHABET = string.printable + "é中\x00\u2028{}[]:\"'\\ "
_KEYS = [
    "event",
    "command",
    "channel_id",
    "correlation_id",
    "digit",
    "format",
    "optimal_frame_size",
    "ptime",
    "queue_length",
    "xon_level",
    "xoff_level",
    "queue_full",
    "bulk_media",
    "media_paused",
    "error_text",
    "direction",
    "channel_variables",
    "connection_id",
    "channel",
]
_NAMES = [
    "MEDIA_START",
    "MEDIA_XOFF",
    "MEDIA_XON",
    "QUEUE_DRAINED",
    "MEDIA_BUFFERING_COMPLETED",
    "MEDIA_MARK_PROCESSED",
    "DTMF_END",
    "STATUS",
    "ERROR",
    "ANSWER",
    "HANGUP",
    "MARK_MEDIA",
    "STOP_MEDIA_BUFFERING",
    "SET_MEDIA_DIRECTION",
    "FLUSH_MEDIA",
    "GET_STATUS",
]


def _random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.randint(-(2**63), 2**63)
    if kind == 1:
        return rng.random() * 1e300
    if kind == 2:
        return rng.choice([True, False, None])
    if kind in (3, 4, 5):
        return "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(12)))
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(_KEYS): _random_value(rng, depth + 1) for _ in range(rng.randrange(6))}


def _fuzz_inputs(rng: random.Random, n: int) -> list[str]:
    valid = [format_event(e, f) for e in EVENTS for f in ControlFormat]
    valid += [format_command(c, f) for c in COMMANDS for f in ControlFormat]
    out: list[str] = []
    for i in range(n):
        mode = i % 5
        if mode == 0:
            out.append("".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(200))))
        elif mode == 1:  # mutate a valid message
            s = list(rng.choice(valid))
            for _ in range(rng.randrange(1, 6)):
                op = rng.randrange(3)
                pos = rng.randrange(len(s) + 1)
                if op == 0 and s:
                    del s[min(pos, len(s) - 1)]
                elif op == 1:
                    s.insert(pos, rng.choice(_ALPHABET))
                elif s:
                    s[min(pos, len(s) - 1)] = rng.choice(_ALPHABET)
            out.append("".join(s))
        elif mode == 2:  # random JSON with the right keys
            obj = {rng.choice(_KEYS): _random_value(rng) for _ in range(rng.randrange(8))}
            if rng.random() < 0.7:
                obj[rng.choice(["event", "command"])] = rng.choice(_NAMES)
            out.append(json.dumps(obj))
        elif mode == 3:  # plain text with known names and random key:value tokens
            toks = [rng.choice(_NAMES)]
            for _ in range(rng.randrange(8)):
                k = rng.choice([*_KEYS, "", ":"])
                v = str(_random_value(rng))
                toks.append(f"{k}:{v}" if rng.random() < 0.8 else v)
            out.append(" ".join(toks))
        else:  # truncations and structural junk
            msg = rng.choice(valid)
            out.append(msg[: rng.randrange(len(msg) + 1)] + rng.choice(["", "{", "}", "\n", "\x00", '"', "[" * 50]))
    return out


def test_fuzz_never_raises() -> None:
    rng = random.Random(20251126)
    inputs = _fuzz_inputs(rng, 12_000)
    assert len(inputs) >= 10_000
    kinds: dict[str, int] = {}
    for text in inputs:
        ev = parse_event(text)
        cmd = parse_command(text)
        kinds[type(ev).__name__] = kinds.get(type(ev).__name__, 0) + 1
        assert isinstance(ev, (*EVENT_TYPES, UnknownEvent, Malformed))
        assert isinstance(cmd, (*COMMAND_TYPES, UnknownCommand, Malformed))
        if isinstance(ev, MediaStart):
            assert isinstance(ev.optimal_frame_size, int) and isinstance(ev.channel_id, str)
        if isinstance(ev, Status):
            assert isinstance(ev.queue_length, int) and isinstance(ev.queue_full, bool)
        ev_bytes = parse_event(text.encode("utf-8", "surrogatepass"))
        assert ev_bytes is not None
    # The fuzz must reach the typed parsers, not only the Malformed fallback.
    assert kinds.get("Malformed", 0) < len(inputs)
    assert sum(v for k, v in kinds.items() if k not in ("Malformed", "UnknownEvent")) > 500


def test_fuzz_random_bytes_never_raise() -> None:
    rng = random.Random(7)
    for _ in range(2_000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        assert parse_event(data) is not None


EVENT_TYPES = (
    MediaStart,
    MediaXoff,
    MediaXon,
    QueueDrained,
    MediaBufferingCompleted,
    MediaMarkProcessed,
    DtmfEnd,
    Status,
    ErrorEvent,
)
COMMAND_TYPES = (
    Answer,
    Hangup,
    StartMediaBuffering,
    StopMediaBuffering,
    MarkMedia,
    FlushMedia,
    PauseMedia,
    ContinueMedia,
    GetStatus,
    ReportQueueDrained,
    SetMediaDirection,
)
