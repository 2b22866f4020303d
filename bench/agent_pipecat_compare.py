"""The measurements behind "own pipeline, not pipecat" (see vr3ai/agent/pipeline.py and bench/README.md).

Same audio, same models, stage by stage, offline (no real-time playback needed):

  vad   pipecat 1.14 ``SileroVADAnalyzer`` (default VADParams: confidence 0.7, start 0.2 s,
        stop 0.2 s, min_volume 0.6) vs our ``SileroVad`` (probability only, start 96 ms,
        stop 200 ms): speech onset -> "speaking", last speech sample -> turn end
  stt   faster-whisper called the way pipecat's ``WhisperSTTService`` calls it
        (``model.transcribe(audio, language=...)``: 30 s window, beam 5, temperature fallback)
        vs our ``WhisperSTT`` (short encoder window, beam 5): latency and word accuracy
  load  what a per-call pipecat pipeline pays in its service constructors: Whisper model load

Usage: python -m bench.agent_pipecat_compare
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from tests.fakes.call_audio import speech_bounds
from tests.unit.agent.agent_helpers import caller_speech
from vr3ai.agent.services.audio import pcm16_to_float, resample_float
from vr3ai.agent.services.vad import SileroModel, SileroVad, VadParams
from vr3ai.agent.services.whisper import WhisperSTT, tiny_en_model_path

SENTENCES = [
    "I would like to book an appointment for tomorrow.",
    "What are your opening hours on Saturday?",
    "Can I speak to someone about my bill?",
    "My name is John Smith and I live in Boston.",
    "Yes please.",
    "Could you send me a confirmation by email?",
    "I think there is a mistake on my invoice.",
    "Please cancel my subscription.",
    "How much does the premium plan cost per month?",
    "Transfer me to an operator please.",
]


def words(s: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", s.lower()).split()


def wer(ref: str, hyp: str) -> tuple[int, int]:
    r, h = words(ref), words(hyp)
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(h)], len(r)


async def vad_section(clips: list[bytes]) -> None:
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.audio.vad.vad_analyzer import VADState

    ours_on, ours_off, pc_on, pc_off = [], [], [], []
    model = SileroModel.shared()
    for pcm in clips:
        a, b = speech_bounds(pcm)
        stream = b"\0\0" * 8000 + pcm + b"\0\0" * 8000
        on_ms, off_ms = 1000 + a / 8, 1000 + b / 8
        vad = SileroVad(model, VadParams())
        got: dict[str, int] = {}
        for i in range(0, len(stream), 320):
            for e in vad.process(stream[i : i + 320]):
                got.setdefault(e.kind, e.at_ms)
                if e.kind == "end":
                    got["end"] = e.at_ms
        ours_on.append(got["start"] - on_ms)
        ours_off.append(got["end"] - off_ms)
        an = SileroVADAnalyzer(sample_rate=8000)
        an.set_sample_rate(8000)
        state, start, end = VADState.QUIET, None, None
        for i in range(0, len(stream), 320):
            s = await an.analyze_audio(stream[i : i + 320])
            t = (i + 320) / 16
            if s == VADState.SPEAKING and start is None:
                start = t
            if start is not None and state != VADState.QUIET and s == VADState.QUIET:
                end = t
            state = s
        if start is not None and end is not None:
            pc_on.append(start - on_ms)
            pc_off.append(end - off_ms)
    med = statistics.median
    print(f"vad  ours:    onset -> speaking {med(ours_on):4.0f} ms (max {max(ours_on):4.0f}); "
          f"speech end -> turn end {med(ours_off):4.0f} ms (max {max(ours_off):4.0f})")
    print(f"vad  pipecat: onset -> speaking {med(pc_on):4.0f} ms (max {max(pc_on):4.0f}); "
          f"speech end -> turn end {med(pc_off):4.0f} ms (max {max(pc_off):4.0f})  "
          f"[+ pipecat's user-turn timer, 0.6 s by default]")


async def stt_section(clips: list[tuple[str, bytes]]) -> None:
    from faster_whisper import WhisperModel

    t0 = time.perf_counter()
    model = WhisperModel(str(tiny_en_model_path()), device="cpu", compute_type="int8", local_files_only=True)
    load_ms = (time.perf_counter() - t0) * 1000
    ours = WhisperSTT()
    await ours.start()
    pc_t, our_t, pc_err, our_err, n_words = [], [], 0, 0, 0
    for ref, pcm in clips:
        audio = resample_float(pcm16_to_float(pcm), 8000, 16000)
        t0 = time.perf_counter()
        segs, _ = model.transcribe(audio, language="en")
        text = "".join(s.text for s in segs if s.no_speech_prob < 0.4)
        pc_t.append((time.perf_counter() - t0) * 1000)
        tr = await ours.transcribe(pcm, 8000)
        our_t.append(float(tr.stt_ms))
        e1, n = wer(ref, text)
        e2, _ = wer(ref, tr.text)
        pc_err, our_err, n_words = pc_err + e1, our_err + e2, n_words + n
    await ours.close()
    print(f"stt  pipecat-style transcribe(): p50 {np.median(pc_t):4.0f} ms  max {max(pc_t):4.0f} ms  "
          f"word acc {100 * (1 - pc_err / n_words):.1f} %")
    print(f"stt  ours (short window, beam 5): p50 {np.median(our_t):4.0f} ms  max {max(our_t):4.0f} ms  "
          f"word acc {100 * (1 - our_err / n_words):.1f} %   ({len(clips)} utterances, digits not normalised)")
    print(f"load Whisper tiny.en load (pipecat: per call, in the service constructor): {load_ms:.0f} ms")


async def main() -> None:
    print(f"load average at start: {os.getloadavg()}")
    clips = [(s, caller_speech(s, v)) for v in ("kal", "slt") for s in SENTENCES]
    await vad_section([c for _, c in clips])
    await stt_section(clips)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
