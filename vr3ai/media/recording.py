"""Per-call stereo recording: caller on the left, agent on the right, one wall-clock timeline.

Why this shape:

* Both tracks are placed by *time*, not by counting frames. Asterisk sends nothing while the
  caller's side is silent (no comfort noise in a two-party bridge), and the agent track must show
  what was actually played, so a frame-count recording would drift apart and compress pauses.
  Caller frames are placed by arrival time; agent frames by the time they are played (the session
  hands them over as its model of Asterisk's queue plays them out, i.e. send time + lead). Gaps are
  filled with silence, so the session does not hand over the silence frames it streams while the
  agent is quiet (a call is mostly those; one call per frame less on the hot path), only, at the
  end, until when they played (:meth:`CallRecorder.agent_quiet_until`).
* Small network jitter must not chop the caller track into pieces: a frame that arrives within
  ``jitter_ms`` of where the previous one ended is appended contiguously; only a later arrival opens
  a silent gap. A frame that arrives early is also appended (the track cannot rewind).
* Tracks are kept in wire format (1 byte/sample for G.711) in spooled temporary files: memory for
  the first ``spool_bytes`` per track, then disk. 150 concurrent ten-minute calls would otherwise
  hold >1 GiB of PCM in RAM. Decoding and interleaving happen once, in :meth:`write_wav`, in chunks
  (meant to run in a worker thread: ``await asyncio.to_thread(rec.write_wav, path)``).
"""

from __future__ import annotations

import os
import tempfile
import wave
from pathlib import Path
from typing import IO

import numpy as np

from vr3ai.files import open_private, private_dir
from vr3ai.media.codec import WireFormat

_CHUNK_SAMPLES = 8000 * 10
_FLUSH_BYTES = 64 * 1024


class _Track:
    __slots__ = ("_align", "_buf", "_file", "_rate", "_silence", "cursor", "tolerance")

    def __init__(self, spool_bytes: int, tolerance: int, wire: WireFormat) -> None:
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=spool_bytes)
        # Frames collect here and reach the spool file 64 kB at a time: a SpooledTemporaryFile
        # write per 20 ms frame was 3 % of the platform's CPU at 100 calls.
        self._buf = bytearray()
        self.cursor = 0
        """Bytes written == position on the timeline, in wire bytes."""
        self.tolerance = tolerance
        self._rate = wire.sample_rate * wire.bytes_per_sample
        self._align = wire.bytes_per_sample
        self._silence = wire.silence_byte

    def place(self, t: float, data: bytes) -> None:
        """Put ``data`` at ``t`` seconds on the timeline (within ``tolerance`` bytes of the end:
        right after it). One call per frame on the media hot path: the position is computed here."""
        pos = int(t * self._rate) if t > 0 else 0
        gap = pos - pos % self._align - self.cursor
        buf = self._buf
        if gap > self.tolerance:
            buf += bytes([self._silence]) * gap
            self.cursor += gap
        buf += data
        self.cursor += len(data)
        if len(buf) >= _FLUSH_BYTES:
            self._file.write(buf)
            buf.clear()

    def read(self) -> IO[bytes]:
        if self._buf:
            self._file.write(self._buf)
            self._buf.clear()
        self._file.flush()
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        self._buf.clear()
        self._file.close()


class CallRecorder:
    """Collects both directions of one call; :meth:`write_wav` renders a 16-bit stereo WAV."""

    def __init__(
        self,
        wire: WireFormat,
        *,
        jitter_ms: float = 60.0,
        spool_bytes: int = 512 * 1024,
    ) -> None:
        self.wire = wire
        self._bytes_per_s = wire.sample_rate * wire.bytes_per_sample
        align = wire.bytes_per_sample
        self._caller = _Track(spool_bytes, _align_down(wire.bytes_for_ms(jitter_ms), align), wire)
        # Agent frames come from our own play-out model and are contiguous by construction; a
        # tolerance of a few samples only absorbs float rounding.
        self._agent = _Track(spool_bytes, 4 * align, wire)
        self.closed = False

    def caller(self, t: float, data: bytes) -> None:
        """Caller audio (wire format) that arrived ``t`` seconds after the session started."""
        if not self.closed and data:
            self._caller.place(t, data)

    def agent(self, t: float, data: bytes) -> None:
        """Agent audio (wire format) that started playing ``t`` seconds after the session started."""
        if not self.closed and data:
            self._agent.place(t, data)

    def agent_quiet_until(self, t: float) -> None:
        """The agent side played silence up to ``t`` seconds after the session started."""
        if not self.closed:
            self._agent.place(t, b"")

    def duration_s(self) -> float:
        return max(self._caller.cursor, self._agent.cursor) / self._bytes_per_s

    def write_wav(self, path: str | os.PathLike[str]) -> Path:
        """Render and write the WAV (blocking; run it in a thread). Releases the spool files."""
        self.closed = True
        out = Path(path)
        private_dir(out.parent)
        bps = self.wire.bytes_per_sample
        total = max(self._caller.cursor, self._agent.cursor) // bps
        chunk_bytes = _CHUNK_SAMPLES * bps
        tmp = out.with_name(out.name + ".part")
        try:
            left = self._caller.read()
            right = self._agent.read()
            # A call recording is personal data: 0600, whatever the process umask.
            with os.fdopen(open_private(tmp), "wb") as raw, wave.open(raw, "wb") as wav:
                wav.setnchannels(2)
                wav.setsampwidth(2)
                wav.setframerate(self.wire.sample_rate)
                done = 0
                while done < total:
                    n = min(_CHUNK_SAMPLES, total - done)
                    frames = np.zeros((n, 2), dtype="<i2")
                    for channel, src in ((0, left), (1, right)):
                        raw = src.read(min(chunk_bytes, n * bps))
                        if raw:
                            pcm = np.frombuffer(self.wire.decode(raw), dtype="<i2")
                            frames[: len(pcm), channel] = pcm
                    wav.writeframes(frames.tobytes())
                    done += n
            os.replace(tmp, out)
        finally:
            self._caller.close()
            self._agent.close()
            if tmp.exists():
                tmp.unlink()
        return out

    def discard(self) -> None:
        self.closed = True
        self._caller.close()
        self._agent.close()


def _align_down(n: int, align: int) -> int:
    return n - (n % align)
