"""``FakeCallAudio``: an in-memory :class:`~vr3ai.media.interface.CallAudio` for agent tests and
benchmarks.

Its clock is the running event loop's (``loop.time()``): real time in benchmarks and the tests with
real models, virtual time on :class:`tests.fakes.virtual_time.VirtualTimeLoop`.

It models what matters for turn-taking and barge-in without Asterisk:

* **Caller side, a continuous line.** A background task sends one 20 ms frame every 20 ms (real
  time, or ``speed`` times faster): the caller's queued speech (``say``) when there is some,
  otherwise silence (optionally a noise floor), like a chan_websocket leg. With ``gaps=True`` it
  sends nothing during silence instead, like media paths without comfort noise.
* **Agent side, a virtual player.** ``play`` appends to a playout timeline that starts at "now" or
  where the previous audio ends; nothing is paced by a task. ``queued_ms`` is the unplayed rest
  of the timeline, ``flush`` cuts it at "now", and a mark fires (``MarkHeard``) by a loop timer at
  the moment its audio ends, so marks behave like a real session's (dropped audio never fires).
* **Measurements.** Every played chunk is recorded with its start/end on the call clock
  (``played``), and ``say`` returns the clock times of the caller's first/last speech sample, so
  tests and benchmarks can compute voice-to-voice and barge-in times from the caller's point of
  view.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from vr3ai.media.interface import CallEnded, CallEvent, Dtmf, MarkHeard


@dataclass
class PlayedChunk:
    start_ms: float
    end_ms: float
    """Where playback of this chunk ends (or was cut by a flush)."""
    pcm: bytes
    mark: str | None
    queued_at_ms: float
    sample_rate: int = 8000
    cut: bool = False
    dropped: bool = False
    handle: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def heard_pcm(self) -> bytes:
        if self.dropped:
            return b""
        n = int((self.end_ms - self.start_ms) * self.sample_rate / 1000) * 2
        return self.pcm[: max(0, n)]


@dataclass
class Said:
    """Clock times (ms) of one caller utterance as sent on the line."""

    start_ms: float
    end_ms: float
    speech_start_ms: float
    """First sample above the speech energy floor."""
    speech_end_ms: float
    """Last sample above the speech energy floor."""


def speech_bounds(pcm: bytes, sample_rate: int = 8000, floor_db: float = 35.0) -> tuple[int, int]:
    """Sample index of the first and one past the last 10 ms block within ``floor_db`` of the
    loudest block (synthetic voices have leading/trailing silence)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    blk = sample_rate // 100
    n = len(x) // blk
    if n == 0:
        return 0, len(x)
    e = 10 * np.log10(np.mean(x[: n * blk].reshape(n, blk) ** 2, axis=1) + 1e-9)
    idx = np.where(e > e.max() - floor_db)[0]
    return int(idx[0] * blk), int((idx[-1] + 1) * blk)


class FakeCallAudio:
    def __init__(
        self,
        sample_rate: int = 8000,
        frame_ms: int = 20,
        speed: float = 1.0,
        noise_dbfs: float | None = None,
        gaps: bool = False,
        seed: int = 0,
    ) -> None:
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.speed = speed
        self.noise_dbfs = noise_dbfs
        self.gaps = gaps
        self._frame_bytes = sample_rate * frame_ms // 1000 * 2
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._frames: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._events: asyncio.Queue[CallEvent | None] = asyncio.Queue()
        self._pending = bytearray()
        self._utterances: list[tuple[int, int, int, asyncio.Future[Said], dict[str, float]]] = []
        self._sent = 0  # caller bytes sent so far (speech and silence)
        self._rng = np.random.default_rng(seed)
        self._line: asyncio.Task[None] | None = None
        self._play_end = 0.0
        self.played: list[PlayedChunk] = []
        self.flushes: list[tuple[float, int]] = []
        self.hangups: list[tuple[float, str]] = []
        self.marks_heard: list[MarkHeard] = []
        self.ended = False
        self._played_event = asyncio.Event()
        self._open_utt: list[PlayedChunk] = []
        self._segments: dict[str, list[PlayedChunk]] = {}

    # ----------------------------------------------------------------- CallAudio
    def clock_ms(self) -> int:
        return int(self._clock())

    def _clock(self) -> float:
        return (self._loop.time() - self._t0) * 1000.0 * self.speed

    async def frames(self) -> AsyncIterator[bytes]:
        self.start_line()
        while True:
            frame = await self._frames.get()
            if frame is None:
                return
            yield frame

    async def events(self) -> AsyncIterator[CallEvent]:
        while True:
            ev = await self._events.get()
            if ev is None:
                return
            yield ev
            if isinstance(ev, CallEnded):
                return

    def play(self, pcm: bytes, mark: str | None = None) -> None:
        if self.ended:
            return
        now = self._clock()
        start = max(now, self._play_end)
        end = start + (len(pcm) // 2) * 1000.0 / self.sample_rate
        chunk = PlayedChunk(start, end, pcm, mark, now, self.sample_rate)
        self._play_end = end
        self.played.append(chunk)
        self._open_utt.append(chunk)
        if mark is not None:
            self._segments[mark] = self._open_utt
            self._open_utt = []
            delay = (end - now) / 1000.0 / self.speed
            chunk.handle = asyncio.get_running_loop().call_later(delay, self._fire_mark, chunk)
        self._played_event.set()

    def _fire_mark(self, chunk: PlayedChunk) -> None:
        if chunk.dropped or chunk.cut or self.ended or chunk.mark is None:
            return
        ev = MarkHeard(chunk.mark, int(chunk.end_ms))
        self.marks_heard.append(ev)
        self._events.put_nowait(ev)

    def flush(self) -> int:
        now = self._clock()
        dropped = max(0.0, self._play_end - now)
        for c in self.played:
            if c.end_ms <= now or c.dropped:
                continue
            if c.handle is not None:
                c.handle.cancel()
            if c.start_ms < now:
                c.end_ms = now
                c.cut = True
            else:
                c.dropped = True
                c.end_ms = c.start_ms
        self._play_end = now
        self._open_utt = []
        self.flushes.append((now, int(dropped)))
        return int(dropped)

    def heard_ms_of(self, mark: str) -> int | None:
        """Like the real session's: how much of the utterance closed by ``mark`` was heard."""
        chunks = self._segments.get(mark)
        if chunks is None:
            return None
        now = self._clock()
        return int(sum(max(0.0, min(now, c.end_ms) - c.start_ms) for c in chunks if not c.dropped))

    def queued_ms(self) -> int:
        return int(max(0.0, self._play_end - self._clock()))

    async def hangup(self, reason: str) -> None:
        self.hangups.append((self._clock(), reason))
        self._end(f"agent hangup: {reason}")

    # ----------------------------------------------------------------- caller side
    def start_line(self) -> None:
        if self._line is None and not self.ended:
            self._line = asyncio.create_task(self._run_line(), name="fake-line")

    def _noise(self, n: int) -> bytes:
        if self.noise_dbfs is None:
            return b"\x00" * n
        amp = 32768.0 * 10 ** (self.noise_dbfs / 20.0)
        return (self._rng.standard_normal(n // 2) * amp).astype("<i2").tobytes()

    async def _run_line(self) -> None:
        loop = asyncio.get_running_loop()
        step = self.frame_ms / 1000.0 / self.speed
        next_t = loop.time()
        fb = self._frame_bytes
        while not self.ended:
            if self._pending:
                frame = bytes(self._pending[:fb])
                del self._pending[:fb]
                if len(frame) < fb:
                    frame += self._noise(fb - len(frame))
                self._frames.put_nowait(frame)
            elif not self.gaps:
                self._frames.put_nowait(self._noise(fb))
            sent_before = self._sent
            self._sent += fb
            now = self._clock()
            self._settle(sent_before, now)
            next_t += step
            await asyncio.sleep(max(0.0, next_t - loop.time()))

    def _settle(self, sent_before: int, now: float) -> None:
        # The frame just sent covers caller bytes [sent_before, sent_before + frame); its last
        # sample "arrives" now, earlier samples proportionally earlier.
        fb = self._frame_bytes
        frame_end = sent_before + fb

        def at(byte_pos: int) -> float:
            return now - (frame_end - byte_pos) / 2 * 1000.0 / self.sample_rate / 1.0

        keep = []
        for start, end, s_end, fut, info in self._utterances:
            if "start" not in info and start < frame_end:
                info["start"] = at(start)
            if "speech_start" not in info and info["speech_start_b"] < frame_end:
                info["speech_start"] = at(int(info["speech_start_b"]))
            if "speech_end" not in info and s_end <= frame_end:
                info["speech_end"] = at(s_end)
            if end <= frame_end:
                if not fut.done():
                    fut.set_result(
                        Said(info["start"], at(end), info["speech_start"], info.get("speech_end", at(end)))
                    )
            else:
                keep.append((start, end, s_end, fut, info))
        self._utterances = keep

    async def say(self, pcm: bytes) -> Said:
        """Queue caller audio on the line; returns once its last frame has been sent.

        Raises ``ConnectionResetError`` if the call ends first."""
        if self.ended:
            raise ConnectionResetError("call ended")
        self.start_line()
        a, b = speech_bounds(pcm, self.sample_rate)
        queued_before = len(self._pending)
        start = self._sent + queued_before
        end = start + len(pcm)
        fut: asyncio.Future[Said] = asyncio.get_running_loop().create_future()
        info: dict[str, float] = {"speech_start_b": start + 2 * a}
        self._utterances.append((start, end, start + 2 * b, fut, info))
        self._pending += pcm
        return await fut

    async def pause(self, ms: float) -> None:
        """Let ``ms`` of call time pass (the line keeps sending silence)."""
        await asyncio.sleep(ms / 1000.0 / self.speed)

    def press(self, digit: str) -> None:
        self._events.put_nowait(Dtmf(digit, self.clock_ms()))

    def caller_hangup(self, reason: str = "caller hung up") -> None:
        self._end(reason)

    def _end(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        for c in self.played:
            if c.handle is not None:
                c.handle.cancel()
        for *_, fut, _info in self._utterances:
            if not fut.done():
                fut.set_exception(ConnectionResetError("call ended while the caller was talking"))
                fut.exception()  # retrieved: a caller that stopped waiting must not warn
        self._utterances = []
        self._events.put_nowait(CallEnded(reason, self.clock_ms()))
        self._frames.put_nowait(None)
        if self._line is not None:
            self._line.cancel()

    async def close(self) -> None:
        self._end("test finished")
        if self._line is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._line

    # ----------------------------------------------------------------- inspection
    def audible(self) -> list[PlayedChunk]:
        return [c for c in self.played if not c.dropped and c.end_ms > c.start_ms]

    def first_audio_after(self, t_ms: float) -> PlayedChunk | None:
        for c in self.audible():
            if c.start_ms >= t_ms:
                return c
        return None

    def playing_at(self, t_ms: float) -> bool:
        return any(c.start_ms <= t_ms < c.end_ms for c in self.audible())

    def audio_stop_after(self, t_ms: float) -> float | None:
        """When the agent audio that was playing at ``t_ms`` stopped (contiguous chunks followed)."""
        end: float | None = None
        for c in sorted(self.audible(), key=lambda c: c.start_ms):
            if end is None:
                if c.start_ms <= t_ms < c.end_ms:
                    end = c.end_ms
            elif c.start_ms <= end + 1.0:
                end = max(end, c.end_ms)
            else:
                break
        return end

    async def wait_audio(self, after_ms: float, within_s: float = 10.0) -> PlayedChunk:
        """Wait until agent audio queued at or after ``after_ms`` exists."""
        deadline = self._loop.time() + within_s
        while True:
            for c in self.played:
                if c.queued_at_ms >= after_ms and not c.dropped:
                    return c
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no agent audio after {after_ms} ms")
            self._played_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._played_event.wait(), remaining)

    async def wait_silent(self, within_s: float = 30.0) -> float:
        """Wait until everything queued has been played; returns the clock time."""
        deadline = self._loop.time() + within_s
        while self.queued_ms() > 0 or (not self.played and not self.ended):
            if self._loop.time() > deadline:
                raise TimeoutError("agent kept talking")
            await asyncio.sleep(0.02)
        return self._clock()
