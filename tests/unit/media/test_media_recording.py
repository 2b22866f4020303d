"""CallRecorder: time placement, jitter tolerance, WAV layout."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from vr3ai.media.codec import WIRE_FORMATS
from vr3ai.media.recording import CallRecorder

ULAW = WIRE_FORMATS["ulaw"]
LOUD = b"\x80" * 160  # u-law 0x80 = full-scale positive


def _read(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)


def test_jitter_within_tolerance_stays_contiguous(tmp_path: Path) -> None:
    rec = CallRecorder(ULAW, jitter_ms=60)
    t = 1.0
    for i in range(10):
        rec.caller(t + (0.015 if i % 3 == 1 else 0.0), LOUD)  # up to 15 ms late
        t += 0.02
    data = _read(rec.write_wav(tmp_path / "a.wav"))
    loud = np.flatnonzero(np.abs(data[:, 0]) > 1000)
    assert loud[0] == 8000  # starts at 1.0 s
    assert loud[-1] - loud[0] + 1 == 1600  # 200 ms without holes
    assert np.all(data[:, 1] == 0)  # silent agent track


def test_late_frame_opens_a_gap_and_tracks_share_the_timeline(tmp_path: Path) -> None:
    rec = CallRecorder(ULAW, jitter_ms=60)
    rec.caller(0.0, LOUD)
    rec.caller(0.5, LOUD)  # the peer sent nothing for ~0.5 s
    rec.agent(0.25, LOUD)
    rec.agent(0.27, LOUD)
    data = _read(rec.write_wav(tmp_path / "b.wav"))
    left = np.flatnonzero(np.abs(data[:, 0]) > 1000)
    right = np.flatnonzero(np.abs(data[:, 1]) > 1000)
    assert left[0] == 0 and 3990 <= left[-1] <= 4160
    assert np.all(np.abs(data[160:4000, 0]) < 100)
    assert right[0] == 2000 and right[-1] == 2000 + 320 - 1
    assert len(data) == 4000 + 160


def test_empty_recording_and_discard(tmp_path: Path) -> None:
    rec = CallRecorder(ULAW)
    out = rec.write_wav(tmp_path / "sub" / "empty.wav")
    assert out.exists() and len(_read(out)) == 0
    rec2 = CallRecorder(ULAW)
    rec2.caller(0.0, LOUD)
    rec2.discard()
    rec2.caller(1.0, LOUD)  # ignored after discard


def test_slin16_recording(tmp_path: Path) -> None:
    rec = CallRecorder(WIRE_FORMATS["slin16"])
    pcm = (np.ones(320) * 5000).astype("<i2").tobytes()
    rec.caller(0.1, pcm)
    with wave.open(str(rec.write_wav(tmp_path / "w.wav"))) as w:
        assert w.getframerate() == 16000
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert np.flatnonzero(data[:, 0])[0] == 1600
