"""What an agent is, and how it reports back to the run that owns the call.

The call owner (``vr3ai.telephony.ari.calls``) creates a :class:`RunReport`, builds an agent with
``vr3ai.agent.factory.build_agent`` from the run's workflow, and awaits ``agent.run(audio, ctx, report)``.
The agent never touches the database: the call owner persists what the report collected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from vr3ai.media.interface import CallAudio

if TYPE_CHECKING:
    from vr3ai.core.outbound import OutboundPolicy


@dataclass
class CallContext:
    """Everything the agent may know about the call."""

    run_id: str
    organization_id: str
    workflow_id: str
    workflow_definition: dict[str, Any]
    variables: dict[str, Any]
    """The guide's inbound context (caller_number, called_number, direction, call_id, provider) plus
    any variables the run carries; templating reads from here."""
    secrets: dict[str, str] = field(default_factory=dict)
    """Organization secrets the workflow refers to (e.g. an LLM API key). Never log these."""
    outbound: OutboundPolicy | None = None
    """Where the agent's requests (LLM, cloud STT/TTS) may go; None: the process's policy."""


@dataclass
class TranscriptLine:
    role: Literal["agent", "caller"]
    text: str
    start_ms: int
    end_ms: int

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "text": self.text, "start_ms": self.start_ms, "end_ms": self.end_ms}


@dataclass
class RunReport:
    """Collects what a call produced; the call owner persists it."""

    transcript: list[TranscriptLine] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    """Warnings and errors of this call, shown on the run's page: {"level","message","at_ms"}."""
    end_reason: str | None = None
    node_path: list[str] = field(default_factory=list)

    def say(self, role: Literal["agent", "caller"], text: str, start_ms: int, end_ms: int) -> TranscriptLine:
        line = TranscriptLine(role, text, start_ms, end_ms)
        self.transcript.append(line)
        return line

    def event(self, level: Literal["info", "warning", "error"], message: str, at_ms: int | None = None) -> None:
        self.events.append({"level": level, "message": message, "at_ms": at_ms})


class Agent(Protocol):
    async def run(self, audio: CallAudio, ctx: CallContext, report: RunReport) -> None:
        """Talk until the call ends or the workflow hangs up. Must return promptly after CallEnded."""
        ...
