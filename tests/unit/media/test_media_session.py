"""MediaSession pacing, marks, flush, flow control, inbound audio and teardown on a virtual clock."""

from __future__ import annotations

import asyncio
import logging
import wave
from pathlib import Path

import numpy as np
import pytest

from vr3ai.media.codec import pcm16_to_ulaw, ulaw_to_pcm16
from vr3ai.media.engine import MediaTuning
from vr3ai.media.interface import CallAudio, CallEnded, Dtmf, HeardPosition, MarkHeard, PushedFrames
from vr3ai.media.protocol import (
    ControlFormat,
    DtmfEnd,
    ErrorEvent,
    FlushMedia,
    GetStatus,
    Hangup,
    MarkMedia,
    MediaMarkProcessed,
    MediaXoff,
    MediaXon,
    Status,
)
from vr3ai.media.session import MediaConfig, MediaFormatError, MediaSession

from .fakes import FakeTransport, Rig, VirtualTime, media_start, settle

SILENCE = b"\xff" * 160


def tone(ms: int, freq: float = 440.0, rate: int = 8000, amp: int = 8000) -> bytes:
    n = rate * ms // 1000
    t = np.arange(n) / rate
    return (np.sin(2 * np.pi * freq * t) * amp).astype("<i2").tobytes()


def ramp(samples: int) -> bytes:
    """Distinct, u-law-exact samples so the audio sent can be compared byte for byte."""
    codes = np.arange(samples) % 120  # avoid 0x7F/0xFF ambiguity (both decode to zero)
    return ulaw_to_pcm16(bytes(codes.astype(np.uint8).tolist()))


def audio_bytes(rig: Rig) -> bytes:
    return b"".join(s.data for s in rig.transport.frames() if s.data != SILENCE)  # type: ignore[misc]


def no_fast_start(**kw: object) -> MediaConfig:
    return MediaConfig(status_interval_s=0, fast_start=False, **kw)  # type: ignore[arg-type]


async def test_is_call_audio() -> None:
    rig = Rig()
    assert isinstance(rig.session, CallAudio)
    assert isinstance(rig.session, HeardPosition)
    assert rig.session.sample_rate == 8000


async def test_silence_streams_when_idle_and_lead_is_bounded() -> None:
    rig = Rig()
    await rig.start()
    assert len(rig.transport.frames()) == 3  # 60 ms lead at once
    for _ in range(100):
        rig.tick()
        assert 40 - 1e-6 <= rig.lead_ms() <= 60 + 20
    frames = rig.transport.frames()
    assert all(f.data == SILENCE for f in frames)
    assert len(frames) == 103  # 2 s of real time + the initial lead, nothing more
    assert rig.session.stats.silence_frames_out == 103
    assert rig.session.stats.skipped_ms == 0
    assert rig.session.stats.max_send_gap_ms == pytest.approx(20, abs=0.01)


async def test_no_silence_when_disabled() -> None:
    rig = Rig(no_fast_start(send_silence=False))
    await rig.start()
    rig.advance(200)
    assert rig.transport.frames() == []
    rig.session.play(ramp(160 * 3))
    rig.advance(200)
    assert len(rig.transport.frames()) == 3
    assert rig.session.stats.skipped_ms == 0  # idle time is not a gap


async def test_whole_frames_only_and_no_padding_between_chunks() -> None:
    rig = Rig(no_fast_start())
    await rig.start()
    pcm = ramp(1001)
    # Odd chunk sizes, including odd byte counts (half samples), all queued before they are due.
    pieces = [pcm[:333], pcm[333:1000], pcm[1000:1601], pcm[1601:]]
    for p in pieces:
        rig.session.play(p)
    rig.advance(400)
    assert all(len(m.data) % 160 == 0 for m in rig.transport.messages())
    sent = audio_bytes(rig)
    expected = pcm16_to_ulaw(pcm)
    # The stream is contiguous: only the very end was padded (when the buffer ran dry).
    assert sent[: len(expected)] == expected
    assert sent[len(expected) :] == b"\xff" * (len(sent) - len(expected))
    assert len(sent) == 7 * 160  # 1001 samples -> 7 frames
    assert rig.session.stats.pad_bytes_out == 7 * 160 - 1001


async def test_pacing_keeps_bounded_lead_and_real_time_rate() -> None:
    cfg = MediaConfig(status_interval_s=0, target_lead_ms=60)
    rig = Rig(cfg)
    await rig.start()
    rig.session.play(tone(5000))
    sent_audio = 0
    for i in range(300):
        rig.tick()
        sent_audio = rig.session.stats.audio_frames_out
        elapsed_ms = (i + 1) * 20
        # Never more than the lead ahead of real time (+ one frame of slack at a tick).
        assert sent_audio * 20 <= elapsed_ms + 60 + 20
        assert rig.lead_ms() <= 80 + 1e-6
    assert sent_audio == 250
    per_tick: dict[float, int] = {}
    for f in rig.transport.frames():
        per_tick[f.at] = per_tick.get(f.at, 0) + 1
    assert max(list(per_tick.values())[1:]) == 1  # steady state: one frame per tick


async def test_stall_skips_instead_of_bursting() -> None:
    rig = Rig(MediaConfig(status_interval_s=0))
    await rig.start()
    rig.session.play(tone(3000))
    rig.advance(200)
    before = len(rig.transport.frames())
    rig.time.t += 0.5  # the event loop stalled for 500 ms: no ticks at all
    rig.clock.tick()
    burst = len(rig.transport.frames()) - before
    assert burst <= 4  # only the lead is rebuilt (60 ms = 3 frames), not 25 frames of "catch-up"
    assert rig.lead_ms() <= 80
    assert rig.session.stats.skipped_ms == pytest.approx(500 - 60, abs=21)
    assert rig.session.stats.late_ticks == 1
    assert rig.session.stats.max_send_gap_ms == pytest.approx(500, abs=1)
    before = len(rig.transport.frames())
    rig.advance(200)
    assert len(rig.transport.frames()) - before == 10  # back to real time
    # No audio was lost: everything is still played, just later.
    rig.advance(3000)
    assert rig.session.stats.audio_frames_out == 150


async def test_short_stall_within_lead_is_absorbed() -> None:
    rig = Rig(MediaConfig(status_interval_s=0, target_lead_ms=60))
    await rig.start()
    rig.session.play(tone(2000))
    rig.advance(100)
    rig.time.t += 0.035  # late tick, but the queue still holds 40..60 ms
    rig.clock.tick()
    assert rig.session.stats.skipped_ms == 0


async def test_mark_padding_order_and_mark_heard() -> None:
    rig = Rig(no_fast_start())
    await rig.start()
    rig.session.play(ramp(100), mark="hello")
    rig.advance(100)
    sent = rig.transport.sent
    audio_idx = next(i for i, s in enumerate(sent) if isinstance(s.data, bytes) and s.data[-160:] != SILENCE)
    message = sent[audio_idx].data
    assert isinstance(message, bytes)
    frame = message[-160:]  # the marked audio ends its message
    assert frame[:100] == pcm16_to_ulaw(ramp(100)) and frame[100:] == b"\xff" * 60
    # MARK_MEDIA goes right after the last frame of the marked audio.
    assert sent[audio_idx + 1].data == "MARK_MEDIA m1"
    assert rig.session.heard_ms_of("hello") is not None
    events = rig.session.events()
    await rig.say(MediaMarkProcessed("m1", "chan-1"))
    ev = await asyncio.wait_for(anext(events), 1)
    assert isinstance(ev, MarkHeard) and ev.name == "hello"
    assert rig.session.heard_ms_of("hello") == 12  # 100 samples, padding not counted
    assert rig.session.stats.marks_heard == 1
    assert rig.session.stats.resyncs == 0  # it came when the model expected it (+ timer phase)
    assert rig.session.heard_ms_of("unknown") is None


async def test_heard_ms_grows_with_playout() -> None:
    rig = Rig(MediaConfig(status_interval_s=0))
    await rig.start()
    rig.session.play(tone(1000), mark="u1")
    assert rig.session.heard_ms_of("u1") == 0
    assert rig.session.queued_ms() == 1000
    rig.advance(400)
    heard = rig.session.heard_ms_of("u1")
    assert heard is not None and 360 <= heard <= 400
    assert rig.session.queued_ms() == 1000 - heard
    rig.advance(1000)
    assert rig.session.heard_ms_of("u1") == 1000
    assert rig.session.queued_ms() == 0


async def test_fast_start_flushes_queued_silence() -> None:
    rig = Rig(MediaConfig(status_interval_s=0))
    await rig.start()
    rig.advance(100)
    n = len(rig.transport.sent)
    rig.session.play(tone(500))
    new = rig.transport.sent[n:]
    assert new[0].data == "FLUSH_MEDIA"
    # Speech goes out in the same instant, not behind 60 ms of silence.
    assert isinstance(new[1].data, bytes) and new[1].data != SILENCE and new[1].at == new[0].at
    assert rig.session.stats.fast_starts == 1
    # The lead is rebuilt from "now", not stacked on the dropped silence.
    assert rig.lead_ms() <= 80


async def test_fast_start_not_used_while_a_mark_is_pending() -> None:
    rig = Rig(MediaConfig(status_interval_s=0))
    await rig.start()
    rig.session.play(tone(40), mark="a")
    rig.advance(200)  # played out per model, but Asterisk has not confirmed the mark yet
    n = len(rig.transport.sent)
    rig.session.play(tone(100), mark="b")
    assert "FLUSH_MEDIA" not in [s.data for s in rig.transport.sent[n:]]


async def test_flush_drops_local_and_remote_queue_and_cancels_marks() -> None:
    rig = Rig(MediaConfig(status_interval_s=0))
    await rig.start()
    events = rig.session.events()
    rig.session.play(tone(2000), mark="long")
    rig.advance(300)
    frames_before = rig.session.stats.audio_frames_out
    dropped = rig.session.flush()
    assert rig.transport.texts()[-1] == "FLUSH_MEDIA"
    heard = rig.session.heard_ms_of("long")
    assert heard is not None and 260 <= heard <= 320
    assert dropped == 2000 - heard
    assert rig.session.stats.marks_cancelled == 1
    # Only the frame being played (if any) is left; the rest of the utterance is gone.
    assert rig.session.queued_ms() <= 20
    rig.advance(500)
    assert rig.session.stats.audio_frames_out == frames_before
    assert rig.session.queued_ms() == 0
    assert rig.session.heard_ms_of("long") == heard  # frozen
    # A late MEDIA_MARK_PROCESSED for the flushed mark must not fire.
    assert "MARK_MEDIA m1" not in rig.transport.texts()
    await rig.say(MediaMarkProcessed("m1"))
    rig.transport.remote_close(1000)
    await settle()
    got = [ev async for ev in events]
    assert not any(isinstance(e, MarkHeard) for e in got)
    assert isinstance(got[-1], CallEnded)


async def test_flush_cancels_mark_already_sent_to_asterisk() -> None:
    rig = Rig(MediaConfig(status_interval_s=0, target_lead_ms=100))
    await rig.start()
    rig.session.play(tone(40), mark="short")
    rig.session.play(tone(1000), mark="next")
    rig.advance(20)
    assert "MARK_MEDIA m1" in rig.transport.texts()
    rig.session.flush()
    await rig.say(MediaMarkProcessed("m1"))
    assert rig.session.stats.marks_heard == 0
    assert rig.session.stats.marks_cancelled == 2


async def test_new_utterance_after_flush() -> None:
    rig = Rig(MediaConfig(status_interval_s=0))
    await rig.start()
    rig.session.play(tone(1000), mark="a")
    rig.advance(200)
    rig.session.flush()
    rig.advance(100)
    rig.session.play(tone(200), mark="b")
    rig.advance(400)
    assert rig.session.heard_ms_of("b") == 200
    assert "MARK_MEDIA m2" in rig.transport.texts()


async def test_xoff_holds_everything_and_xon_resumes_without_loss() -> None:
    rig = Rig(no_fast_start())
    await rig.start()
    pcm = ramp(8000)
    rig.session.play(pcm, mark="all")
    rig.advance(100)
    await rig.say(MediaXoff())
    n = len(rig.transport.frames())
    rig.advance(500)
    assert len(rig.transport.frames()) == n  # nothing, not even silence
    rig.session.play(ramp(800))  # still accepted and queued
    await rig.say(MediaXon())
    assert rig.transport.texts()[-1] == "GET_STATUS"  # re-anchor after flow control
    rig.advance(2000)
    expected = pcm16_to_ulaw(pcm) + pcm16_to_ulaw(ramp(800))
    assert audio_bytes(rig)[: len(expected)] == expected
    assert rig.session.stats.xoff == 1
    assert rig.session.stats.skipped_ms == 0  # flow control is not our stall


async def test_status_resync_when_asterisk_queue_is_longer() -> None:
    rig = Rig(no_fast_start())
    await rig.start()
    rig.session.play(tone(3000))
    rig.advance(100)
    status_task = asyncio.ensure_future(rig.session.get_status())
    await settle()
    assert rig.transport.texts()[-1] == "GET_STATUS"
    # Asterisk says 25 frames (500 ms) are queued, far more than our 60 ms model.
    await rig.say(Status("chan-1", 25, 800, 900, False, False, False))
    status = await status_task
    assert status.queue_length == 25 and rig.session.last_status == status
    assert rig.session.stats.resyncs == 1
    assert rig.lead_ms() == pytest.approx(510, abs=10.5)  # 25 frames + half a frame, in whole frames
    n = rig.session.stats.frames_out
    rig.advance(400)
    assert rig.session.stats.frames_out == n  # wait for Asterisk's queue to come down
    rig.advance(200)
    assert rig.session.stats.frames_out > n


async def test_status_within_threshold_does_not_resync() -> None:
    rig = Rig(no_fast_start())
    await rig.start()
    rig.session.send_command(GetStatus())  # not ours: ignored for resync
    rig.session.play(tone(1000))
    rig.advance(100)
    rig.session._request_status(rig.clock.now())
    await rig.say(Status("chan-1", 2, 800, 900, False, False, False))
    assert rig.session.stats.resyncs == 0


async def test_periodic_status_requests() -> None:
    rig = Rig(MediaConfig(status_interval_s=1.0))
    await rig.start()
    rig.advance(3000)
    assert rig.transport.texts().count("GET_STATUS") == 3


async def test_mark_resync_uses_exact_playout_time() -> None:
    rig = Rig(no_fast_start())
    await rig.start()
    rig.session.play(tone(100), mark="m")
    rig.session.play(tone(2000))
    rig.advance(140)
    # Asterisk confirms the mark 200 ms later than our model predicted: its queue is longer.
    rig.advance(200)
    await rig.say(MediaMarkProcessed("m1"))
    assert rig.session.stats.resyncs == 1


async def test_dtmf_events_both_formats() -> None:
    for fmt in ControlFormat:
        rig = Rig(control_format=fmt)
        await rig.start()
        events = rig.session.events()
        await rig.say(DtmfEnd("5", "chan-1"))
        await rig.say(DtmfEnd("#", "chan-1"))
        a = await asyncio.wait_for(anext(events), 1)
        b = await asyncio.wait_for(anext(events), 1)
        assert isinstance(a, Dtmf) and a.digit == "5"
        assert isinstance(b, Dtmf) and b.digit == "#"
        rig.transport.remote_close()
        await settle()


async def test_json_control_format_for_commands() -> None:
    rig = Rig(MediaConfig(status_interval_s=0), control_format=ControlFormat.JSON)
    await rig.start()
    rig.advance(40)
    rig.session.play(tone(100), mark="x")
    rig.advance(100)
    rig.session.flush()
    cmds = rig.transport.commands()
    assert MarkMedia("m1") in cmds and FlushMedia() in cmds
    assert all(t.startswith("{") for t in rig.transport.texts())
    await rig.say(MediaMarkProcessed("m1", "chan-1"))


async def test_error_event_logged_with_channel(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig()
    await rig.start()
    with caplog.at_level(logging.WARNING, logger="vr3ai.media.session"):
        await rig.say(ErrorEvent("MARK_MEDIA not supported in passthrough mode", "chan-1"))
    rec = next(r for r in caplog.records if "ERROR" in r.getMessage())
    assert rec.channel_id == "chan-1"  # type: ignore[attr-defined]
    assert rig.session.stats.errors == 1
    assert rig.session.last_error == "MARK_MEDIA not supported in passthrough mode"


async def test_garbage_text_does_not_break_reader() -> None:
    rig = Rig()
    await rig.start()
    for junk in ["", "{", "NOPE", '{"event":"X"}', "\x00" * 10, "STATUS queue_length:x"]:
        rig.transport.inbox.put_nowait(junk)
    await rig.say(DtmfEnd("1"))
    events = rig.session.events()
    assert isinstance(await asyncio.wait_for(anext(events), 1), Dtmf)
    assert rig.session.stats.unknown_messages >= 5


async def test_inbound_audio_decoded_and_oldest_dropped_when_agent_is_slow() -> None:
    rig = Rig(MediaConfig(status_interval_s=0, max_inbound_frames=10))
    await rig.start()
    frames = [bytes([i]) * 160 for i in range(25)]
    for f in frames:
        rig.transport.inbox.put_nowait(f)
    await settle()
    await asyncio.sleep(0.01)
    assert rig.session.stats.frames_in == 25
    assert rig.session.stats.frames_in_dropped == 15
    rig.transport.remote_close()
    got = [chunk async for chunk in rig.session.frames()]
    assert got == [ulaw_to_pcm16(f) for f in frames[15:]]  # newest 10, in order
    assert all(len(c) == 320 for c in got)


async def test_reader_drains_socket_while_agent_blocks() -> None:
    rig = Rig(MediaConfig(status_interval_s=0, max_inbound_frames=5))
    await rig.start()
    for _ in range(1000):
        rig.transport.inbox.put_nowait(SILENCE)
    await asyncio.sleep(0.05)
    assert rig.transport.inbox.empty()  # never stalled by a consumer that does not read
    assert rig.session.stats.frames_in == 1000


async def test_remote_close_ends_everything() -> None:
    rig = Rig()
    await rig.start()
    frames_iter = rig.session.frames()
    events = rig.session.events()
    rig.transport.remote_close(1000)
    info = await asyncio.wait_for(rig.session.closed, 1)
    assert info.code == 1000 and info.initiator == "remote" and info.reason == "remote:1000"
    assert [c async for c in frames_iter] == []
    got = [e async for e in events]
    assert len(got) == 1 and isinstance(got[0], CallEnded) and got[0].reason == "remote:1000"
    assert rig.task is not None and (await rig.task) == info
    n = len(rig.transport.sent)
    rig.session.play(tone(100))
    rig.advance(100)
    assert len(rig.transport.sent) == n  # nothing is sent after close
    assert await rig.session.recording is None


async def test_hangup_sends_hangup_then_closes() -> None:
    rig = Rig()
    await rig.start()
    events = rig.session.events()
    await rig.session.hangup("goodbye")
    assert rig.transport.commands()[-1] == Hangup()
    assert rig.transport.closed_with == 1000
    info = await asyncio.wait_for(rig.session.closed, 1)
    assert info.initiator == "local" and info.reason == "hangup:goodbye" and info.code == 1000
    got = [e async for e in events]
    assert isinstance(got[-1], CallEnded) and got[-1].reason == "hangup:goodbye"
    await rig.session.hangup("again")  # idempotent
    assert rig.transport.commands().count(Hangup()) == 1


async def test_local_close_without_hangup() -> None:
    rig = Rig()
    await rig.start()
    await rig.session.close(1000, "caller left")
    info = await asyncio.wait_for(rig.session.closed, 1)
    assert info.reason == "local:caller left"
    assert Hangup() not in rig.transport.commands()


async def test_close_before_run_finishes_session() -> None:
    rig = Rig()
    await rig.session.hangup("early")
    assert rig.session.closed.done()


async def test_reader_error_closes_with_1011() -> None:
    time = VirtualTime()
    from vr3ai.media.clock import MediaClock

    class Boom(FakeTransport):
        async def receive(self) -> str | bytes | None:
            raise ValueError("boom")

    tr = Boom(time)
    session = MediaSession(tr, media_start(), clock=MediaClock(time_fn=time, autostart=False))
    info = await session.run()
    assert info.initiator == "error" and tr.closed_with == 1011


async def test_cancelled_reader_still_finishes() -> None:
    rig = Rig()
    await rig.start()
    assert rig.task is not None
    rig.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rig.task
    assert rig.session.closed.done()


async def test_unsupported_formats() -> None:
    time = VirtualTime()
    from vr3ai.media.clock import MediaClock

    clock = MediaClock(time_fn=time, autostart=False)
    with pytest.raises(MediaFormatError):
        MediaSession(FakeTransport(time), media_start(fmt="opus", frame=0), clock=clock)
    with pytest.raises(MediaFormatError):
        MediaSession(FakeTransport(time), media_start(fmt="g722", frame=160), clock=clock)
    with pytest.raises(MediaFormatError):
        MediaSession(FakeTransport(time), media_start(fmt="slin16", frame=641), clock=clock)


@pytest.mark.parametrize(("fmt", "frame", "rate"), [("alaw", 160, 8000), ("slin", 320, 8000), ("slin16", 640, 16000)])
async def test_other_formats(fmt: str, frame: int, rate: int) -> None:
    rig = Rig(no_fast_start(), fmt=fmt, frame=frame)
    await rig.start()
    assert rig.session.sample_rate == rate
    rig.session.play(tone(100, rate=rate), mark="t")
    rig.advance(300)
    assert all(len(m.data) % frame == 0 for m in rig.transport.messages())
    assert {len(f.data) for f in rig.transport.frames(frame)} == {frame}
    assert rig.session.heard_ms_of("t") == 100
    rig.transport.inbox.put_nowait(b"\x01\x00" * (frame // 2) if fmt.startswith("slin") else b"\xd5" * frame)
    await settle()
    chunk = await asyncio.wait_for(anext(rig.session.frames()), 1)
    assert len(chunk) == 2 * (frame if fmt == "alaw" else frame // 2)


async def test_recording_places_both_tracks_on_one_timeline(tmp_path: Path) -> None:
    path = tmp_path / "rec" / "call.wav"
    rig = Rig(MediaConfig(status_interval_s=0), recording_path=str(path))
    await rig.start()
    loud = pcm16_to_ulaw((np.ones(160) * 10000).astype("<i2").tobytes())
    # Caller talks for 200 ms from 0.5 s, arriving with jitter; the agent answers at ~1.0 s for
    # 300 ms; the caller talks again at ~2.0 s.
    rig.advance(500)
    for i in range(10):
        rig.time.t += 0.003 if i % 2 else 0.0
        await rig.audio(loud)
        rig.advance(20)
    rig.advance(280)
    play_at = rig.time.t - 1000.0
    rig.session.play(tone(300, amp=12000), mark="a")
    rig.advance(1000)
    second_at = rig.time.t - 1000.0
    for _ in range(5):
        await rig.audio(loud)
        rig.advance(20)
    rig.advance(200)
    rig.transport.remote_close()
    await rig.session.closed
    out = await asyncio.wait_for(rig.session.recording, 5)
    assert out == path and path.exists()
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    left, right = np.abs(data[:, 0].astype(int)), np.abs(data[:, 1].astype(int))

    def active(track: np.ndarray) -> list[tuple[float, float]]:
        win = 80  # 10 ms
        loud_w = [track[i : i + win].max() > 2000 for i in range(0, len(track) - win, win)]
        spans, start = [], None
        for i, on in enumerate([*loud_w, False]):
            if on and start is None:
                start = i
            elif not on and start is not None:
                spans.append((start * 0.01, i * 0.01))
                start = None
        return spans

    caller_spans = active(left)
    agent_spans = active(right)
    assert len(caller_spans) == 2
    assert caller_spans[0][0] == pytest.approx(0.5, abs=0.03)
    assert caller_spans[0][1] - caller_spans[0][0] == pytest.approx(0.2, abs=0.03)
    assert caller_spans[1][0] == pytest.approx(second_at, abs=0.02)
    assert len(agent_spans) == 1
    # Fast start: the agent audio plays right after the frame already being played.
    assert agent_spans[0][0] == pytest.approx(play_at + 0.02, abs=0.02)
    assert agent_spans[0][1] - agent_spans[0][0] == pytest.approx(0.3, abs=0.03)


async def test_stats_as_dict() -> None:
    rig = Rig()
    await rig.start()
    rig.advance(100)
    d = rig.session.stats.as_dict()
    assert d["frames_out"] == 8 and d["silence_frames_out"] == 8


async def test_long_utterance_survives_buffer_compaction() -> None:
    rig = Rig(no_fast_start())
    await rig.start()
    pcm = ramp(8000 * 12)  # 96 KB of u-law: the send buffer compacts on the way
    for i in range(0, len(pcm), 3202):
        rig.session.play(pcm[i : i + 3202])
    rig.advance(12_500)
    expected = pcm16_to_ulaw(pcm)
    assert audio_bytes(rig)[: len(expected)] == expected
    assert rig.session.queued_ms() == 0


async def test_hangup_is_bounded_when_the_peer_never_completes_the_close() -> None:
    class Wedged(FakeTransport):
        async def close(self, code: int = 1000, reason: str = "") -> None:
            self.closed_with = code
            await asyncio.Event().wait()  # a send blocked on a peer that stopped reading

    time = VirtualTime()
    from vr3ai.media.clock import MediaClock

    tr = Wedged(time)
    session = MediaSession(
        tr, media_start(), config=MediaConfig(close_grace_s=0.05), clock=MediaClock(time_fn=time, autostart=False)
    )
    reader = asyncio.ensure_future(session.run())
    await settle()
    events = session.events()
    await asyncio.wait_for(session.hangup("bye"), 1)
    info = await asyncio.wait_for(reader, 1)  # run() returns normally, it is not cancelled
    assert info.reason == "hangup:bye" and info.initiator == "local"
    assert tr.commands()[-1] == Hangup()
    got = [e async for e in events]
    assert isinstance(got[-1], CallEnded)


async def test_odd_sized_16bit_frame_is_trimmed_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "odd.wav"
    rig = Rig(MediaConfig(status_interval_s=0), fmt="slin", frame=320, recording_path=str(path))
    await rig.start()
    tone_frame = np.full(160, 1000, dtype="<i2").tobytes()
    await rig.audio(b"\x01" * 321)
    for _ in range(25):
        await rig.audio(tone_frame)
        rig.advance(20)
    chunks = [await anext(rig.session.frames()) for _ in range(26)]
    assert len(chunks[0]) == 320 and all(c == tone_frame for c in chunks[1:])
    rig.transport.remote_close()
    assert await rig.session.recording == path
    with wave.open(str(path)) as w:
        left = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)[:, 0]
    assert int((left == 1000).sum()) == 160 * 25


@pytest.mark.parametrize(
    ("fmt", "size", "ptime"),
    [("ulaw", 1_000_000, 20), ("ulaw", 8, 1), ("ulaw", 160, 40), ("slin16", 8000, 250)],
)
async def test_absurd_or_inconsistent_frame_sizes_are_refused(fmt: str, size: int, ptime: int) -> None:
    time = VirtualTime()
    from vr3ai.media.clock import MediaClock

    with pytest.raises(MediaFormatError):
        MediaSession(
            FakeTransport(time),
            media_start(fmt=fmt, frame=size, ptime=ptime),
            clock=MediaClock(time_fn=time, autostart=False),
        )


async def test_ptime_zero_falls_back_to_frame_size() -> None:
    time = VirtualTime()
    from vr3ai.media.clock import MediaClock

    s = MediaSession(
        FakeTransport(time), media_start(frame=240, ptime=0), clock=MediaClock(time_fn=time, autostart=False)
    )
    assert s.frame_s == pytest.approx(0.03)


async def test_get_status_fails_cleanly_when_the_session_ends() -> None:
    from vr3ai.media.session import MediaSessionClosed

    rig = Rig()
    await rig.start()
    pending = asyncio.ensure_future(rig.session.get_status(within_s=5))
    await settle()
    rig.transport.remote_close()
    with pytest.raises(MediaSessionClosed):
        await pending
    with pytest.raises(MediaSessionClosed):
        await rig.session.get_status()
    with pytest.raises(TimeoutError):  # callers that only expect a timeout are served too
        await rig.session.get_status()


# ------------------------------------------------------------------------------------------------ listen()


async def test_listen_pushes_frames_in_order_including_those_queued_before() -> None:
    rig = Rig()
    await rig.start()
    assert isinstance(rig.session, PushedFrames)
    early, later = bytes(range(160)), bytes(range(50, 210))
    await rig.audio(early)  # arrives before the agent listens: queued, delivered first
    got: list[bytes] = []
    listening = asyncio.ensure_future(rig.session.listen(got.append))
    await settle()
    assert got == [ulaw_to_pcm16(early)]
    await rig.audio(later)
    # Delivered by the reader itself, before any other task ran: no wake-up per frame.
    assert got == [ulaw_to_pcm16(early), ulaw_to_pcm16(later)]
    with pytest.raises(RuntimeError):
        await rig.session.listen(got.append)  # one listener at a time
    assert not listening.done()
    rig.transport.remote_close(1000)
    await asyncio.wait_for(listening, 2)  # returns when the call's audio ends
    assert listening.result() is None


async def test_listen_handler_failure_ends_listen_not_the_call() -> None:
    rig = Rig()
    await rig.start()
    seen: list[bytes] = []

    def on_frame(pcm: bytes) -> None:
        seen.append(pcm)
        if len(seen) == 2:
            raise ValueError("agent bug")

    listening = asyncio.ensure_future(rig.session.listen(on_frame))
    await settle()
    for i in range(4):
        await rig.audio(bytes([i]) * 160)
    with pytest.raises(ValueError, match="agent bug"):
        await asyncio.wait_for(listening, 2)
    assert len(seen) == 2  # nothing after the failure
    # The session goes on: silence still flows, later frames queue again for a new consumer.
    before = rig.session.stats.frames_out
    rig.advance(100)
    assert rig.session.stats.frames_out > before
    assert not rig.session.closed.done()
    frames = rig.session.frames()
    for i in (2, 3):
        assert await asyncio.wait_for(anext(frames), 1) == ulaw_to_pcm16(bytes([i]) * 160)


async def test_listen_on_an_ended_session_returns_after_the_backlog() -> None:
    rig = Rig()
    await rig.start()
    await rig.audio(b"\x01" * 160)
    rig.transport.remote_close(1000)
    await rig.session.closed
    got: list[bytes] = []
    await asyncio.wait_for(rig.session.listen(got.append), 1)
    assert got == [ulaw_to_pcm16(b"\x01" * 160)]


async def test_recording_agent_track_runs_to_the_last_silence_played(tmp_path: Path) -> None:
    """The session hands the recorder only agent audio; the silence it streams around it must still
    be on the agent track, up to where it stopped (as if every silence frame had been recorded)."""
    path = tmp_path / "quiet.wav"
    rig = Rig(no_fast_start(), recording_path=str(path))
    await rig.start()
    rig.advance(200)
    rig.session.play(tone(100, amp=12000), mark="a")
    rig.advance(1800)
    rig.transport.remote_close()
    await rig.session.closed
    await asyncio.wait_for(rig.session.recording, 5)
    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    # Silence frames streamed for 2 s of ticks; the first 60 ms lead was queued at t=0.
    played_s = rig.session.stats.frames_out * 0.02
    assert len(data) / 8000 == pytest.approx(played_s, abs=0.061)
    right = np.abs(data[:, 1].astype(int))
    loud = np.flatnonzero(right > 2000)
    assert loud.size and loud[-1] / 8000 < 0.45
    assert right[int(0.5 * 8000) :].max() == 0
    assert data[:, 0].max() == 0  # the caller said nothing


async def test_paired_sends_halve_the_messages_keep_the_lowest_lead_and_real_time() -> None:
    """From ``paired_sends_from`` sessions on the clock, the queue is refilled two frames at a time
    every other tick: half the messages, never less lead at a tick than one frame at a time
    (target less a frame), real-time rate, and speech still starts at once (fast start)."""
    cfg = MediaConfig(status_interval_s=0, target_lead_ms=60)
    rig = Rig(cfg, tuning=MediaTuning(paired_sends_from=1))
    await rig.start()
    leads = []
    for _ in range(100):
        rig.tick()
        leads.append(rig.lead_ms())
    assert min(leads) >= 40 - 1e-6 and max(leads) <= 80 + 1e-6
    messages = rig.transport.messages()
    steady = messages[1:]  # the first message is the initial lead
    assert all(len(m.data) == 320 for m in steady), [len(m.data) for m in steady]
    assert len({round(m.at, 6) for m in steady}) == len(steady)  # one message per refill tick
    assert 48 <= len(steady) <= 51  # 100 ticks: one message every other tick
    frames = rig.transport.frames()
    assert 2000 <= (len(frames) - 3) * 20 <= 2060  # real time, nothing skipped or doubled
    assert rig.session.stats.skipped_ms == 0
    # Speech starts at once, the whole lead in one message.
    n = len(rig.transport.sent)
    rig.session.play(tone(1000))
    new = rig.transport.sent[n:]
    assert new[0].data == "FLUSH_MEDIA"
    assert isinstance(new[1].data, bytes) and new[1].data[:160] != SILENCE and new[1].at == new[0].at
    for _ in range(60):
        rig.tick()
        assert 40 - 1e-6 <= rig.lead_ms() <= 80 + 1e-6
    audio = [f.data for f in rig.transport.frames() if f.data != SILENCE]
    assert b"".join(audio)[: len(pcm16_to_ulaw(tone(1000)))] == pcm16_to_ulaw(tone(1000))


async def test_paired_sends_only_from_the_threshold() -> None:
    rig = Rig(MediaConfig(status_interval_s=0), tuning=MediaTuning(paired_sends_from=2))  # one session on this clock
    await rig.start()
    rig.advance(400)
    assert all(len(m.data) == 160 for m in rig.transport.messages()[1:])
