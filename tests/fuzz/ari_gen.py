"""Seeded generators of ARI events: realistic (shaped like the captures in asterisk-groundtruth.md §4),
mutated (fields dropped, retyped, truncated, inflated) and pure junk."""

from __future__ import annotations

import copy
import math
import random
import string
from typing import Any

EVENT_TYPES = [
    "StasisStart",
    "StasisEnd",
    "ChannelDestroyed",
    "ChannelHangupRequest",
    "ChannelStateChange",
    "ChannelDtmfReceived",
    "ChannelEnteredBridge",
    "ChannelLeftBridge",
    "Dial",
    "ChannelCreated",
    "ChannelDialplan",
    "ChannelVarset",
    "ChannelUserevent",
    "ChannelConnectedLine",
    "ChannelCallerId",
    "BridgeCreated",
    "BridgeDestroyed",
    "PlaybackStarted",
    "PlaybackFinished",
    "RecordingFailed",
    "DeviceStateChanged",
    "EndpointStateChange",
]
KEYS = [
    "type",
    "channel",
    "peer",
    "caller",
    "args",
    "cause",
    "cause_txt",
    "tech_cause",
    "soft",
    "dialstatus",
    "dialstring",
    "digit",
    "duration_ms",
    "bridge",
    "replace_channel",
    "timestamp",
    "application",
    "id",
    "dialplan",
    "exten",
    "state",
    "name",
    "number",
]
STATES = [
    "Down",
    "Rsrvd",
    "OffHook",
    "Dialing",
    "Ring",
    "Ringing",
    "Up",
    "Busy",
    "Dialing Offhook",
    "Pre-ring",
    "Mute",
    "Unknown (11)",
]
DIALSTATUS = [
    "",
    "RINGING",
    "PROGRESS",
    "PROCEEDING",
    "ANSWER",
    "BUSY",
    "CONGESTION",
    "CHANUNAVAIL",
    "NOANSWER",
    "CANCEL",
]
ODD_TEXT = [
    "",
    " ",
    "\x00",
    "\u202e\u0644\u0627",
    "😀" * 10,
    "vr3m-",
    "vr3o-",
    "vr3ai-outbound",
    "Stasis",
    "\ud7ff",
    "a:b c",
    "\n\r\t",
    "null",
    "NaN",
    "-1",
    "8000 ",
    " 8000",
    "8000\x00",
]


class Gen:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.seq = 0

    # --- ids ------------------------------------------------------------------------------------------
    def new_caller_id(self) -> str:
        self.seq += 1
        kind = self.rng.randrange(3)
        if kind == 0:
            return f"1795663575.{self.seq}"
        if kind == 1:
            return f"inbound-in-{self.seq:08x}"
        return f"Local-{self.seq};2"

    # --- realistic events -----------------------------------------------------------------------------
    def channel(
        self, cid: Any, *, exten: Any = "8000", state: str | None = None, media: bool = False
    ) -> dict[str, Any]:
        if media:
            return {
                "id": cid,
                "name": "WebSocket/vr3ai/0x7fbb90012170",
                "state": "Up",
                "protocol_id": "",
                "caller": {"name": "", "number": ""},
                "connected": {"name": "", "number": ""},
                "accountcode": "",
                "dialplan": {
                    "context": "default",
                    "exten": "s",
                    "priority": 1,
                    "app_name": "Stasis",
                    "app_data": "vr3ai",
                },
                "creationtime": "2026-11-26T03:25:14.131+0000",
                "language": "en",
            }
        return {
            "id": cid,
            "name": f"PJSIP/6001-{self.seq:08x}",
            "state": state or self.rng.choice(["Ring", "Ring", "Up"]),
            "protocol_id": "5a7c0245-b8d7-4684-ade7-3d19c11ed686",
            "caller": {"name": "Alice Caller", "number": "15551230001"},
            "connected": {"name": "", "number": ""},
            "accountcode": "",
            "dialplan": {
                "context": "from-external",
                "exten": exten,
                "priority": 2,
                "app_name": "Stasis",
                "app_data": "vr3ai",
            },
            "creationtime": "2026-11-26T03:26:15.279+0000",
            "language": "en",
        }

    def envelope(self, etype: str, **payload: Any) -> dict[str, Any]:
        return {
            "type": etype,
            "timestamp": "2026-11-26T03:25:14.121+0000",
            **payload,
            "asterisk_id": "02:fc:00:00:00:01",
            "application": "vr3ai",
        }

    def stasis_start(
        self, cid: Any, *, exten: Any = "8000", args: Any = None, media: bool = False, state: str | None = None
    ) -> dict[str, Any]:
        return self.envelope(
            "StasisStart",
            args=[] if args is None else args,
            channel=self.channel(cid, exten=exten, media=media, state=state),
        )

    def stasis_end(self, cid: Any, media: bool = False) -> dict[str, Any]:
        return self.envelope("StasisEnd", channel=self.channel(cid, state="Up", media=media))

    def destroyed(
        self, cid: Any, cause: Any = 16, cause_txt: Any = "Normal Clearing", media: bool = False
    ) -> dict[str, Any]:
        return self.envelope(
            "ChannelDestroyed",
            cause=cause,
            cause_txt=cause_txt,
            tech_cause=1000,
            channel=self.channel(cid, state="Up", media=media),
        )

    def hangup_request(self, cid: Any, *, soft: bool | None = None, cause: Any = 16) -> dict[str, Any]:
        ev = self.envelope("ChannelHangupRequest", cause=cause, channel=self.channel(cid, state="Up"))
        if soft is not None:
            ev["soft"] = soft
        return ev

    def dial(self, peer_id: Any, dialstatus: Any = "", with_peer: bool = True) -> dict[str, Any]:
        ev = self.envelope("Dial", dialstring="6001", dialstatus=dialstatus)
        if with_peer:
            ev["peer"] = self.channel(peer_id, state="Ringing")
        if self.rng.random() < 0.5:
            ev["caller"] = self.channel(f"caller-of-{peer_id}", state="Up")
        return ev

    def any_realistic(self, cid: str, *, media: bool = False) -> dict[str, Any]:
        """One plausible event about ``cid`` (any type a live channel can produce)."""
        r = self.rng
        kind = r.choice(
            [
                "StasisStart",
                "StasisEnd",
                "ChannelDestroyed",
                "ChannelHangupRequest",
                "ChannelStateChange",
                "ChannelDtmfReceived",
                "ChannelEnteredBridge",
                "ChannelLeftBridge",
                "Dial",
                "ChannelVarset",
                "ChannelUserevent",
                "unknown",
            ]
        )
        if kind == "StasisStart":
            return self.stasis_start(cid, media=media)
        if kind == "StasisEnd":
            return self.stasis_end(cid, media=media)
        if kind == "ChannelDestroyed":
            return self.destroyed(cid, cause=r.choice([16, 16, 3, 17, 19, 21, 34, 0, 127]), media=media)
        if kind == "ChannelHangupRequest":
            return self.hangup_request(cid, soft=r.choice([None, True, False]), cause=r.choice([16, 32, 17]))
        if kind == "ChannelStateChange":
            return self.envelope("ChannelStateChange", channel=self.channel(cid, state=r.choice(STATES)))
        if kind == "ChannelDtmfReceived":
            return self.envelope(
                "ChannelDtmfReceived",
                digit=r.choice("0123456789ABCD*#"),
                duration_ms=r.randint(40, 300),
                channel=self.channel(cid, state="Up"),
            )
        if kind in ("ChannelEnteredBridge", "ChannelLeftBridge"):
            return self.envelope(
                kind,
                bridge={"id": f"vr3b-x-{r.randrange(99)}", "technology": "simple_bridge"},
                channel=self.channel(cid, state="Up", media=media),
            )
        if kind == "Dial":
            return self.dial(cid, r.choice(DIALSTATUS))
        if kind == "ChannelVarset":
            return self.envelope("ChannelVarset", variable="X", value="1", channel=self.channel(cid))
        if kind == "ChannelUserevent":
            return self.envelope("ChannelUserevent", eventname="CallerBurst", userevent={}, channel=self.channel(cid))
        return self.envelope(self.word(), channel=self.channel(cid, media=media))

    # --- junk -----------------------------------------------------------------------------------------
    def word(self) -> str:
        r = self.rng
        pick = r.randrange(6)
        if pick == 0:
            return r.choice(EVENT_TYPES)
        if pick == 1:
            return r.choice(ODD_TEXT)
        if pick == 2:
            return r.choice(EVENT_TYPES).lower()
        return "".join(r.choice(string.ascii_letters + string.digits + "_-.:;") for _ in range(r.randint(0, 12)))

    def junk(self, depth: int = 0, ids: list[str] | None = None) -> Any:
        r = self.rng
        roll = r.randrange(14 if depth < 3 else 10)
        if roll == 0:
            return None
        if roll == 1:
            return r.choice([True, False])
        if roll == 2:
            return r.choice([0, 1, -1, 16, 3, 2**31, -(2**63), 2**70, r.randint(-1000, 1000)])
        if roll == 3:
            return r.choice([0.0, -0.0, 1.5, 1e308, math.inf, -math.inf, math.nan])
        if roll in (4, 5, 6):
            return self.word()
        if roll == 7:
            return r.choice(ids) if ids else self.word()
        if roll == 8:
            return r.choice(["x" * 100_000, "\u00e9" * 20_000, "8000" * 5000])
        if roll == 9:
            return r.choice([[], {}, "", [""], {"id": None}])
        if roll in (10, 11):
            return [self.junk(depth + 1, ids) for _ in range(r.randint(0, 4))]
        return {
            r.choice(KEYS) if r.random() < 0.7 else self.word(): self.junk(depth + 1, ids)
            for _ in range(r.randint(0, 5))
        }

    def junk_event(self, ids: list[str]) -> dict[str, Any]:
        """A dict shaped roughly like an event, with any field of any type."""
        r = self.rng
        ev: dict[str, Any] = {}
        if r.random() < 0.9:
            ev["type"] = self.word() if r.random() < 0.3 else r.choice(EVENT_TYPES)
        if r.random() < 0.8:
            chan: Any = {"id": r.choice(ids) if ids and r.random() < 0.6 else self.junk(1, ids)}
            for key in r.sample(["name", "state", "dialplan", "caller", "connected", "protocol_id"], r.randint(0, 4)):
                chan[key] = self.junk(1, ids)
            ev["channel"] = chan if r.random() < 0.85 else self.junk(1, ids)
        if r.random() < 0.3:
            ev["peer"] = {"id": r.choice(ids)} if ids and r.random() < 0.5 else self.junk(1, ids)
        for key in r.sample(KEYS, r.randint(0, 4)):
            ev[key] = self.junk(1, ids)
        return ev

    # --- mutation -------------------------------------------------------------------------------------
    def mutate(self, event: dict[str, Any], ids: list[str]) -> dict[str, Any]:
        ev = copy.deepcopy(event)
        r = self.rng
        for _ in range(r.randint(1, 3)):
            slots = list(_slots(ev))
            if not slots:
                break
            container, key = r.choice(slots)
            op = r.randrange(6)
            if op == 0:
                del container[key]
            elif op == 1:
                container[key] = self.junk(1, ids)
            elif op == 2 and isinstance(container[key], dict):
                keep = r.sample(sorted(container[key]), r.randint(0, len(container[key])))
                container[key] = {k: container[key][k] for k in keep}
            elif op == 3:
                container[key] = r.choice(["x" * 100_000, str(container[key]) * 3, ""])
            elif op == 4:
                ev["type"] = r.choice(EVENT_TYPES)
            elif isinstance(container, dict):
                container[self.word()] = self.junk(1, ids)
            else:
                container.append(self.junk(1, ids))
        return ev


def _slots(node: Any) -> list[tuple[Any, Any]]:
    out: list[tuple[Any, Any]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((node, k))
            out += _slots(v)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((node, i))
            out += _slots(v)
    return out


def truncated_json(text: str, rng: random.Random) -> str:
    """A JSON document cut anywhere (a half-read frame)."""
    return text[: rng.randrange(len(text))] if text else text
