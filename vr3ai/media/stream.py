"""The agent's outbound audio of one call as a byte stream: re-framing, padding, utterances.

Agent audio arrives as PCM16 chunks of any length; Asterisk takes whole frames of
``optimal_frame_size`` bytes of the wire format. :class:`AgentStream` keeps the audio in wire format
in one byte buffer and hands out whole frames (:meth:`AgentStream.take_frame`). Offsets count bytes
since the call began, so "what the caller heard" is a position in this stream: ranges that are not
agent audio (silence padding a partial frame, audio dropped by a barge-in) are kept as holes, and
each utterance (audio between two marks) as a segment. When each frame is played is the play-out
model's business (:mod:`vr3ai.media.playout`).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vr3ai.media.codec import WireFormat

if TYPE_CHECKING:
    from vr3ai.media.config import MediaStats

_MAX_SEGMENTS = 256
_COMPACT_AT = 65536
"""Bytes already handed out before the buffer is compacted (and at least half of it)."""


@dataclass(slots=True)
class Segment:
    """Agent audio between two marks, in stream offsets; ``frozen_ms`` once final."""

    start: int
    end: int
    frozen_ms: float | None = None


class AgentStream:
    """Agent audio in wire format, framed for Asterisk (see module doc)."""

    __slots__ = (
        "_buf",
        "_bytes_per_ms",
        "_pcm_carry",
        "_rd",
        "_seg_start",
        "_wire",
        "end_off",
        "fb",
        "holes",
        "segments",
        "sent_off",
        "stats",
    )

    def __init__(self, wire: WireFormat, frame_bytes: int, stats: MediaStats) -> None:
        self._wire = wire
        self.fb = frame_bytes
        self._bytes_per_ms = wire.sample_rate * wire.bytes_per_sample / 1000.0
        self._buf = bytearray()
        self._rd = 0
        self.sent_off = 0
        """End of what was handed out as frames."""
        self.end_off = 0
        """End of what the agent queued (and padding)."""
        self._pcm_carry = b""
        self.holes: deque[tuple[int, int]] = deque()
        """Stream ranges that are not agent audio (padding, flushed audio), sorted and disjoint."""
        self.segments: OrderedDict[str, Segment] = OrderedDict()
        self._seg_start = 0
        self.stats = stats

    @property
    def pending(self) -> int:
        """Bytes queued and not yet handed out."""
        return self.end_off - self.sent_off

    def write(self, pcm: bytes) -> None:
        """Queue PCM16 (any length: an odd byte waits for its other half)."""
        if self._pcm_carry:
            pcm = self._pcm_carry + pcm
            self._pcm_carry = b""
        if len(pcm) % 2:
            self._pcm_carry = pcm[-1:]
            pcm = pcm[:-1]
        if pcm:
            data = self._wire.encode(pcm)
            self._buf += data
            self.end_off += len(data)

    def close_segment(self, name: str) -> Segment:
        """End the utterance named ``name`` here: its last frame is padded to a whole frame; the
        mark that closes it belongs at :attr:`end_off` after this call."""
        self._pcm_carry = b""
        audio_end = self.end_off
        rem = (self.end_off - self.sent_off) % self.fb
        if rem:
            self.pad(self.fb - rem)
        seg = Segment(self._seg_start, audio_end)
        self.segments[name] = seg
        self.segments.move_to_end(name)
        while len(self.segments) > _MAX_SEGMENTS:
            self.segments.popitem(last=False)
        self._seg_start = self.end_off
        return seg

    def take_frame(self) -> bytes:
        """The next whole frame (padded with silence if only part of one is queued). Only when
        :attr:`pending` > 0."""
        fb = self.fb
        avail = self.end_off - self.sent_off
        if avail < fb:
            self.pad(fb - avail)
        rd = self._rd
        payload = bytes(self._buf[rd : rd + fb])
        self._rd = rd = rd + fb
        self.sent_off += fb
        if rd >= _COMPACT_AT and rd * 2 >= len(self._buf):
            del self._buf[:rd]
            self._rd = 0
        return payload

    def drop_unsent(self, heard: int) -> int:
        """Barge-in: everything after stream offset ``heard`` will not be heard. Freezes the
        utterances it cuts at what was heard; returns the bytes of agent audio dropped."""
        dropped = (self.end_off - heard) - self.hole_bytes(heard, self.end_off)
        for seg in self.segments.values():
            if seg.frozen_ms is None and seg.end > heard:
                seg.frozen_ms = self.ms(min(max(heard - seg.start, 0), seg.end - seg.start))
        if heard < self.end_off:
            self._add_hole(heard, self.end_off)
        self._buf = bytearray()
        self._rd = 0
        self.sent_off = self.end_off
        self._seg_start = self.end_off
        self._pcm_carry = b""
        return max(dropped, 0)

    def unheard_ms(self, pos: int) -> float:
        """Agent audio after stream offset ``pos`` (holes excluded), in ms."""
        return self.ms(max((self.end_off - pos) - self.hole_bytes(pos, self.end_off), 0))

    def heard_ms_of(self, mark: str, pos: int) -> float | None:
        """How much of the utterance closed by ``mark`` lies before stream offset ``pos`` (or was
        frozen at), in ms; None for an unknown mark."""
        seg = self.segments.get(mark)
        if seg is None:
            return None
        if seg.frozen_ms is not None:
            return seg.frozen_ms
        return self.ms(min(max(pos - seg.start, 0), seg.end - seg.start))

    def pad(self, n: int) -> None:
        self._add_hole(self.end_off, self.end_off + n)
        self._buf += self._wire.silence(n)
        self.end_off += n
        self.stats.pad_bytes_out += n

    def _add_hole(self, lo: int, hi: int) -> None:
        # Holes stay sorted and disjoint: a flush hole swallows the pads inside it.
        holes = self.holes
        while holes and holes[-1][0] >= lo:
            holes.pop()
        if holes and holes[-1][1] > lo:
            holes[-1] = (holes[-1][0], lo)
        holes.append((lo, hi))

    def hole_bytes(self, lo: int, hi: int) -> int:
        total = 0
        for a, b in self.holes:
            a2, b2 = max(a, lo), min(b, hi)
            if b2 > a2:
                total += b2 - a2
        return total

    def ms(self, nbytes: float) -> float:
        return nbytes / self._bytes_per_ms
