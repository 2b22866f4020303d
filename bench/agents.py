"""Agents for the load benchmarks.

:class:`MinimalAgent` is the "no models" agent of the capacity issue: it plays a cached ~1.5 s greeting
when the call starts and, after each caller utterance (energy VAD, 200 ms of silence ends a turn),
a fixed ~1 s clip. Voice-to-voice through it is VAD end-of-turn + our plumbing + Asterisk, so the
figure isolates the platform's own contribution.

Its audio is a synthetic vowel (harmonics of a gliding 120-160 Hz pitch, slow tremolo that never
drops below -30 dBFS) rather than TTS speech: it has no pauses of its own, so *any* silent or
missing 20 ms frame the caller hears inside it is a real underrun, which is what the benchmark
counts.
"""

from __future__ import annotations

import asyncio
import math
import warnings
from typing import Any

import numpy as np

from vr3ai.agent.base import CallContext, RunReport
from vr3ai.media.interface import CallAudio, CallEnded, deliver_frames

with warnings.catch_warnings():
    # audioop is C and per-frame RMS is the hot path of this agent; it leaves the stdlib in 3.13.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

RATE = 8000
# -40 dBFS: the caller's u-law silence decodes to 0 and flite speech sits far above.
SPEECH_RMS = int(32768 * 10 ** (-40 / 20))


def vowel_pcm(secs: float, f0: tuple[float, float] = (120.0, 160.0), level_dbfs: float = -16.0) -> bytes:
    """Continuous voice-like PCM16: no internal silence, 10 ms fades at both ends."""
    n = int(secs * RATE)
    t = np.arange(n) / RATE
    pitch = np.linspace(f0[0], f0[1], n)
    phase = 2 * math.pi * np.cumsum(pitch) / RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 16) if k * f0[1] < RATE / 2 - 200)
    x = np.asarray(x, dtype=np.float64)
    x /= np.sqrt(np.mean(x * x))
    x *= 1.0 + 0.3 * np.sin(2 * math.pi * 4.0 * t)  # tremolo: 0.7..1.3, never near silence
    x *= 32768 * 10 ** (level_dbfs / 20)
    fade = int(0.01 * RATE)
    ramp = np.linspace(0.2, 1.0, fade)  # starts audible: the first frame must count as speech
    x[:fade] *= ramp
    x[-fade:] *= ramp[::-1]
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


class MinimalAgent:
    """Greeting, then one fixed reply per caller turn. Ignores caller speech while it is talking."""

    def __init__(
        self,
        greeting: bytes,
        reply: bytes,
        *,
        end_silence_ms: int = 200,
        start_ms: int = 60,
        barge_in: bool = False,
    ) -> None:
        self.greeting = greeting
        self.barge_in = barge_in
        self.reply = reply
        self.end_silence_ms = end_silence_ms
        self.start_ms = start_ms
        self.turns = 0

    async def run(self, audio: CallAudio, ctx: CallContext, report: RunReport) -> None:
        greet_ms = len(self.greeting) // 2 * 1000 // audio.sample_rate
        reply_ms = len(self.reply) // 2 * 1000 // audio.sample_rate
        audio.play(self.greeting, mark="greeting")
        t = audio.clock_ms()
        report.say("agent", "<greeting>", t, t + greet_ms)
        ended = asyncio.Event()

        async def watch_events() -> None:
            async for ev in audio.events():
                if isinstance(ev, CallEnded):
                    break
            ended.set()

        events = asyncio.create_task(watch_events())
        speech_ms = 0
        quiet_ms = 0
        in_turn = False

        def on_frame(frame: bytes) -> None:
            nonlocal speech_ms, quiet_ms, in_turn
            ms = len(frame) * 500 // audio.sample_rate  # 2 bytes per sample
            if audioop.rms(frame, 2) > SPEECH_RMS:
                if self.barge_in and audio.queued_ms() > 0:
                    # The floor of barge-in: stop on the very first loud frame (no VAD wait), so
                    # what remains is the path caller -> Asterisk -> us -> FLUSH_MEDIA -> caller.
                    audio.flush()
                speech_ms += ms
                quiet_ms = 0
                if speech_ms >= self.start_ms:
                    in_turn = True
                return
            quiet_ms += ms
            if quiet_ms >= 60:
                speech_ms = 0  # a click or a short burst is not a turn
            if in_turn and quiet_ms >= self.end_silence_ms:
                in_turn = False
                if audio.queued_ms() > 0:
                    return  # still talking: no barge-in in this agent
                self.turns += 1
                audio.play(self.reply, mark=f"reply-{self.turns}")
                t = audio.clock_ms()
                report.say("agent", "<reply>", t, t + reply_ms)

        try:
            # Frames pushed by the media reader where the session offers it, as our voice agent does.
            await deliver_frames(audio, on_frame)
        finally:
            await asyncio.wait({events}, timeout=2.0)
            events.cancel()


class MinimalAgentFactory:
    """``AgentFactory``: one agent per call, audio synthesised once per process."""

    def __init__(self, greeting_s: float = 1.5, reply_s: float = 1.0, barge_in: bool = False) -> None:
        self.barge_in = barge_in
        self.greeting = vowel_pcm(greeting_s, (120.0, 160.0))
        self.reply = vowel_pcm(reply_s, (150.0, 110.0))
        self.built = 0

    def __call__(self, ctx: CallContext) -> MinimalAgent:
        self.built += 1
        return MinimalAgent(self.greeting, self.reply, barge_in=self.barge_in)


def voice_workflow(greeting: str | None = None) -> dict[str, Any]:
    """A workflow for the real voice agent whose replies never end the call: every caller sentence
    is unmatched, so the start node's reprompt is said (a fixed text: served from the TTS cache
    after the first call)."""
    return {
        "nodes": [
            {
                "id": "start",
                "type": "start",
                "greeting": greeting or "Hello, thanks for calling. How can I help you today?",
                "reprompt": "Okay, tell me more.",
            },
            {"id": "bye", "type": "end", "say": "Goodbye."},
        ],
        # Two edges: a start node with a single edge is followed right after the greeting.
        "edges": [
            {"id": "e1", "from": "start", "to": "bye", "keywords": ["goodbye"]},
            {"id": "e2", "from": "start", "to": "bye", "keywords": ["hang up"]},
        ],
    }
