"""flite TTS (Debian ``/usr/bin/flite``): the fallback when Piper is not installed.

Out of process by construction (one short-lived CLI process per sentence): flite's BSD-style
licence would allow linking, but the CLI costs only ~10-70 ms per sentence, needs no binding, and
a crash cannot take the platform down. ``slt`` (16 kHz) was the most intelligible voice after
8 kHz u-law in the reference (100 % with Whisper tiny.en); ``kal`` is native 8 kHz and faster.
Text is passed as the argument of ``-t``, which flite takes verbatim even when it starts with
``-`` (its ``-f`` file mode produced empty audio from pipes here). No shell is involved.
"""

from __future__ import annotations

import asyncio
import shutil

from vr3ai.agent.services.audio import read_wav, resample_pcm16
from vr3ai.agent.services.base import ServiceError, TextToSpeech

FLITE_VOICES = ("slt", "kal", "kal16", "awb", "rms", "awb_time")


def flite_path() -> str | None:
    return shutil.which("flite")


class FliteTTS(TextToSpeech):
    engine = "flite"

    def __init__(self, voice: str = "slt", binary: str | None = None, sample_rate: int = 8000) -> None:
        if voice not in FLITE_VOICES:
            raise ValueError(f"unknown flite voice {voice!r}")
        self.voice = voice
        self.binary = binary or flite_path() or "/usr/bin/flite"
        self.sample_rate = sample_rate

    async def start(self) -> None:
        if shutil.which(self.binary) is None:
            raise ServiceError("flite is not installed (apt-get install flite)")

    async def synthesize(self, text: str) -> bytes:
        text = text.strip()
        if not text:
            return b""
        proc = await asyncio.create_subprocess_exec(
            self.binary,
            "-voice",
            self.voice,
            "-t",
            text,
            "-o",
            "/dev/stdout",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            out, _ = await proc.communicate()
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.kill()
            raise
        if proc.returncode != 0 or not out:
            raise ServiceError(f"flite failed (exit {proc.returncode})")
        pcm, rate = read_wav(out)
        return resample_pcm16(pcm, rate, self.sample_rate)
