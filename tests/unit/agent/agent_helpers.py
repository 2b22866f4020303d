"""Shared helpers of the agent tests: caller speech, stub responders, model-free fakes."""

from __future__ import annotations

import asyncio
import functools
import shutil
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from vr3ai.agent.services.audio import read_wav, resample_pcm16
from vr3ai.agent.services.base import SpeechToText, TextToSpeech, Transcript
from vr3ai.workflows.responder import CallerTurn, Hangup, ReplyPart, ResponderState, Say

HAVE_FLITE = shutil.which("flite") is not None


@functools.lru_cache(maxsize=64)
def caller_speech(text: str, voice: str = "kal") -> bytes:
    """The caller's words as PCM16 8 kHz, synthesised by flite (``kal`` is native 8 kHz, so it
    never sounds like the agent's Piper voice)."""
    out = subprocess.run(
        ["flite", "-voice", voice, "-t", text, "-o", "/dev/stdout"], capture_output=True, check=True
    ).stdout
    pcm, rate = read_wav(out)
    return resample_pcm16(pcm, rate, 8000)


def tone(ms: int, freq: float = 300.0, dbfs: float = -12.0, rate: int = 8000) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    amp = 32768 * 10 ** (dbfs / 20)
    return (np.sin(2 * np.pi * freq * t) * amp).astype("<i2").tobytes()


def noise_burst(ms: int, dbfs: float = -10.0, rate: int = 8000, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    amp = 32768 * 10 ** (dbfs / 20)
    return np.clip(rng.standard_normal(rate * ms // 1000) * amp, -32768, 32767).astype("<i2").tobytes()


class StubResponder:
    """A scripted responder: answers "You said <text>." (or a scripted reply) and hangs up on
    "bye". Records every turn."""

    def __init__(
        self,
        greeting: str = "Hello, thanks for calling. How can I help you today?",
        replies: dict[str, list[ReplyPart]] | None = None,
        default: list[ReplyPart] | None = None,
        goodbye: str = "Goodbye, have a nice day!",
    ) -> None:
        self.state = ResponderState("start", node_path=["start"])
        self.greeting = greeting
        self.replies = replies or {}
        self.default = default
        self.goodbye = goodbye
        self.turns: list[CallerTurn] = []
        self.turn_event = asyncio.Event()

    async def opening(self) -> AsyncIterator[ReplyPart]:
        if self.greeting:
            yield Say(self.greeting, fixed=True)

    async def respond(self, turn: CallerTurn) -> AsyncIterator[ReplyPart]:
        self.turns.append(turn)
        self.turn_event.set()
        key = turn.text.lower() if turn.kind == "speech" else f"{turn.kind}:{turn.dtmf}"
        for k, parts in self.replies.items():
            if k in key:
                for p in parts:
                    yield p
                return
        if turn.kind == "speech" and "bye" in key:
            self.state.node_path.append("end")
            yield Say(self.goodbye, fixed=True)
            yield Hangup("caller said goodbye")
            return
        if self.default is not None:
            for p in self.default:
                yield p
            return
        if turn.kind == "speech":
            self.state.variables["last"] = turn.text
            yield Say(f"You said {turn.text.rstrip('.')}. Anything else?")
        elif turn.kind == "dtmf":
            yield Say(f"You pressed {turn.dtmf}.")
        else:
            yield Say("Are you still there?", fixed=True)

    def fixed_texts(self) -> list[str]:
        return [t for t in (self.greeting, self.goodbye, "Are you still there?") if t]

    async def wait_turn(self, n: int, within_s: float = 15.0) -> CallerTurn:
        async with asyncio.timeout(within_s):
            while len(self.turns) < n:
                self.turn_event.clear()
                await self.turn_event.wait()
        return self.turns[n - 1]


# ------------------------------------------------------------------ model-free fakes
class EnergyVadModel:
    """Stands in for ``SileroModel``: 'speech' is a window louder than -20 dBFS, i.e. at least a
    third of it filled with the helpers' -12 dBFS tone (a window that a sound barely touches is
    not speech, as with Silero)."""

    def infer(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        x = window[0, 32:]
        rms = float(np.sqrt(np.mean(x * x)))
        return (0.95 if rms > 0.1 else 0.02), state


class ScriptedSTT(SpeechToText):
    engine = "scripted"

    def __init__(self, texts: list[str], delay_s: float = 0.05) -> None:
        self.texts = list(texts)
        self.delay_s = delay_s
        self.calls: list[int] = []

    async def transcribe(self, pcm: bytes, sample_rate: int) -> Transcript:
        self.calls.append(len(pcm))
        await asyncio.sleep(self.delay_s)
        text = self.texts.pop(0) if self.texts else ""
        return Transcript(text, text, int(self.delay_s * 1000))


class ToneTTS(TextToSpeech):
    """'Speech' of 80 ms per word (a quiet tone), after ``delay_s``."""

    engine = "tone"
    voice = "a"

    def __init__(self, delay_s: float = 0.03, ms_per_word: int = 80) -> None:
        self.delay_s = delay_s
        self.ms_per_word = ms_per_word
        self.texts: list[str] = []

    async def synthesize(self, text: str) -> bytes:
        self.texts.append(text)
        await asyncio.sleep(self.delay_s)
        return tone(self.ms_per_word * max(1, len(text.split())), freq=500, dbfs=-30)


def metric_rows(report: Any, kind: str = "speech") -> list[dict[str, Any]]:
    return [m for m in report.metrics if m.get("kind") == kind]
