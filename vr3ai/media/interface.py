"""The one seam between a call's media and the voice agent.

ARI code never imports the agent and the agent never knows it is talking to Asterisk: the call
owner (``vr3ai.telephony.ari.calls``) builds a :class:`MediaSession` (``vr3ai.media.session``)
which implements :class:`CallAudio`, and hands it to an agent. Tests of the agent drive a fake
``CallAudio``; tests of the call flow use the real Asterisk.

Audio on this seam is always 16-bit signed little-endian mono PCM at ``sample_rate`` (8000 Hz for
the G.711 u-law channel we ask Asterisk for). Transcoding to the wire format is the session's job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A DTMF digit the caller pressed (0-9, A-D, *, #)."""

    digit: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class MarkHeard:
    """Everything queued before ``play(..., mark=name)`` returned has been played to the caller."""

    name: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The call is over (caller hung up, media dropped, ...). No more frames or events follow.

    ``reason`` from the media session: ``remote:<close code>`` (Asterisk closed the socket, e.g.
    ``remote:1000`` after an ARI DELETE), ``hangup:<agent reason>``, ``local:<reason>`` (closed by
    the call owner) or ``error:<exception>``."""

    reason: str
    at_ms: int


CallEvent = Dtmf | MarkHeard | CallEnded


@runtime_checkable
class CallAudio(Protocol):
    """What the agent sees of a call."""

    sample_rate: int
    """Sample rate of the PCM on this seam (8000 for u-law calls)."""

    def frames(self) -> AsyncIterator[bytes]:
        """Caller audio as PCM16 chunks (normally 20 ms), in arrival order. Ends when the call ends.

        Asterisk sends nothing while the caller's side is silent on some paths (no comfort noise),
        so consumers must tolerate gaps in time between chunks."""
        ...

    def events(self) -> AsyncIterator[CallEvent]:
        """DTMF digits, heard marks and the end of the call, in order."""
        ...

    def play(self, pcm: bytes, mark: str | None = None) -> None:
        """Queue agent audio (PCM16 at ``sample_rate``; any length). Never blocks.

        The session paces it to Asterisk in real time with a small bounded lead, sending silence
        whenever nothing is queued. Consecutive calls form one continuous stream (chunks of a
        streaming TTS are not padded between each other).

        ``mark`` ends an *utterance*: all audio queued since the previous mark (or the last
        :meth:`flush`) up to and including this ``pcm`` (which may be empty). A :class:`MarkHeard`
        event follows once the caller has heard all of it, and ``heard_ms_of(mark)`` tells how much of
        it was heard so far (sessions that implement :class:`HeardPosition`). Use a fresh name per
        utterance; reusing a name forgets the older one."""
        ...

    def flush(self) -> int:
        """Barge-in: drop all agent audio the caller has not heard yet (ours and Asterisk's queue).

        Returns the milliseconds of *agent* audio that were dropped (silence or padding the session
        inserted is not counted), so what the caller heard of everything played so far is
        ``total ms played - sum of flush() results``; that is how the agent cuts its transcript on
        barge-in. Marks of dropped audio never fire. Per utterance, see
        :meth:`HeardPosition.heard_ms_of`."""
        ...

    def queued_ms(self) -> int:
        """Agent audio queued but not yet heard by the caller, in milliseconds (an estimate within
        one frame). Silence the session inserts is not counted."""
        ...

    def clock_ms(self) -> int:
        """Milliseconds since the media session started: the time base of transcripts and metrics."""
        ...

    async def hangup(self, reason: str) -> None:
        """The agent ends the call. Returns once teardown has been requested; ``events()`` then
        yields ``CallEnded(reason="hangup:<reason>")``."""
        ...


@runtime_checkable
class HeardPosition(Protocol):
    """Optional extra of a :class:`CallAudio` (``MediaSession`` has it; simple fakes may not):
    how much of each marked utterance the caller actually heard."""

    def heard_ms_of(self, mark: str) -> int | None:
        """Milliseconds of the utterance closed by ``play(..., mark=mark)`` the caller has heard.

        Grows while it plays (an estimate within one 20 ms frame), equals the utterance length once
        :class:`MarkHeard` fired, and stays at what had played when a ``flush()`` cut it. ``None``
        for a mark the session does not know (or forgot: only the last 256 marks are kept)."""
        ...


@runtime_checkable
class PushedFrames(Protocol):
    """Optional extra of a :class:`CallAudio` (``MediaSession`` has it): caller frames delivered by
    a plain call instead of an async iterator.

    Why: an agent iterating :meth:`CallAudio.frames` is woken once per 20 ms frame (a future, a
    task step, an async generator resume): at 100 calls, 5,000 task wake-ups a second whose only
    job is to hand over 320 bytes. An agent whose per-frame work is synchronous anyway (VAD,
    energy) can take the frame where the media reader has it."""

    async def listen(self, on_frame: Callable[[bytes], None]) -> None:
        """Call ``on_frame(pcm)`` with every caller frame (PCM16, arrival order) instead of
        :meth:`CallAudio.frames`; use one or the other. Frames that arrived before are delivered
        first. ``on_frame`` runs inside the media reader: it must be quick and must not block; it
        may call ``play``, ``flush`` and ``queued_ms``.

        Returns when the call's audio ends. If ``on_frame`` raises, no further frame is delivered
        and ``listen`` raises that exception."""
        ...


async def deliver_frames(audio: CallAudio, on_frame: Callable[[bytes], None]) -> None:
    """Every caller frame to ``on_frame`` until the call's audio ends: pushed by the session where
    it can (:class:`PushedFrames`), else by iterating :meth:`CallAudio.frames` (fakes)."""
    if isinstance(audio, PushedFrames):
        await audio.listen(on_frame)
    else:
        async for frame in audio.frames():
            on_frame(frame)
