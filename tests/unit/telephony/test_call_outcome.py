"""The rules that explain how a call ended (``vr3ai.telephony.ari.outcome``), one fact at a time and
in their order of precedence: what the run's status and end reason say to an operator."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vr3ai.agent.base import RunReport
from vr3ai.core.runs import RunOutcome
from vr3ai.media.session import CloseInfo
from vr3ai.telephony.ari.outcome import (
    ChannelGone,
    ConversationEnd,
    conversation_outcome,
    unanswered_outcome,
    with_report,
)

QUIET = ConversationEnd(
    asterisk_shutdown=False,
    caller_gone=None,
    end_requested=None,
    agent_done=False,
    agent_error=None,
    media_gone=None,
    media_closed=None,
    agent_end_reason=None,
)


@pytest.mark.parametrize(
    ("gone", "dial_status", "expected"),
    [
        (ChannelGone(17, ""), "", ("busy", "callee busy: cause 17 (user busy)")),
        (ChannelGone(16, ""), "BUSY", ("busy", "callee busy: cause 16 (normal clearing)")),
        (ChannelGone(19, ""), "", ("no_answer", "no answer: cause 19 (no answer)")),
        (ChannelGone(16, ""), "cancel", ("no_answer", "no answer: cause 16 (normal clearing)")),
        (ChannelGone(34, ""), "CONGESTION", ("failed", "could not reach the callee (congestion): cause 34 "
                                              "(no circuit available)")),
        (ChannelGone(99, "odd"), "", ("failed", "call ended before answer: cause 99 (odd)")),
        (ChannelGone(None, ""), "", ("failed", "call ended before answer: cause None (unknown)")),
    ],
)
def test_unanswered(gone: ChannelGone, dial_status: str, expected: tuple[str, str]) -> None:
    assert unanswered_outcome(gone, dial_status) == expected


def test_nothing_special_is_a_plain_end() -> None:
    assert conversation_outcome(QUIET) == ("completed", "call ended")


def test_precedence_shutdown_then_caller_then_request_then_agent_error() -> None:
    everything = replace(
        QUIET,
        asterisk_shutdown=True,
        caller_gone=ChannelGone(21, ""),
        end_requested=("configuration deleted", "failed"),
        agent_done=True,
        agent_error=RuntimeError("boom"),
        media_gone=ChannelGone(16, ""),
    )
    assert conversation_outcome(everything) == ("failed", "Asterisk shut down or restarted while the call was up")
    no_shutdown = replace(everything, asterisk_shutdown=False)
    assert conversation_outcome(no_shutdown) == ("completed", "caller hung up (cause 21)")
    assert conversation_outcome(replace(no_shutdown, caller_gone=ChannelGone(16, ""))) == (
        "completed",
        "caller hung up",
    )
    no_caller = replace(no_shutdown, caller_gone=None)
    assert conversation_outcome(no_caller) == ("failed", "configuration deleted")
    assert conversation_outcome(replace(no_caller, end_requested=None)) == ("failed", "agent error: RuntimeError: boom")


def test_agent_hangup_beats_media_drop_and_uses_the_agents_reason() -> None:
    hung_up = CloseInfo(code=1000, reason="hangup: goodbye", initiator="local", at_ms=5)
    end = replace(QUIET, media_closed=hung_up, media_gone=ChannelGone(16, ""), agent_end_reason="caller said bye")
    assert conversation_outcome(end) == ("completed", "caller said bye")
    assert conversation_outcome(replace(end, agent_end_reason=None)) == ("completed", "agent ended the call")
    # The agent returned by itself while media was still up.
    assert conversation_outcome(replace(QUIET, agent_done=True)) == ("completed", "agent ended the call")


def test_media_failures() -> None:
    assert conversation_outcome(replace(QUIET, media_gone=ChannelGone(38, "network out of order"))) == (
        "failed",
        "media channel ended unexpectedly (cause 38 network out of order)",
    )
    dropped = CloseInfo(code=1006, reason="connection lost", initiator="remote", at_ms=9)
    assert conversation_outcome(replace(QUIET, media_closed=dropped, agent_done=True)) == (
        "failed",
        "media connection dropped (connection lost, close code 1006)",
    )


def test_with_report_carries_what_the_agent_reported() -> None:
    report = RunReport()
    report.event("warning", "call not recorded")
    outcome = RunOutcome(status="completed", end_reason="caller hung up")
    with_report(outcome, report, {"answered": 12.5}, None)
    assert outcome.events == list(report.events) and outcome.events[0]["message"] == "call not recorded"
    assert outcome.metrics is not None and outcome.metrics[-1]["call_timings_ms"] == {"answered": 12.5}
    assert (outcome.recording_path, outcome.recording_bytes, outcome.transcript) == (None, 0, [])
