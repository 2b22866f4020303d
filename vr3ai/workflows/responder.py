"""The seam between the conversation pipeline and whatever decides what the agent says.

The pipeline (``vr3ai.agent.pipeline``) owns audio, turn-taking and barge-in; a :class:`Responder`
owns the workflow: which node we are in, what to say, when to hang up. Two responders exist:
the deterministic rule engine (offline default, ``responders/rules.py``) and an OpenAI-compatible chat model
(``responders/openai_compat.py``). Both stream :class:`Say` parts sentence by sentence so synthesis of the
first sentence starts while later ones are still being produced.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass(frozen=True, slots=True)
class CallerTurn:
    """One thing the caller did: finished speaking (``text``), pressed a key (``dtmf``), or stayed
    silent past the idle timeout (``kind="idle"``)."""

    kind: Literal["speech", "dtmf", "idle"]
    text: str = ""
    dtmf: str = ""


@dataclass(frozen=True, slots=True)
class Say:
    """A sentence to speak. ``fixed`` texts (greeting, a node's ``say``) are the same on every call
    after templating, so the TTS layer may synthesise them once and cache the audio."""

    text: str
    fixed: bool = False


@dataclass(frozen=True, slots=True)
class Hangup:
    """End the call once everything said before this part has been heard."""

    reason: str = "workflow reached an end node"


ReplyPart = Say | Hangup


@dataclass
class ResponderState:
    """What the responder exposes for the run record."""

    node_id: str
    variables: dict[str, Any] = field(default_factory=dict)
    node_path: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    """Warnings and errors the responder ran into (an LLM timeout, a template variable with no
    value), shaped like ``RunReport.events`` (``{"level", "message", "at_ms"}``, ``at_ms`` None).
    The pipeline moves them into the report; responders only append. Never contains secrets."""
    ended: bool = False
    """True once the responder has emitted :class:`Hangup`; later turns are ignored."""

    def event(self, level: Literal["info", "warning", "error"], message: str) -> None:
        self.events.append({"level": level, "message": message, "at_ms": None})


class Responder(Protocol):
    state: ResponderState

    def opening(self) -> AsyncIterator[ReplyPart]:
        """What to say when the call is bridged (the start node's greeting, verbatim after templating)."""
        ...

    def respond(self, turn: CallerTurn) -> AsyncIterator[ReplyPart]:
        """React to a caller turn. May move to another node. Must not block the event loop."""
        ...

    def fixed_texts(self) -> list[str]:
        """Every templated fixed text this workflow can say on this call (for TTS pre-synthesis)."""
        ...
