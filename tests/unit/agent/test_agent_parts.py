"""The agent's parts one at a time, without a call: the call timers and the heard transcript on a
plain counter for a clock, the turn detector fed frame by frame on virtual time."""

from __future__ import annotations

import asyncio
from typing import Literal

import pytest

from tests.fakes.virtual_time import VirtualTimeLoop
from vr3ai.agent.base import RunReport
from vr3ai.agent.config import PipelineConfig
from vr3ai.agent.heard import HeardTranscript
from vr3ai.agent.services.base import Transcript
from vr3ai.agent.services.vad import SileroVad, VadParams
from vr3ai.agent.timers import CallTimers
from vr3ai.agent.turns import TurnDetector, TurnTiming

from .agent_helpers import EnergyVadModel, ScriptedSTT, tone

RATE = 8000


class Clock:
    def __init__(self) -> None:
        self.ms = 0

    def __call__(self) -> int:
        return self.ms


# ------------------------------------------------------------------ call timers
class TimerLog:
    def __init__(self) -> None:
        self.quiet = True
        self.fired: list[tuple[str, int]] = []

    def on_max_duration(self, now_ms: int) -> None:
        self.fired.append(("max", now_ms))

    def may_go_idle(self) -> bool:
        return self.quiet

    def on_idle(self, now_ms: int) -> None:
        self.fired.append(("idle", now_ms))


def run_timers(timers: CallTimers, clock: Clock, until_ms: int) -> None:
    while clock.ms < until_ms:
        clock.ms += 100
        timers.poll()


def test_idle_turn_after_the_timeout_and_again_after_another() -> None:
    clock, log = Clock(), TimerLog()
    timers = CallTimers(clock, log, idle_timeout_ms=1000, max_duration_ms=0)
    run_timers(timers, clock, 2500)
    assert log.fired == [("idle", 1000), ("idle", 2000)]


def test_activity_restarts_the_idle_clock_and_a_busy_call_never_goes_idle() -> None:
    clock, log = Clock(), TimerLog()
    timers = CallTimers(clock, log, idle_timeout_ms=1000, max_duration_ms=0)
    run_timers(timers, clock, 800)
    timers.activity()
    log.quiet = False  # the agent is talking, say
    run_timers(timers, clock, 3000)
    assert log.fired == []
    log.quiet = True
    timers.activity(2900)  # e.g. the agent's last mark came back at 2900
    run_timers(timers, clock, 4000)
    assert log.fired == [("idle", 3900)]


def test_max_duration_fires_once_and_zero_disables() -> None:
    clock, log = Clock(), TimerLog()
    timers = CallTimers(clock, log, idle_timeout_ms=0, max_duration_ms=1500, started_ms=-500)
    run_timers(timers, clock, 5000)
    assert log.fired == [("max", 1000)]
    clock, log = Clock(), TimerLog()
    timers = CallTimers(clock, log, idle_timeout_ms=0, max_duration_ms=0)
    run_timers(timers, clock, 5000)
    assert log.fired == []


# ------------------------------------------------------------------ heard transcript
def ms(n: int) -> int:
    return n * RATE // 1000


def test_cut_keeps_the_heard_share_of_words() -> None:
    report = RunReport()
    heard = HeardTranscript(report, RATE)
    line = heard.open_line(100)
    heard.queued(line, "One two three four.", ms(1000), "1.0", new_sentence=True)
    heard.queued(line, "Five six seven eight.", ms(500), None, new_sentence=True)
    heard.queued(line, "", ms(500), "1.1", new_sentence=False)
    assert report.transcript[0].text == "One two three four. Five six seven eight."
    heard.cut(dropped_ms=500, now_ms=1600, heard_ms_of=None)  # half of the second sentence heard
    assert report.transcript[0].text == "One two three four. Five six ..."
    assert report.transcript[0].end_ms == 1600


def test_cut_prefers_what_the_session_says_was_heard() -> None:
    report = RunReport()
    heard = HeardTranscript(report, RATE)
    line = heard.open_line(0)
    heard.queued(line, "One two three four.", ms(1000), "1.0", new_sentence=True)
    # Our sample count says 800 ms were heard; the session (it pads to whole frames) says 250.
    heard.cut(dropped_ms=200, now_ms=300, heard_ms_of=lambda mark: 250 if mark == "1.0" else None)
    assert report.transcript[0].text == "One ..."


def test_a_line_nobody_heard_leaves_the_transcript() -> None:
    report = RunReport()
    heard = HeardTranscript(report, RATE)
    first = heard.open_line(0)
    heard.queued(first, "Heard in full.", ms(500), "1.0", new_sentence=True)
    heard.marked("1.0", 520)
    heard.settled()
    second = heard.open_line(600)
    heard.queued(second, "Never heard.", ms(800), "2.0", new_sentence=True)
    heard.cut(dropped_ms=800, now_ms=600, heard_ms_of=None)
    assert [t.text for t in report.transcript] == ["Heard in full."]
    assert report.transcript[0].end_ms == 520


# ------------------------------------------------------------------ turn detector
class TurnLog:
    def __init__(self, listen: bool = True) -> None:
        self.listen = listen
        self.starts: list[int] = []
        self.ends = 0
        self.turns: list[tuple[str, TurnTiming]] = []
        self.problems: list[str] = []

    def on_start_of_speech(self, onset_ms: int) -> bool:
        self.starts.append(onset_ms)
        return self.listen

    def on_end_of_speech(self) -> None:
        self.ends += 1

    def on_transcript(self, transcript: Transcript, timing: TurnTiming) -> None:
        self.turns.append((transcript.text, timing))

    def on_problem(self, level: Literal["warning", "error"], message: str) -> None:
        self.problems.append(message)


class Line:
    """Feeds a detector 20 ms frames on the virtual loop's clock, like a media session."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.detector: TurnDetector | None = None

    def now(self) -> int:
        return int((self.loop.time() - self.t0) * 1000)

    async def send(self, pcm: bytes) -> None:
        step = ms(20) * 2
        for i in range(0, len(pcm), step):
            await asyncio.sleep(0.02)
            assert self.detector is not None
            self.detector.feed(pcm[i : i + step], self.now())

    async def quiet(self, duration_ms: int) -> None:
        await self.send(b"\x00\x00" * ms(duration_ms))


def listen(hooks: TurnLog, stt: ScriptedSTT, **cfg: object) -> tuple[TurnDetector, Line]:
    """A detector on a line; both read the virtual loop's clock."""
    config = PipelineConfig(**cfg)  # type: ignore[arg-type]
    params = VadParams(start_ms=config.speech_start_ms, stop_ms=config.turn_end_silence_ms)
    vad = SileroVad(EnergyVadModel(), params)  # type: ignore[arg-type]
    line = Line()
    line.detector = TurnDetector(vad, stt, hooks, config=config, clock=line.now, sample_rate=RATE)
    return line.detector, line


@pytest.mark.virtual_time
async def test_a_turn_is_transcribed_once_speculatively_with_its_pre_roll() -> None:
    hooks, stt = TurnLog(), ScriptedSTT(["hello there"], delay_s=0.05)
    det, line = listen(hooks, stt)
    await line.quiet(1000)
    await line.send(tone(600))
    await line.quiet(600)
    assert hooks.starts and abs(hooks.starts[0] - 1000) <= 40  # onset on the call clock
    assert hooks.ends == 1
    (text, timing), = hooks.turns
    assert text == "hello there" and timing.metrics["speculative"] is True
    assert len(stt.calls) == 1  # the speculative run was the turn's only transcription
    # pre-roll (300 ms) + speech (600 ms) + one quiet window (32 ms) + 150 ms of padding
    assert stt.calls[0] == pytest.approx(2 * ms(300 + 600 + 32 + 150), abs=2 * ms(64))
    assert timing.vad_end_ms - timing.speech_end_ms >= 200
    assert det.quiet and not det.transcribing
    await det.aclose()


@pytest.mark.virtual_time
async def test_ignored_speech_and_short_noise_are_never_transcribed() -> None:
    hooks, stt = TurnLog(listen=False), ScriptedSTT(["should not happen"])
    det, line = listen(hooks, stt)
    await line.quiet(500)
    await line.send(tone(600))  # the coordinator said no (e.g. hanging up)
    await line.quiet(500)
    hooks.listen = True
    await line.send(tone(40))  # a click: shorter than speech_start_ms
    await line.quiet(500)
    assert len(hooks.starts) == 1 and hooks.ends == 1
    assert stt.calls == [] and hooks.turns == []
    await det.aclose()


class SlowFirstSTT(ScriptedSTT):
    """Says which utterance it got; the first takes longer than the second."""

    async def transcribe(self, pcm: bytes, sample_rate: int) -> Transcript:
        n = len(self.calls)
        self.calls.append(len(pcm))
        await asyncio.sleep(1.5 if n == 0 else 0.05)
        return Transcript(f"utterance {n}", f"utterance {n}", 0)


@pytest.mark.virtual_time
async def test_turns_are_reported_in_the_order_they_were_spoken() -> None:
    hooks, stt = TurnLog(), SlowFirstSTT([])
    det, line = listen(hooks, stt, speculative_stt=False)
    await line.quiet(300)
    await line.send(tone(500))
    await line.quiet(400)
    await line.send(tone(500))
    await line.quiet(2000)
    assert [t for t, _ in hooks.turns] == ["utterance 0", "utterance 1"]
    await det.aclose()


@pytest.mark.virtual_time
async def test_silence_gaps_are_filled_so_the_turn_ends() -> None:
    hooks, stt = TurnLog(), ScriptedSTT(["hi"])
    det, line = listen(hooks, stt)
    await line.quiet(300)
    await line.send(tone(500))
    # The media path sends nothing while the caller is silent; the agent's ticker calls catch_up.
    for _ in range(5):
        await asyncio.sleep(0.1)
        det.catch_up(line.now())
    await asyncio.sleep(0.2)
    assert [t for t, _ in hooks.turns] == ["hi"]
    await det.aclose()


def test_virtual_time_loop_jumps_to_the_next_timer() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(3600)
        return loop.time() - t0

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        assert runner.run(main()) == pytest.approx(3600)
