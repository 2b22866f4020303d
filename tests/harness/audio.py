"""Audio helpers for the real-Asterisk harness: G.711 u-law, WAV I/O, flite speech, tones and
energy-based segment analysis.

The harness keeps its own u-law codec on purpose: it is the oracle the platform's codec is
checked against, so it must not share code with it.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

RATE = 8000
FRAME_SAMPLES = 160  # 20 ms at 8 kHz: chan_websocket's ptime for ulaw
FRAME_S = FRAME_SAMPLES / RATE
ULAW_SILENCE = 0xFF  # u-law code for 0 (0x7F is "negative zero", also silent)

FLITE = "/usr/bin/flite"
_CACHE = Path(os.environ.get("VR3AI_HARNESS_CACHE", Path.home() / ".cache" / "vr3ai" / "harness"))

# ---------------------------------------------------------------------------- G.711 u-law

_BIAS = 0x84
_CLIP = 32635
# exponent = index of the highest set bit of (|x| + bias) >> 7; a table avoids float log2
# rounding at exact powers of two.
_EXP_LUT = np.array([max(0, i.bit_length() - 1) for i in range(256)], dtype=np.int32)


def _decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    sample = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -sample, sample).astype(np.int16)


_ULAW_DECODE = _decode_table()


def lin2ulaw(pcm: np.ndarray) -> bytes:
    """PCM16 samples -> u-law bytes (ITU-T G.711)."""
    x = np.asarray(pcm).astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    mag = np.minimum(np.abs(x), _CLIP) + _BIAS
    exponent = _EXP_LUT[mag >> 7]
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def ulaw2lin(data: bytes) -> np.ndarray:
    """u-law bytes -> PCM16 samples."""
    return _ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


# ---------------------------------------------------------------------------- WAV I/O


def read_wav(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """(mono int16 samples, sample rate). Multi-channel files are averaged to mono."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        n_ch = w.getnchannels()
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if n_ch > 1:
        data = data.reshape(-1, n_ch).mean(axis=1).astype(np.int16)
    return data.astype(np.int16), rate


def write_wav(path: str | os.PathLike[str], pcm: np.ndarray, rate: int = RATE) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(pcm, dtype="<i2").tobytes())
    return path


def resample(pcm: np.ndarray, rate_in: int, rate_out: int = RATE) -> np.ndarray:
    if rate_in == rate_out:
        return np.asarray(pcm, dtype=np.int16)
    out = soxr.resample(np.asarray(pcm, dtype=np.float32) / 32768.0, rate_in, rate_out, quality="HQ")
    return np.clip(np.round(out * 32768.0), -32768, 32767).astype(np.int16)


def load_8k(path: str | os.PathLike[str]) -> np.ndarray:
    """Any 16-bit WAV -> 8 kHz mono int16."""
    pcm, rate = read_wav(path)
    return resample(pcm, rate, RATE)


def ensure_8k_wav(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Return a path to an 8 kHz mono 16-bit version of `path` (the input itself if it already is)."""
    path = Path(path)
    with wave.open(str(path), "rb") as w:
        ok = w.getframerate() == RATE and w.getnchannels() == 1 and w.getsampwidth() == 2
    if ok:
        return path
    target = Path(out) if out else _CACHE / "wav8k" / f"{_digest(path.read_bytes())}.wav"
    if not target.exists():
        write_wav(target, load_8k(path))
    return target


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# ---------------------------------------------------------------------------- synthesis


def synth_speech(text: str, path: str | os.PathLike[str] | None = None, *, voice: str = "slt") -> Path:
    """Speak `text` with flite into an 8 kHz mono 16-bit WAV (cached by text and voice).

    flite's slt voice renders at 16 kHz; it is resampled with soxr so the file is exactly what
    Playback() streams to a ulaw channel without another resampling step inside Asterisk.
    """
    if not Path(FLITE).exists() and shutil.which("flite") is None:
        raise FileNotFoundError("flite is not installed (apt-get install flite)")
    key = _digest(f"{voice}\0{text}".encode())
    cached = _CACHE / "speech" / f"{voice}-{key}.wav"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="vr3ai-flite-") as tmp:
            raw = Path(tmp) / "raw.wav"
            flite = FLITE if Path(FLITE).exists() else "flite"
            subprocess.run([flite, "-voice", voice, "-t", text, "-o", str(raw)], check=True,
                           capture_output=True, timeout=60)
            pcm = load_8k(raw)
            partial = cached.with_suffix(".partial.wav")
            write_wav(partial, pcm)
            partial.replace(cached)  # atomic: concurrent sessions never read a half-written file
    if path is None:
        return cached
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, dest)
    return dest


def speech_pcm(text: str, *, voice: str = "slt") -> np.ndarray:
    return read_wav(synth_speech(text, voice=voice))[0]


def tone(freq: float, secs: float, amp: float = 8000.0, rate: int = RATE) -> np.ndarray:
    """Sine tone with 5 ms raised-cosine edges (hard edges splatter energy into other bins)."""
    n = round(secs * rate)
    t = np.arange(n) / rate
    x = amp * np.sin(2 * math.pi * freq * t)
    ramp = min(n // 2, int(0.005 * rate))
    if ramp > 0:
        w = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, ramp))
        x[:ramp] *= w
        x[-ramp:] *= w[::-1]
    return np.round(x).astype(np.int16)


def silence(secs: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(round(secs * rate), dtype=np.int16)


def concat(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(p, dtype=np.int16) for p in parts])


def tone_wav(path: str | os.PathLike[str], freq: float, secs: float, amp: float = 8000.0) -> Path:
    return write_wav(path, tone(freq, secs, amp))


# ---------------------------------------------------------------------------- analysis


def rms_dbfs(pcm: np.ndarray) -> float:
    x = np.asarray(pcm, dtype=np.float64)
    if x.size == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(x * x)))
    return 20 * math.log10(rms / 32768.0) if rms > 0 else -math.inf


def frame_dbfs(pcm: np.ndarray, win: int = FRAME_SAMPLES) -> np.ndarray:
    """RMS level (dBFS) of each consecutive `win`-sample window (a trailing partial one is dropped)."""
    x = np.asarray(pcm, dtype=np.float64)
    n = len(x) // win
    if n == 0:
        return np.zeros(0)
    frames = x[: n * win].reshape(n, win)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    with np.errstate(divide="ignore"):
        return 20 * np.log10(np.maximum(rms, 1e-9) / 32768.0)


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def segments(
    pcm: np.ndarray,
    rate: int = RATE,
    *,
    threshold_dbfs: float = -40.0,
    win_s: float = 0.02,
    min_gap_s: float = 0.3,
    min_len_s: float = 0.06,
) -> list[Segment]:
    """Non-silent stretches of a recording.

    Windows above `threshold_dbfs` are active; gaps shorter than `min_gap_s` are bridged (pauses
    between words belong to one utterance) and stretches shorter than `min_len_s` are dropped
    (clicks, DTMF leakage).
    """
    win = max(1, round(win_s * rate))
    active = frame_dbfs(pcm, win) > threshold_dbfs
    raw: list[list[float]] = []
    for i, on in enumerate(active):
        if not on:
            continue
        t0, t1 = i * win / rate, (i + 1) * win / rate
        if raw and t0 - raw[-1][1] < min_gap_s:
            raw[-1][1] = t1
        else:
            raw.append([t0, t1])
    return [Segment(round(a, 3), round(b, 3)) for a, b in raw if b - a >= min_len_s]


def tone_ratio(pcm: np.ndarray, freq: float, rate: int = RATE) -> float:
    """Share of the window's energy at `freq` (Goertzel-style single-bin DFT), 0..1."""
    x = np.asarray(pcm, dtype=np.float64)
    n = len(x)
    total = float(np.sum(x * x))
    if n == 0 or total <= 0:
        return 0.0
    c = np.exp(-2j * math.pi * freq / rate * np.arange(n))
    return float(min(1.0, abs(np.dot(x, c)) ** 2 * 2 / n / total))


def dominant_freq(pcm: np.ndarray, rate: int = RATE) -> float:
    x = np.asarray(pcm, dtype=np.float64)
    if x.size == 0:
        return 0.0
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


def find_lag(reference: np.ndarray, signal: np.ndarray, rate: int = RATE) -> tuple[float, float]:
    """(lag_s, normalized correlation) of `reference` inside `signal`.

    Positive lag = the reference appears that many seconds into the signal.
    """
    ref = np.asarray(reference, dtype=np.float64)
    sig = np.asarray(signal, dtype=np.float64)
    if len(ref) == 0 or len(sig) < len(ref):
        return 0.0, 0.0
    n = 1 << math.ceil(math.log2(len(sig) + len(ref)))
    corr = np.fft.irfft(np.fft.rfft(sig, n) * np.conj(np.fft.rfft(ref, n)), n)[: len(sig) - len(ref) + 1]
    k = int(np.argmax(corr))
    seg = sig[k : k + len(ref)]
    denom = math.sqrt(float(np.sum(ref * ref)) * float(np.sum(seg * seg)))
    return k / rate, (float(corr[k]) / denom if denom > 0 else 0.0)
