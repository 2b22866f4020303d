"""A media session's tuning (:class:`MediaConfig`) and counters (:class:`MediaStats`).

A module of their own because the session's parts (inbound, play-out, stream) use them too: with
them in ``session``, which assembles those parts, each part would import the module that imports it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class MediaConfig:
    target_lead_ms: float = 60.0
    """How far ahead of real time Asterisk's queue reaches right after each tick; just before the
    next tick it is one tick less (60 -> 40 ms with 20 ms ticks). The margin before the next tick
    is what absorbs a late event loop; below ~40 a busy loop causes audible gaps. Speech start
    and barge-in do not pay for it (fast start, flush)."""
    send_silence: bool = True
    """Stream silence frames while the agent is quiet (Asterisk 22.10 does not)."""
    fast_start: bool = True
    """FLUSH_MEDIA queued silence when speech starts, so it is not delayed by the lead."""
    max_inbound_frames: int = 50
    """Caller frames buffered for a slow agent (50 = 1 s of 20 ms frames); oldest dropped beyond."""
    status_interval_s: float = 5.0
    """Periodic GET_STATUS to re-anchor the queue model; 0 disables."""
    resync_threshold_ms: float = 40.0
    """Re-anchor the model only when it is off by more than this (Asterisk's timer phase is unknown
    to us, so smaller differences are noise)."""
    recording_jitter_ms: float = 60.0
    close_grace_s: float = 1.0
    """After we close, how long the peer gets to complete the close before the session ends
    anyway (a peer that stopped reading must not keep the call and its owner waiting)."""


@dataclass
class MediaStats:
    frames_in: int = 0
    bytes_in: int = 0
    frames_in_dropped: int = 0
    """Caller frames dropped because the agent did not consume :meth:`MediaSession.frames` fast enough."""
    frames_out: int = 0
    messages_out: int = 0
    """Binary messages sent: frames due in the same tick go out as one message."""
    audio_frames_out: int = 0
    silence_frames_out: int = 0
    pad_bytes_out: int = 0
    """Silence bytes used to complete a partial last frame."""
    late_ticks: int = 0
    """Services that came more than 1.5 frames after the previous one (our loop was late)."""
    skipped_ms: float = 0.0
    """Time Asterisk's queue was empty while we were streaming (the caller heard a gap)."""
    max_send_gap_ms: float = 0.0
    marks_sent: int = 0
    marks_heard: int = 0
    marks_cancelled: int = 0
    flushes: int = 0
    flushed_ms: float = 0.0
    fast_starts: int = 0
    xoff: int = 0
    resyncs: int = 0
    errors: int = 0
    """ERROR events from Asterisk."""
    unknown_messages: int = 0

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)
