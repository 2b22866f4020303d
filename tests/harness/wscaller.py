"""A caller whose audio is produced and captured in Python, in real time, through chan_websocket.

The harness runs a small WebSocket server; the websocket_client section ``caller_ws`` points at it.
Originating ``WebSocket/caller_ws/c(ulaw)`` into ``from-external`` makes Asterisk connect to that
server and then run the dialplan (Stasis) with the WebSocket channel as the *caller*. Unlike a
Local channel in the dialplan, every frame the caller sends and every frame it hears is
timestamped here with ``time.monotonic()``, which is what latency benchmarks need.

Media rules this follows (measured on 22.10.1): Asterisk plays what it receives from a 20 ms timer
and generates no silence by itself, so the caller streams one 160-byte u-law frame every 20 ms,
silence (0xFF) whenever nothing is queued, so media flows continuously like a real phone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import audio

if TYPE_CHECKING:
    from .asterisk import AsteriskLab

log = logging.getLogger("vr3ai.tests.harness")

CALLER_WS_SECTION = "caller_ws"
CALLER_WS_PATH = "/harness/caller"
FRAME_BYTES = audio.FRAME_SAMPLES  # u-law: one byte per sample
FRAME_S = audio.FRAME_S
_SILENCE = bytes([audio.ULAW_SILENCE]) * FRAME_BYTES
# Behind schedule by more than this (event loop stall): restart the clock instead of bursting
# the backlog, which would only pile up in chan_websocket's queue.
_MAX_LAG_S = 0.1


@dataclass
class Played:
    """One `play()` call: monotonic send times of its first frame, last speech frame, last frame."""

    n_frames: int
    last_active_frame: int | None  # index of the last frame above the activity threshold
    sent_times: list[float] = field(default_factory=list)  # per frame, as sent
    started_at: float | None = None
    speech_end_at: float | None = None  # send time of the frame holding the end of speech
    ended_at: float | None = None


class _CallerServer:
    """One WebSocket server per (event loop, port), shared by all callers of that loop.

    Reference counted so a test that opens several callers binds the port once, and the port is
    released when the last caller closes (the next test may run on a different event loop).
    """

    _registry: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _CallerServer]]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, port: int) -> None:
        self.port = port
        self.refs = 0
        self.expected: dict[str, WebSocketCaller] = {}
        self.unexpected = 0
        self._server: Server | None = None
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def acquire(cls, port: int) -> _CallerServer:
        servers = cls._registry.setdefault(asyncio.get_running_loop(), {})
        srv = servers.get(port)
        if srv is None:
            srv = cls(port)
            servers[port] = srv
            try:
                await srv._start()
            except BaseException as e:
                servers.pop(port, None)
                if not srv._ready.done():
                    srv._ready.set_exception(e)
                    srv._ready.exception()  # mark retrieved: the error is raised here instead
                raise
        else:
            await asyncio.shield(srv._ready)
        srv.refs += 1
        return srv

    async def release(self) -> None:
        self.refs -= 1
        if self.refs > 0:
            return
        self._registry.get(asyncio.get_running_loop(), {}).pop(self.port, None)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _start(self) -> None:
        def only_caller_path(conn: ServerConnection, request: Request) -> Response | None:
            if request.path.split("?", 1)[0] != CALLER_WS_PATH:
                return conn.respond(404, "not the harness caller endpoint\n")
            return None

        try:
            self._server = await serve(self._handler, "127.0.0.1", self.port, subprotocols=["media"],  # type: ignore[list-item]
                                       process_request=only_caller_path, max_size=None, ping_interval=None,
                                       compression=None)
        except OSError as e:
            raise RuntimeError(f"WebSocketCaller server cannot bind 127.0.0.1:{self.port}: {e}") from e
        self._ready.set_result(None)

    async def _handler(self, ws: ServerConnection) -> None:
        try:
            first = await asyncio.wait_for(ws.recv(), 5)
        except (TimeoutError, ConnectionClosed):
            return
        t = time.monotonic()
        fields = _parse_fields(first) if isinstance(first, str) else {}
        caller = self.expected.pop(fields.get("channel_id", ""), None)
        if caller is None or not str(first).startswith("MEDIA_START"):
            # Not one of ours (or a protocol surprise): refuse instead of guessing.
            self.unexpected += 1
            log.warning("caller_ws: unexpected connection, first message %r", first)
            await ws.close(1008, "unknown caller")
            return
        await caller._serve(ws, first, t)


class WebSocketCaller:
    """A simulated caller with real-time, timestamped audio in both directions.

    Use ``async with lab.ws_caller("8000") as caller:`` (or ``await caller.start()`` /
    ``await caller.close()``). Audio is 8 kHz PCM16 in and out; the wire is u-law.
    """

    def __init__(
        self,
        lab: AsteriskLab,
        exten: str,
        *,
        context: str = "from-external",
        caller_id: str = '"VR3AI WS Caller" <15551230002>',
        stasis_app: str | None = None,
        variables: Mapping[str, str] | None = None,
        connect_timeout_s: float = 5.0,
        activity_dbfs: float = -45.0,
    ) -> None:
        self.lab = lab
        self.exten = exten
        self.context = context
        self.caller_id = caller_id
        self.stasis_app = stasis_app
        self.variables = dict(variables or {})
        self.connect_timeout_s = connect_timeout_s
        self.activity_dbfs = activity_dbfs
        self.channel_id = f"hws-{uuid.uuid4().hex[:10]}"
        # Received from Asterisk: (arrival time, 160 u-law bytes) and control text messages.
        self.frames: list[tuple[float, bytes]] = []
        self.texts: list[tuple[float, str]] = []
        # Sent: monotonic send time of every frame and whether it carried queued audio.
        self.sent_at: list[float] = []
        self.sent_audio: list[bool] = []
        self.plays: list[Played] = []
        self.stalls = 0  # times the sender fell > 100 ms behind and restarted its clock
        self.media_start: str | None = None
        self.originated_at: float | None = None
        self.originate_ms: float | None = None
        self.connected_at: float | None = None  # MEDIA_START received
        self.closed_at: float | None = None
        self.close_code: int | None = None
        self._ws: ServerConnection | None = None
        self._server: _CallerServer | None = None
        self._queue: deque[tuple[bytes, Played, int]] = deque()
        self._connected = asyncio.Event()
        self._closed = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._frame_cond = asyncio.Condition()
        self._sender: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> WebSocketCaller:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> WebSocketCaller:
        """Originate the call and wait until Asterisk's media WebSocket is connected to us."""
        from .asterisk import _check_id

        _check_id(self.exten)
        _check_id(self.context)
        self._server = await _CallerServer.acquire(self.lab.caller_ws_port)
        self._server.expected[self.channel_id] = self
        variables = dict(self.variables)
        if self.stasis_app:
            variables["STASIS_APP"] = self.stasis_app
        params = {
            "endpoint": f"WebSocket/{CALLER_WS_SECTION}/c(ulaw)",
            "context": self.context, "extension": self.exten, "priority": "1",
            "callerId": self.caller_id, "timeout": str(max(1, math.ceil(self.connect_timeout_s))),
            "channelId": self.channel_id,
        }
        try:
            self.originated_at = time.monotonic()
            await self.lab.ari("POST", "/channels", params=params, json={"variables": variables}, ok=(200,))
            self.originate_ms = (time.monotonic() - self.originated_at) * 1000
            await asyncio.wait_for(self._connected.wait(), self.connect_timeout_s)
        except BaseException:
            self._server.expected.pop(self.channel_id, None)
            with contextlib.suppress(Exception):
                await self.lab.ari("DELETE", f"/channels/{self.channel_id}", ok=())
            await self._server.release()
            self._server = None
            raise
        return self

    async def close(self) -> None:
        """Hang up (if still up) and release the server."""
        if self._server is None:
            return
        if self._ws is not None and not self._closed.is_set():
            with contextlib.suppress(Exception):
                await self.lab.ari("DELETE", f"/channels/{self.channel_id}", ok=(204, 404))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), 2.0)
            if not self._closed.is_set():
                await self._ws.close()
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await self._sender
        self._server.expected.pop(self.channel_id, None)
        await self._server.release()
        self._server = None

    async def hangup(self) -> None:
        """The caller hangs up (ARI DELETE of its channel); waits until the socket closed."""
        await self.lab.ari("DELETE", f"/channels/{self.channel_id}", ok=(204, 404))
        await self.wait_hangup(5.0)

    async def wait_hangup(self, timeout_s: float = 30.0) -> float:
        """Wait until Asterisk closed the call (e.g. the platform hung up); returns the close time."""
        await asyncio.wait_for(self._closed.wait(), timeout_s)
        assert self.closed_at is not None
        return self.closed_at

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set() and not self._closed.is_set()

    # ------------------------------------------------------------------ sending

    def play(self, pcm: np.ndarray | bytes) -> Played:
        """Queue 8 kHz PCM16 (ndarray, or raw little-endian bytes) to be sent in real time.

        Padded with silence to whole 20 ms frames (chan_websocket drops partial tails).
        """
        if isinstance(pcm, bytes | bytearray | memoryview):
            pcm = np.frombuffer(bytes(pcm), dtype="<i2")
        pcm = np.asarray(pcm, dtype=np.int16)
        pad = (-len(pcm)) % FRAME_BYTES
        if pad:
            pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)])
        ulaw = audio.lin2ulaw(pcm)
        n = len(ulaw) // FRAME_BYTES
        active = np.nonzero(audio.frame_dbfs(pcm) > self.activity_dbfs)[0]
        played = Played(n_frames=n, last_active_frame=int(active[-1]) if active.size else None)
        self.plays.append(played)
        if n == 0:
            played.started_at = played.ended_at = time.monotonic()
            return played
        self._drained.clear()
        for i in range(n):
            self._queue.append((ulaw[i * FRAME_BYTES:(i + 1) * FRAME_BYTES], played, i))
        return played

    async def until_played(self, timeout_s: float = 60.0) -> float:
        """Wait until everything queued has been sent; returns the send time of the last speech
        frame of the last `play()` (its last frame if it held no speech)."""
        await asyncio.wait_for(self._drained.wait(), timeout_s)
        last = self.plays[-1] if self.plays else None
        if last is None:
            return time.monotonic()
        t = last.speech_end_at if last.speech_end_at is not None else last.ended_at
        if t is None:
            raise ConnectionError(f"call {self.channel_id} ended before the audio was sent")
        return t

    async def say(self, pcm: np.ndarray | bytes, timeout_s: float = 60.0) -> float:
        """`play()` then `until_played()`."""
        self.play(pcm)
        return await self.until_played(timeout_s)

    def clear(self) -> None:
        """Drop queued, not yet sent audio (the caller stops talking mid-sentence)."""
        self._queue.clear()
        self._drained.set()

    async def _send_loop(self) -> None:
        ws = self._ws
        assert ws is not None
        t0 = time.monotonic()
        n = 0
        while True:
            if self._queue:
                frame, played, idx = self._queue.popleft()
            else:
                frame, played, idx = _SILENCE, None, -1
            await ws.send(frame)
            ts = time.monotonic()
            self.sent_at.append(ts)
            self.sent_audio.append(played is not None)
            if played is not None:
                played.sent_times.append(ts)
                if idx == 0:
                    played.started_at = ts
                if idx == played.last_active_frame:
                    played.speech_end_at = ts
                if idx == played.n_frames - 1:
                    played.ended_at = ts
                if not self._queue:
                    self._drained.set()
            n += 1
            delay = t0 + n * FRAME_S - time.monotonic()
            if delay < -_MAX_LAG_S:
                self.stalls += 1
                t0 = time.monotonic() - n * FRAME_S
                delay = 0.0
            await asyncio.sleep(max(0.0, delay))

    # ------------------------------------------------------------------ receiving

    async def _serve(self, ws: ServerConnection, first: str | bytes, t: float) -> None:
        self._ws = ws
        self.media_start = str(first)
        self.texts.append((t, self.media_start))
        self.connected_at = t
        self._connected.set()
        self._sender = asyncio.create_task(self._send_loop())
        try:
            async for msg in ws:
                now = time.monotonic()
                if isinstance(msg, str):
                    self.texts.append((now, msg))
                else:
                    self.frames.append((now, bytes(msg)))
                async with self._frame_cond:
                    self._frame_cond.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.closed_at = time.monotonic()
            self.close_code = ws.close_code
            self._closed.set()
            self._drained.set()
            if self._sender is not None:
                self._sender.cancel()
            async with self._frame_cond:
                self._frame_cond.notify_all()

    @property
    def media_start_fields(self) -> dict[str, str]:
        return _parse_fields(self.media_start or "")

    def frame_times(self) -> np.ndarray:
        return np.array([t for t, _ in self.frames], dtype=np.float64)

    def heard_bytes(self) -> bytes:
        return b"".join(f for _, f in self.frames)

    def heard_pcm(self, *, aligned: bool = True, max_jitter_s: float = 0.1) -> np.ndarray:
        """What the caller heard, 8 kHz PCM16.

        aligned=True places frames on a 20 ms grid from `connected_at` and inserts silence where no
        frames arrived (Asterisk sends nothing while the far side is silent), so offsets in the
        result are wall-clock offsets. A frame counts as "after a gap" only when it is more than
        `max_jitter_s` later than the running stream expects: late frames from a busy scheduler
        must not punch holes into continuous audio. aligned=False: frames back to back.
        """
        if not aligned or self.connected_at is None:
            return audio.ulaw2lin(self.heard_bytes())
        slack = max(1, round(max_jitter_s / FRAME_S))
        out: list[np.ndarray] = []
        prev = -1
        for t, f in self.frames:
            slot = int((t - self.connected_at) / FRAME_S)
            pos = slot if slot > prev + slack else prev + 1
            if pos > prev + 1:
                out.append(np.zeros((pos - prev - 1) * FRAME_BYTES, dtype=np.int16))
            out.append(audio.ulaw2lin(f))
            prev = pos
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)

    def frame_levels(self) -> list[tuple[float, float]]:
        """(arrival time, dBFS) of every received frame."""
        return [(t, audio.rms_dbfs(audio.ulaw2lin(f))) for t, f in self.frames]

    def first_audio_after(self, t: float, threshold_dbfs: float | None = None) -> float | None:
        """Arrival time of the first received frame after `t` whose level exceeds the threshold."""
        thr = self.activity_dbfs if threshold_dbfs is None else threshold_dbfs
        for ft, f in self.frames:
            if ft > t and audio.rms_dbfs(audio.ulaw2lin(f)) > thr:
                return ft
        return None

    async def wait_audio_after(self, t: float, timeout_s: float = 10.0,
                               threshold_dbfs: float | None = None) -> float:
        """Wait for the first non-silent frame arriving after `t`; returns its arrival time."""
        deadline = time.monotonic() + timeout_s
        async with self._frame_cond:
            while True:
                found = self.first_audio_after(t, threshold_dbfs)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self._closed.is_set():
                    raise TimeoutError(f"no audio after t={t:.3f} within {timeout_s} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._frame_cond.wait(), left)

    async def wait_frames(self, n: int, timeout_s: float = 10.0) -> None:
        """Wait until at least `n` frames have been received in total."""
        deadline = time.monotonic() + timeout_s
        async with self._frame_cond:
            while len(self.frames) < n:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed.is_set():
                    raise TimeoutError(f"{len(self.frames)}/{n} frames after {timeout_s} s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._frame_cond.wait(), left)

    def stats(self) -> dict[str, Any]:
        """Send pacing and receive gap statistics (ms)."""
        out: dict[str, Any] = {"frames_sent": len(self.sent_at), "frames_received": len(self.frames),
                               "stalls": self.stalls}
        for name, times in (("send", np.array(self.sent_at)), ("recv", self.frame_times())):
            if len(times) > 2:
                gaps = np.diff(times) * 1000
                out[f"{name}_gap_ms"] = {"mean": float(gaps.mean()), "p50": float(np.percentile(gaps, 50)),
                                         "p99": float(np.percentile(gaps, 99)), "max": float(gaps.max())}
        return out


def _parse_fields(msg: str) -> dict[str, str]:
    """`MEDIA_START connection_id:x channel:y ...` -> {"connection_id": "x", ...}."""
    out: dict[str, str] = {}
    for part in msg.split()[1:]:
        k, sep, v = part.partition(":")
        if sep:
            out[k] = v
    return out


__all__ = ["CALLER_WS_PATH", "CALLER_WS_SECTION", "Played", "WebSocketCaller"]
