"""Per-stage cost of the offline voice stack, robust to other load on the shared cores.

On a busy machine end-to-end latencies mostly measure the other jobs. This prints, per stage,
the *minimum* wall time over repeated runs (what the stage takes when it gets the CPU) and the
CPU seconds it burns (which decide how many calls fit on the cores):

  vad     Silero window (model run) and an energy-gated window, per 32 ms of audio
  stt     our WhisperSTT (short window, beam 5) per utterance, vs faster-whisper called like
          pipecat's service (30 s window, beam 5, fallback)
  tts     Piper (worker process) first audio for a 6-word / 15-word sentence; flite per sentence

and an estimate of unloaded voice-to-voice from these parts plus the VAD's turn-end delay, which
is measured on audio (sample time), not wall time.

Usage: python -m bench.agent_stage_cost [--reps 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from tests.fakes.call_audio import speech_bounds
from tests.unit.agent.agent_helpers import caller_speech
from vr3ai.agent.services.audio import pcm16_to_float, resample_float
from vr3ai.agent.services.flite import FliteTTS
from vr3ai.agent.services.piper import PiperTTS
from vr3ai.agent.services.vad import SileroModel, SileroVad, VadParams
from vr3ai.agent.services.whisper import WhisperSTT, tiny_en_model_path

UTTS = [
    "I would like to book an appointment for tomorrow.",
    "What are your opening hours on Saturday?",
    "Yes please.",
    "Can I speak to someone about my bill?",
    "Please cancel my subscription.",
]


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    clips = [caller_speech(u, v) for v in ("kal", "slt") for u in UTTS]

    # VAD: per-window cost, and the turn-end delay in audio time.
    model = SileroModel.shared()
    x = np.zeros((1, 288), np.float32)
    st = np.zeros((2, 1, 128), np.float32)
    best = min(_timeit(lambda: model.infer(x, st), 500) for _ in range(args.reps))
    v = SileroVad(model, VadParams())
    silent = b"\0\0" * 256
    gated = min(_timeit(lambda: v.process(silent), 500) for _ in range(args.reps))
    ends = []
    for pcm in clips:
        _, b = speech_bounds(pcm)
        vad = SileroVad(model, VadParams())
        stream = b"\0\0" * 4000 + pcm + b"\0\0" * 8000
        for i in range(0, len(stream), 320):
            for e in vad.process(stream[i : i + 320]):
                if e.kind == "end":
                    ends.append(e.at_ms - (500 + b / 8))
    vad_end = statistics.median(ends)
    print(f"vad   model window {best * 1e6:5.0f} us (min), gated window {gated * 1e6:4.0f} us; "
          f"last speech -> turn end {vad_end:.0f} ms (median, audio time)")

    # STT
    stt = WhisperSTT()
    await stt.start()
    walls, cpus = [], []
    for pcm in clips:
        w = []
        for _ in range(args.reps):
            c0, t0 = cpu(), time.perf_counter()
            await stt.transcribe(pcm, 8000)
            w.append(time.perf_counter() - t0)
            cpus.append(cpu() - c0)
        walls.append(min(w))
    stt_wall = statistics.median(walls) * 1000
    print(f"stt   ours: {stt_wall:4.0f} ms per utterance (median of per-utterance minima), "
          f"{statistics.median(cpus):.2f} CPU s")
    # The pipecat-style baseline: faster-whisper's own model and transcribe(), as pipecat's service
    # builds it (30 s window, beam 5, temperature fallback), on the same model files.
    from faster_whisper import WhisperModel

    baseline = WhisperModel(
        str(tiny_en_model_path()), device="cpu", compute_type="int8", cpu_threads=2, local_files_only=True
    )
    pw = []
    for pcm in clips[:4]:
        audio = resample_float(pcm16_to_float(pcm), 8000, 16000)
        w = []
        for _ in range(max(2, args.reps // 2)):
            t0 = time.perf_counter()
            segs, _ = baseline.transcribe(audio, language="en")
            list(segs)
            w.append(time.perf_counter() - t0)
        pw.append(min(w))
    print(f"stt   pipecat-style transcribe(): {statistics.median(pw) * 1000:4.0f} ms per utterance")
    await stt.close()

    # TTS
    piper = PiperTTS(workers=1)
    await piper.start()
    pid = piper.worker_pids[0]
    res = {}
    for label, text in (("6 words", "Let me help you with that."),
                        ("15 words", "Thank you for calling, your appointment is confirmed for tomorrow at three.")):
        w, c = [], []
        for _ in range(args.reps):
            c0, t0 = proc_cpu(pid), time.perf_counter()
            async for _chunk in piper.stream(text):
                w.append(time.perf_counter() - t0)
                break
            await asyncio.sleep(0.05)
            c.append(proc_cpu(pid) - c0)
        res[label] = min(w) * 1000
        print(f"tts   piper first audio, {label}: {min(w) * 1000:4.0f} ms (min), {statistics.median(c):.2f} CPU s")
    await piper.close()
    fl = FliteTTS("slt")
    w = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        await fl.synthesize("Let me help you with that.")
        w.append(time.perf_counter() - t0)
    print(f"tts   flite slt, 6 words: {min(w) * 1000:4.0f} ms (min)")

    # Estimate: with an idle STT pool the speculative STT starts 32 ms into the pause, i.e.
    # ~(vad_end - 200 + 32) ms after the last speech; the reply needs max(turn end, STT done) +
    # first audio.
    spec_start = vad_end - 200 + 32
    for label, tts in (("cached reply", 0.0), ("Piper, 6-word first sentence", res["6 words"])):
        est = max(vad_end, spec_start + stt_wall) + tts
        print(f"estimate unloaded voice-to-voice, {label}: {est:4.0f} ms")
    print(f"load average at end: {os.getloadavg()}")


def _timeit(fn: object, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - t0) / n


if __name__ == "__main__":
    asyncio.run(main())
