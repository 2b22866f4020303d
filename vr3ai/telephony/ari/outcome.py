"""How a call's end is explained: the run's final status and the sentence an operator reads.

Pure functions of the facts the call recorded (``Call.feed``), so each rule is testable without a
call, a connection or an Asterisk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vr3ai.core.recordings import file_size
from vr3ai.core.runs import RunOutcome

if TYPE_CHECKING:
    from vr3ai.agent.base import RunReport
    from vr3ai.media.session import CloseInfo

# Q.850 causes worth explaining to a person.
CAUSE_TEXT = {
    1: "unallocated number",
    3: "no route to destination",
    16: "normal clearing",
    17: "user busy",
    18: "no user responding",
    19: "no answer",
    21: "call rejected",
    27: "destination out of order",
    31: "normal, unspecified",
    34: "no circuit available",
    38: "network out of order",
    58: "bearer capability not available",
}


class CallFailed(Exception):
    """Ends a call's flow early: ``reason`` and ``status`` for the run, ``hangup_reason`` for ARI."""

    def __init__(self, reason: str, status: str = "failed", hangup_reason: str = "normal") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.hangup_reason = hangup_reason


@dataclass
class ChannelGone:
    cause: int | None
    cause_txt: str


def unanswered_outcome(gone: ChannelGone, dial_status: str) -> tuple[str, str]:
    """(status, reason) of an outbound call that ended before the callee answered."""
    ds = dial_status.upper()
    cause = gone.cause
    text = f"cause {cause} ({CAUSE_TEXT.get(cause or -1, gone.cause_txt or 'unknown')})"
    if ds == "BUSY" or cause == 17:
        return "busy", f"callee busy: {text}"
    if ds in ("NOANSWER", "CANCEL") or cause in (18, 19):
        return "no_answer", f"no answer: {text}"
    if ds in ("CHANUNAVAIL", "CONGESTION"):
        return "failed", f"could not reach the callee ({ds.lower()}): {text}"
    return "failed", f"call ended before answer: {text}"


@dataclass
class ConversationEnd:
    """What had happened when the first of the conversation's waiters finished."""

    asterisk_shutdown: bool
    caller_gone: ChannelGone | None
    end_requested: tuple[str, str] | None
    """(reason, status) asked for by someone else (configuration stopped, reconcile)."""
    agent_done: bool
    agent_error: BaseException | None
    media_gone: ChannelGone | None
    media_closed: CloseInfo | None
    agent_end_reason: str | None
    """The reason the agent gave when it ended the call (``RunReport.end_reason``)."""


def conversation_outcome(end: ConversationEnd) -> tuple[str, str]:
    """(status, reason) of a call that reached its agent; the first matching rule wins."""
    info = end.media_closed
    agent_hung_up = info is not None and info.initiator == "local" and info.reason.startswith("hangup:")
    if end.asterisk_shutdown:
        return "failed", "Asterisk shut down or restarted while the call was up"
    if end.caller_gone is not None:
        cause = end.caller_gone.cause
        return "completed", "caller hung up" if cause in (None, 16, 0) else f"caller hung up (cause {cause})"
    if end.end_requested is not None:
        reason, status = end.end_requested
        return status, reason
    if end.agent_error is not None:
        exc = end.agent_error
        return "failed", f"agent error: {type(exc).__name__}: {exc}"
    if agent_hung_up or (end.agent_done and info is None and end.media_gone is None):
        return "completed", end.agent_end_reason or "agent ended the call"
    if end.media_gone is not None:
        gone = end.media_gone
        return "failed", f"media channel ended unexpectedly (cause {gone.cause} {gone.cause_txt})"
    if info is not None:
        code = f", close code {info.code}" if info.code else ""
        return "failed", f"media connection dropped ({info.reason}{code})"
    return "completed", "call ended"


def with_report(outcome: RunOutcome, report: RunReport, timings: dict[str, float], recording: str | None) -> None:
    """Add what the agent reported (transcript, metrics, variables, events), the call's setup
    timings and its recording to the outcome the run is finished with."""
    outcome.transcript = [line.as_dict() for line in report.transcript]
    outcome.metrics = [*report.metrics, {"call_timings_ms": timings, "node_path": list(report.node_path)}]
    outcome.variables = dict(report.variables)
    outcome.events = list(report.events)
    outcome.recording_path = recording
    outcome.recording_bytes = file_size(recording)
