"""Shared parts of the real-Asterisk load benchmarks (capacity.py, setup_burst.py).

* :class:`CallerFleet`: many real-time callers over chan_websocket (``WebSocket/caller_ws``), lean
  enough to drive 100+ calls from one asyncio loop on a 2-core box. It replaces the harness'
  ``WebSocketCaller`` for load (that one runs a sender task and a websockets connection per call and
  notifies a Condition per received frame; here one tick serves every caller and a bare
  ``asyncio.Protocol`` parses the frames). Same wire behaviour: one 160-byte u-law frame per
  20 ms, silence when not speaking, every received frame timestamped with ``time.monotonic()``.
* :class:`PlatformProcess`: the platform under test in its own process (``platform_proc.py``), so its
  CPU and RSS are measured apart from the load generator's.
* /proc readers (CPU ticks, RSS), percentiles and the underrun/hole analysis.
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import sys
import time
import uuid
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

with warnings.catch_warnings():
    # audioop leaves the stdlib in 3.13; on 3.11 it is the cheapest C path for u-law + RMS per frame.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

from tests.harness import AsteriskLab, audio

REPO = Path(__file__).resolve().parents[1]

FRAME_S = 0.020
FRAME_BYTES = 160
CLK_TCK = os.sysconf("SC_CLK_TCK")
# -45 dBFS, the harness' activity threshold, as a linear RMS of int16 samples.
LOUD_RMS = int(32768 * 10 ** (-45 / 20))
CALLER_WS_PATH = "/harness/caller"
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_SILENCE = bytes([audio.ULAW_SILENCE]) * FRAME_BYTES
# Server -> client frames are unmasked: FIN+binary, 126 = 16-bit length follows.
_BIN_HDR = b"\x82\x7e" + FRAME_BYTES.to_bytes(2, "big")
_SILENCE_MSG = _BIN_HDR + _SILENCE
# A caller whose loop stalls longer than this restarts its clock instead of bursting (a burst
# would sit in the caller leg's chan_websocket queue as permanent latency).
_MAX_CATCHUP_FRAMES = 5


# ---------------------------------------------------------------------------- /proc readers


def cpu_split_ms(pid: int | str = "self") -> tuple[float, float]:
    """(user, system) CPU ms of a whole process (all threads, also exited ones)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[11]) * 1000.0 / CLK_TCK, int(fields[12]) * 1000.0 / CLK_TCK


def cpu_ms(pid: int | str = "self") -> float:
    return sum(cpu_split_ms(pid))


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child_pids(pid: int) -> list[int]:
    """Direct children (e.g. TTS worker processes): their CPU is not in the parent's stat."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(x) for x in (task / "children").read_text().split()]
    return out


def tcp_conns_to(pid: int, port: int) -> int:
    """Established TCP connections of process ``pid`` to 127.0.0.1:``port`` (e.g. ARI's HTTP)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    n = 0
    want = f"0100007F:{port:04X}"
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[2] == want and f[3] == "01" and f[9] in inodes:  # 01: ESTABLISHED
            n += 1
    return n


class ConnSampler:
    """Peak number of the platform's HTTP connections to ARI: the pool must stay well under
    Asterisk's session limit (http.conf sessionlimit, 100 by default). Once a second is enough:
    httpx keeps idle connections for 5 s, so a peak outlives the burst that opened it, and reading
    /proc/<pid>/net/tcp with a few hundred sockets costs the load generator ~2 ms."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid, self.port = pid, port
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.peak = 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, tcp_conns_to(self.pid, self.port))
            await asyncio.sleep(1.0)

    async def stop(self) -> int:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.peak


def loadavg() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f} {b:.2f} {c:.2f}"


@dataclass
class CpuProbe:
    """CPU milliseconds a set of processes used between :meth:`start` and :meth:`stop`."""

    pids: dict[str, int | str]
    _t0: dict[str, tuple[float, float]] = field(default_factory=dict)
    sys_ms: dict[str, float] = field(default_factory=dict)
    """Kernel share of each figure :meth:`stop` returned (syscalls, wake-ups)."""

    def start(self) -> None:
        self._t0 = {k: _safe_cpu(p) for k, p in self.pids.items()}

    def stop(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, p in self.pids.items():
            u, s = _safe_cpu(p)
            u0, s0 = self._t0.get(k, (0.0, 0.0))
            out[k] = (u - u0) + (s - s0)
            self.sys_ms[k] = s - s0
        return out


def _safe_cpu(pid: int | str) -> tuple[float, float]:
    try:
        return cpu_split_ms(pid)
    except OSError:
        return 0.0, 0.0


# ---------------------------------------------------------------------------- statistics


def pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else float("nan")


def fmt(v: float | None, nd: int = 1) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.{nd}f}"


@dataclass
class Holes:
    """Missing-frame holes in what one caller heard, over a time window."""

    frames: int = 0
    holes_any_ms: list[float] = field(default_factory=list)
    """Permanent delay steps of the frame stream (Asterisk's queue for our media channel ran dry)."""
    holes_in_speech_ms: list[float] = field(default_factory=list)
    """The subset inside agent audio (a loud frame on both sides): the caller heard a hole."""
    quiet_runs_in_speech_ms: list[float] = field(default_factory=list)
    """Runs of silent frames (40-280 ms) between loud frames: padding inside an utterance."""
    gaps_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))


def analyse_stream(times: np.ndarray, loud: np.ndarray, t0: float, t1: float, *, tail_s: float = 0.5) -> Holes:
    """Find holes in a stream of frames that should arrive one per 20 ms.

    chan_websocket plays our queue from a 20 ms timer and *catches up* on late wake-ups (the timer
    fd counts expirations), so a frame that is merely late (jitter, a slow reader) is followed by an
    early one, while a frame Asterisk could not play (our queue was empty on that tick) is gone for
    good: every later frame arrives 20 ms later than the schedule. With d_i = t_i - 20 ms * i, the
    lower envelope min(d_i..d_end) rises exactly by the missing time and ignores jitter.
    The last ``tail_s`` of the stream is skipped: a short suffix has no envelope to speak of.
    """
    out = Holes()
    n = len(times)
    if n < 3:
        return out
    idx = np.arange(n, dtype=np.float64)
    d = times - idx * FRAME_S
    env = np.minimum.accumulate(d[::-1])[::-1]
    steps = np.diff(env)  # steps[k] is between frame k and k+1
    end_t = times[-1] - tail_s
    sel = (times[1:] >= t0) & (times[1:] <= min(t1, end_t))
    # 12 ms: a whole 20 ms frame less the envelope's own slack (min delay varies by a few ms).
    for k in np.nonzero(sel & (steps > 0.012))[0]:
        ms = float(steps[k]) * 1000
        out.holes_any_ms.append(ms)
        if loud[k] and loud[k + 1]:
            out.holes_in_speech_ms.append(ms)
    win = (times >= t0) & (times <= t1)
    out.frames = int(win.sum())
    wt = times[win]
    out.gaps_ms = np.diff(wt) * 1000 if wt.size > 1 else np.zeros(0)
    # Quiet runs strictly inside speech: loud, 2..14 quiet frames, loud.
    wl = loud[win].astype(bool)
    run = 0
    seen_loud = False
    for v in wl:
        if v:
            if seen_loud and 2 <= run <= 14:
                out.quiet_runs_in_speech_ms.append(run * 20.0)
            seen_loud = True
            run = 0
        else:
            run += 1
    return out


# ---------------------------------------------------------------------------- callers


GREETING = 0
SPEAKING = 1
WAIT_REPLY = 2
LISTEN_REPLY = 3
PAUSE = 4
DONE = 5


@dataclass
class Clip:
    """A caller sentence as ready-to-write WebSocket messages (one per 20 ms frame)."""

    msgs: list[bytes]
    last_active: int  # index of the frame holding the end of speech

    @classmethod
    def from_pcm(cls, pcm: np.ndarray) -> Clip:
        pcm = np.asarray(pcm, dtype=np.int16)
        pad = (-len(pcm)) % FRAME_BYTES
        if pad:
            pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)])
        ulaw = audio.lin2ulaw(pcm)
        n = len(ulaw) // FRAME_BYTES
        active = np.nonzero(audio.frame_dbfs(pcm) > -45.0)[0]
        msgs = [_BIN_HDR + ulaw[i * FRAME_BYTES : (i + 1) * FRAME_BYTES] for i in range(n)]
        return cls(msgs, int(active[-1]) if active.size else n - 1)


def caller_sentences(texts: Iterable[str]) -> list[Clip]:
    """flite sentences (cached on disk by the harness), leading/trailing silence trimmed so the
    caller's speech starts on its first frame."""
    clips = []
    for text in texts:
        pcm = audio.speech_pcm(text)
        lv = audio.frame_dbfs(pcm)
        act = np.nonzero(lv > -45.0)[0]
        if act.size:
            pcm = pcm[act[0] * FRAME_BYTES : (act[-1] + 1) * FRAME_BYTES]
        clips.append(Clip.from_pcm(pcm))
    return clips


class Caller:
    """One call's state. Everything runs from the fleet's 20 ms tick and the socket's data_received;
    no task per call."""

    __slots__ = (
        "answered_at",
        "barge_at",
        "channel_id",
        "closed_at",
        "connected_at",
        "fleet",
        "greeting_at",
        "last_loud",
        "missed_replies",
        "next_at",
        "origin_error",
        "originated_at",
        "pos",
        "rx_loud",
        "rx_t",
        "sent_frames",
        "speech_end",
        "stalls",
        "state",
        "transport",
        "turn_clip",
        "turns",
    )

    def __init__(self, fleet: CallerFleet) -> None:
        self.fleet = fleet
        self.channel_id = f"bws-{uuid.uuid4().hex[:10]}"
        self.transport: asyncio.Transport | None = None
        self.originated_at = 0.0
        self.origin_error: str | None = None
        self.connected_at: float | None = None  # MEDIA_START received
        self.answered_at: float | None = None  # first frame from the agent side
        self.greeting_at: float | None = None  # first loud frame
        self.barge_at: float | None = None  # first speech frame sent over the greeting (barge-in runs)
        self.closed_at: float | None = None
        self.rx_t = array.array("d")
        self.rx_loud = bytearray()
        self.state = GREETING
        self.turn_clip: Clip | None = None
        self.pos = 0
        self.speech_end = 0.0
        self.last_loud = 0.0
        self.next_at = 0.0
        self.turns: list[tuple[float, float]] = []  # (speech end sent, first agent audio received)
        self.missed_replies = 0
        self.sent_frames = 0
        self.stalls = 0

    # -- receive path (data_received -> here, once per frame)
    def on_frame(self, t: float, payload: bytes) -> None:
        loud = audioop.rms(audioop.ulaw2lin(payload, 2), 2) > LOUD_RMS
        self.rx_t.append(t)
        self.rx_loud.append(loud)
        if self.answered_at is None:
            self.answered_at = t
        if loud:
            self.last_loud = t
            if self.greeting_at is None:
                self.greeting_at = t
            if self.state == WAIT_REPLY and t > self.speech_end:
                self.turns.append((self.speech_end, t))
                self.state = LISTEN_REPLY

    # -- send path (fleet tick)
    def tick(self, now: float, n: int) -> None:
        tr = self.transport
        if tr is None or self.closed_at is not None:
            return
        fleet = self.fleet
        st = self.state
        if st == GREETING:
            if fleet.barge_after_s is not None:
                # Barge-in runs: speak over the greeting once it has played this long.
                if self.greeting_at is not None and now - self.greeting_at >= fleet.barge_after_s:
                    self.barge_at = now
                    self._start_turn(now)
            elif (self.greeting_at is not None and now - self.last_loud > fleet.quiet_s) or (
                now - (self.connected_at or now) > fleet.greeting_timeout_s
            ):
                self._start_turn(now)
        elif st == WAIT_REPLY:
            if now - self.speech_end > fleet.reply_timeout_s:
                self.missed_replies += 1
                self._pause(now)
        elif st == LISTEN_REPLY:
            if now - self.last_loud > fleet.quiet_s:
                self._pause(now)
        elif st == PAUSE and now >= self.next_at:
            self._start_turn(now)
        if self.state != SPEAKING:
            tr.write(_SILENCE_MSG * n if n > 1 else _SILENCE_MSG)
            self.sent_frames += n
            return
        clip = self.turn_clip
        assert clip is not None
        parts = []
        for _ in range(n):
            if self.state == SPEAKING:
                parts.append(clip.msgs[self.pos])
                if self.pos == clip.last_active:
                    self.speech_end = now
                self.pos += 1
                if self.pos >= len(clip.msgs):
                    self.state = WAIT_REPLY
            else:
                parts.append(_SILENCE_MSG)
        tr.write(b"".join(parts))
        self.sent_frames += n

    def _start_turn(self, now: float) -> None:
        fleet = self.fleet
        if not fleet.talk:
            self.state = DONE
            return
        self.turn_clip = fleet.clips[len(self.turns) % len(fleet.clips)]
        self.pos = 0
        self.state = SPEAKING

    def _pause(self, now: float) -> None:
        lo, hi = self.fleet.pause_s
        self.next_at = now + random.uniform(lo, hi)
        self.state = PAUSE

    def on_closed(self) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()


class _WsServerProtocol(asyncio.Protocol):
    """Just enough RFC 6455 server for chan_websocket: upgrade, masked client frames, close, ping."""

    def __init__(self, fleet: CallerFleet) -> None:
        self.fleet = fleet
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.open = False
        self.caller: Caller | None = None
        self.frag: bytearray | None = None
        self.frag_op = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.caller is not None:
            self.caller.on_closed()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 16384:
                    self._abort()
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            if not self._handshake(head):
                return
        now = time.monotonic()
        while True:
            n = len(buf)
            if n < 2:
                return
            b0, b1 = buf[0], buf[1]
            ln = b1 & 0x7F
            pos = 2
            if ln == 126:
                if n < 4:
                    return
                ln = (buf[2] << 8) | buf[3]
                pos = 4
            elif ln == 127:
                if n < 10:
                    return
                ln = int.from_bytes(buf[2:10], "big")
                pos = 10
            mask = None
            if b1 & 0x80:
                if n < pos + 4:
                    return
                mask = bytes(buf[pos : pos + 4])
                pos += 4
            if n < pos + ln:
                return
            payload = bytes(buf[pos : pos + ln])
            del buf[: pos + ln]
            if mask is not None and ln:
                k = int.from_bytes((mask * (ln // 4 + 1))[:ln], "little")
                payload = (int.from_bytes(payload, "little") ^ k).to_bytes(ln, "little")
            op = b0 & 0x0F
            if op == 0:  # continuation
                if self.frag is None:
                    continue
                self.frag += payload
                if not b0 & 0x80:
                    continue
                op, payload, self.frag = self.frag_op, bytes(self.frag), None
            elif not b0 & 0x80 and op in (1, 2):
                self.frag, self.frag_op = bytearray(payload), op
                continue
            self._message(op, payload, now)

    def _handshake(self, head: str) -> bool:
        lines = head.split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        path = lines[0].split(" ")[1] if " " in lines[0] else ""
        key = headers.get("sec-websocket-key")
        if not key or path.split("?", 1)[0] != CALLER_WS_PATH:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()
            return False
        accept = base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()
        # Asterisk checks the 101 by hand: "Connection: Upgrade" exactly, subprotocol only if offered.
        resp = (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n"
        )
        if "media" in [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]:
            resp += "Sec-WebSocket-Protocol: media\r\n"
        assert self.transport is not None
        self.transport.write((resp + "\r\n").encode())
        self.open = True
        return True

    def _message(self, op: int, payload: bytes, now: float) -> None:
        caller = self.caller
        if op == 2:
            if caller is not None:
                caller.on_frame(now, payload)
        elif op == 1:
            if caller is None:
                text = payload.decode(errors="replace")
                fields = dict(p.partition(":")[::2] for p in text.split()[1:])
                c = self.fleet.expected.pop(fields.get("channel_id", ""), None)
                if c is None or not text.startswith("MEDIA_START"):
                    self.fleet.unexpected += 1
                    self._close(1008)
                    return
                self.caller = c
                c.transport = self.transport
                c.connected_at = now
                self.fleet.live.append(c)
        elif op == 8:
            self._close(1000)
        elif op == 9 and self.transport is not None:
            self.transport.write(bytes([0x8A, len(payload)]) + payload if len(payload) < 126 else b"")

    def _close(self, code: int) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"\x88\x02" + code.to_bytes(2, "big"))
            self.transport.close()
        if self.caller is not None:
            self.caller.on_closed()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class CallerFleet:
    """Originates callers into ``from-external/<exten>`` and runs all of them from one 20 ms tick."""

    def __init__(
        self,
        lab: AsteriskLab,
        *,
        exten: str = "8000",
        clips: list[Clip] | None = None,
        talk: bool = True,
        quiet_s: float = 0.5,
        pause_s: tuple[float, float] = (0.5, 1.5),
        greeting_timeout_s: float = 5.0,
        reply_timeout_s: float = 5.0,
        ari_connections: int = 8,
        barge_after_s: float | None = None,
    ) -> None:
        self.lab = lab
        self.exten = exten
        self.clips = clips or []
        self.talk = talk and bool(self.clips)
        self.quiet_s = quiet_s
        self.pause_s = pause_s
        self.greeting_timeout_s = greeting_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self.barge_after_s = barge_after_s
        self.expected: dict[str, Caller] = {}
        self.live: list[Caller] = []
        self.unexpected = 0
        self.tick_lateness_ms: list[float] = []
        self.stalls = 0
        self._server: asyncio.AbstractServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        # Bounded: the load generator must not eat into Asterisk's HTTP session limit (100) itself.
        self.ari = httpx.AsyncClient(
            base_url=lab.ari_url,
            auth=lab.ari_auth,
            timeout=10.0,
            limits=httpx.Limits(max_connections=ari_connections, max_keepalive_connections=ari_connections),
        )

    async def __aenter__(self) -> CallerFleet:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _WsServerProtocol(self), "127.0.0.1", self.lab.caller_ws_port, reuse_address=True
        )
        self._ticker = asyncio.create_task(self._tick_loop(), name="bench-caller-clock")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 3)
        await self.ari.aclose()

    async def _tick_loop(self) -> None:
        due = time.monotonic()
        while True:
            now = time.monotonic()
            late = now - due
            n = 1
            if late >= FRAME_S:
                n = int(late / FRAME_S) + 1
                if n > _MAX_CATCHUP_FRAMES:
                    self.stalls += 1
                    due = now
                    n = 1
                else:
                    due += (n - 1) * FRAME_S
            self.tick_lateness_ms.append(max(0.0, late) * 1000)
            live = self.live
            if live:
                for c in live:
                    c.tick(now, n)
                if any(c.closed_at is not None for c in live):
                    self.live = [c for c in live if c.closed_at is None]
            due += FRAME_S
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def originate(self, timeout_s: int = 10) -> Caller:
        c = Caller(self)
        self.expected[c.channel_id] = c
        params = {
            "endpoint": "WebSocket/caller_ws/c(ulaw)",
            "context": "from-external",
            "extension": self.exten,
            "priority": "1",
            "callerId": '"VR3AI Bench" <15551230009>',
            "timeout": str(timeout_s),
            "channelId": c.channel_id,
        }
        c.originated_at = time.monotonic()
        try:
            r = await self.ari.post("/channels", params=params, json={"variables": {}})
            if r.status_code != 200:
                c.origin_error = f"HTTP {r.status_code} {r.text[:100]}"
        except httpx.HTTPError as e:
            c.origin_error = f"{type(e).__name__}: {e}"
        if c.origin_error:
            self.expected.pop(c.channel_id, None)
        return c

    async def hangup(self, callers: Iterable[Caller]) -> int:
        """ARI DELETE every caller leg that is still up; returns how many requests failed."""
        failed = 0

        async def one(c: Caller) -> None:
            nonlocal failed
            try:
                r = await self.ari.delete(f"/channels/{c.channel_id}", params={"reason": "normal"})
                if r.status_code not in (204, 404):
                    failed += 1
            except httpx.HTTPError:
                failed += 1

        await asyncio.gather(*(one(c) for c in callers if c.closed_at is None and c.origin_error is None))
        return failed

    async def wait(self, pred: Any, timeout_s: float, poll_s: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if pred():
                return True
            await asyncio.sleep(poll_s)
        return bool(pred())


# ---------------------------------------------------------------------------- platform process


class PlatformProcess:
    """``bench/platform_proc.py`` as a child process, driven by JSON lines over stdin/stdout."""

    def __init__(
        self, lab: AsteriskLab, *, agent: str, data_dir: Path, log_path: Path, extra_args: Sequence[str] = ()
    ) -> None:
        self.lab = lab
        self.agent = agent
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] = {}
        self.http: httpx.AsyncClient | None = None
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout_s: float = 120.0) -> dict[str, Any]:
        log = self.log_path.open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.platform_proc",
            "--port",
            str(self.lab.media_port),
            "--ari-url",
            self.lab.ari_url,
            "--agent",
            self.agent,
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            limit=1 << 22,
        )
        log.close()
        self.info = await asyncio.wait_for(self._read(), timeout_s)
        if self.info.get("event") != "ready":
            raise RuntimeError(f"platform did not start: {self.info}")
        self.http = httpx.AsyncClient(
            base_url=self.info["base_url"], timeout=20, headers={"Authorization": f"Bearer {self.info['api_key']}"}
        )
        return self.info

    async def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"platform process exited ({await self.proc.wait()}); see {self.log_path}")
            text = line.decode().strip()
            if text.startswith("{"):
                return dict(json.loads(text))

    async def command(self, cmd: str, timeout_s: float = 30.0) -> dict[str, Any]:
        async with self._lock:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write((cmd + "\n").encode())
            await self.proc.stdin.drain()
            return await asyncio.wait_for(self._read(), timeout_s)

    async def runs(self, limit: int = 500) -> list[dict[str, Any]]:
        assert self.http is not None
        r = await self.http.get(
            "/api/v1/workflow-runs", params={"workflow_id": self.info["workflow_id"], "limit": limit}
        )
        r.raise_for_status()
        return list(r.json()["items"])

    async def run_detail(self, run_id: str) -> dict[str, Any]:
        assert self.http is not None
        r = await self.http.get(f"/api/v1/workflow-runs/{run_id}")
        r.raise_for_status()
        return dict(r.json())

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"quit\n")
            await self.proc.stdin.drain()
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def leftovers(lab: AsteriskLab, timeout_s: float = 15.0) -> tuple[list[str], list[str]]:
    """(channels, bridges) Asterisk still has after the calls ended; cleaned up if any."""
    chans = await lab.wait_no_channels(timeout_s=timeout_s)
    deadline = time.monotonic() + 5
    bridges = await lab.ari_bridges()
    while bridges and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        bridges = await lab.ari_bridges()
    names = [str(c.get("name")) for c in chans]
    bnames = [str(b.get("id")) for b in bridges]
    if chans or bridges:
        await lab.hangup_all()
    return names, bnames
