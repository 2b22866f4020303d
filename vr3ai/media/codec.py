"""G.711 u-law <-> PCM16 with numpy lookup tables, and ``audioop`` for the per-frame decode.

Tables make both directions one vectorised indexing operation, available on every Python. On the
hot path, decoding each 20 ms caller frame, numpy's array set-up dominates 160 samples, and
``audioop`` (C, bit-identical output: checked over all 256 codes in the unit tests) is an order of
magnitude faster (bench/README.md, "Why the media path is built this way"), so it is used where it
exists: the stdlib up to 3.12, the ``audioop-lts`` backport
after. Encoding stays on the tables (it runs once per utterance, and audioop rounds a few of the
65,536 inputs differently).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

_audioop: Any
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop as _audioop
except ImportError:  # pragma: no cover - Python >= 3.13 without audioop-lts
    _audioop = None

_BIAS = 0x84
_CLIP = 32635


def _build_decode() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    sample = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -sample, sample).astype("<i2")


def _build_encode() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int32)
    sign = np.where(pcm < 0, 0x80, 0)
    mag = np.minimum(np.abs(pcm), _CLIP) + _BIAS
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    table: np.ndarray = (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)
    return table


ULAW_TO_PCM = _build_decode()
PCM_TO_ULAW = _build_encode()  # index: sample + 32768
ULAW_SILENCE = 0xFF


def _ulaw_to_pcm16_np(data: bytes) -> bytes:
    return ULAW_TO_PCM[np.frombuffer(data, dtype=np.uint8)].tobytes()


def _ulaw_to_pcm16_c(data: bytes) -> bytes:
    return _audioop.ulaw2lin(data, 2)  # type: ignore[no-any-return]


ulaw_to_pcm16: Callable[[bytes], bytes] = _ulaw_to_pcm16_c if _audioop is not None else _ulaw_to_pcm16_np


def pcm16_to_ulaw(data: bytes) -> bytes:
    samples = np.frombuffer(data, dtype="<i2").astype(np.int32) + 32768
    return PCM_TO_ULAW[samples].tobytes()


# --- A-law and the wire-format table -------------------------------------------------------------
# A-law is the G.711 twin some trunks prefer; supporting it costs two more 64 KiB lookup tables and
# keeps the session format-agnostic. Algorithm: ITU-T G.711 (as in the classic Sun reference code).

_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _build_alaw_decode() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where((a & 0x80) != 0, t, -t).astype("<i2")


def _build_alaw_encode() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_ALAW_SEG_END, mag, side="left").astype(np.int32)
    shift = np.where(seg < 2, 1, seg)
    aval = (np.minimum(seg, 7) << 4) | ((mag >> shift) & 0x0F)
    aval = np.where(seg >= 8, 0x7F, aval)
    return ((aval ^ mask) & 0xFF).astype(np.uint8)


ALAW_TO_PCM = _build_alaw_decode()
PCM_TO_ALAW = _build_alaw_encode()  # index: sample + 32768
ALAW_SILENCE = 0xD5


def alaw_to_pcm16(data: bytes) -> bytes:
    return ALAW_TO_PCM[np.frombuffer(data, dtype=np.uint8)].tobytes()


def pcm16_to_alaw(data: bytes) -> bytes:
    samples = np.frombuffer(data, dtype="<i2").astype(np.int32) + 32768
    return PCM_TO_ALAW[samples].tobytes()


def _identity(data: bytes) -> bytes:
    return data


class WireFormat:
    """One chan_websocket media format: how its bytes map to the PCM16 seam.

    ``slin*`` is already PCM16 in host order, which is little-endian on every platform Asterisk
    ships for (x86-64, arm64), so it passes through unchanged.
    """

    __slots__ = ("bytes_per_sample", "decode", "encode", "name", "sample_rate", "silence_byte")

    def __init__(
        self,
        name: str,
        sample_rate: int,
        bytes_per_sample: int,
        silence_byte: int,
        decode: Callable[[bytes], bytes],
        encode: Callable[[bytes], bytes],
    ) -> None:
        self.name = name
        self.sample_rate = sample_rate
        self.bytes_per_sample = bytes_per_sample
        self.silence_byte = silence_byte
        self.decode = decode
        """Wire bytes -> PCM16 LE."""
        self.encode = encode
        """PCM16 LE (even length) -> wire bytes."""

    def bytes_for_ms(self, ms: float) -> int:
        return round(ms * self.sample_rate / 1000) * self.bytes_per_sample

    def ms_for_bytes(self, nbytes: int) -> float:
        return nbytes * 1000.0 / (self.sample_rate * self.bytes_per_sample)

    def silence(self, nbytes: int) -> bytes:
        return bytes([self.silence_byte]) * nbytes

    def __repr__(self) -> str:
        return f"WireFormat({self.name!r}, {self.sample_rate} Hz)"


_SLIN_RATES = {
    "slin": 8000,
    "slin12": 12000,
    "slin16": 16000,
    "slin24": 24000,
    "slin32": 32000,
    "slin44": 44100,
    "slin48": 48000,
    "slin96": 96000,
    "slin192": 192000,
}

WIRE_FORMATS: dict[str, WireFormat] = {
    "ulaw": WireFormat("ulaw", 8000, 1, ULAW_SILENCE, ulaw_to_pcm16, pcm16_to_ulaw),
    "alaw": WireFormat("alaw", 8000, 1, ALAW_SILENCE, alaw_to_pcm16, pcm16_to_alaw),
    **{name: WireFormat(name, rate, 2, 0, _identity, _identity) for name, rate in _SLIN_RATES.items()},
}


def wire_format(name: str) -> WireFormat | None:
    """The format Asterisk named in MEDIA_START, or None if we cannot re-frame it (g722, opus, ...)."""
    return WIRE_FORMATS.get(name.strip().lower())
