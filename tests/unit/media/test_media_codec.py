"""G.711 u-law: the fast per-frame decode (audioop) and the table decode agree on every code."""

from __future__ import annotations

import numpy as np

from vr3ai.media import codec


def test_ulaw_decode_paths_agree_on_all_codes() -> None:
    every = bytes(range(256))
    table = codec._ulaw_to_pcm16_np(every)
    assert codec.ulaw_to_pcm16(every) == table
    pcm = np.frombuffer(table, dtype="<i2")
    # G.711 reference points: 0xFF and 0x7F are the two zeros, 0x00/0x80 the extremes.
    assert pcm[0xFF] == 0 and pcm[0x7F] == 0
    assert pcm[0x00] == -32124 and pcm[0x80] == 32124


def test_ulaw_round_trip_is_within_quantisation() -> None:
    x = (np.sin(np.arange(8000) * 0.05) * 20000).astype("<i2")
    back = np.frombuffer(codec.ulaw_to_pcm16(codec.pcm16_to_ulaw(x.tobytes())), dtype="<i2").astype(int)
    err = np.abs(back - x.astype(int))
    assert err.max() <= np.abs(x.astype(int)).max() / 16  # 4-bit mantissa: relative error < 1/16
    assert codec.pcm16_to_ulaw(b"\x00\x00") == bytes([codec.ULAW_SILENCE])
