"""The offline default responder: a deterministic walk of the workflow graph.

No model, no network, no randomness: the same caller turns always give the same replies, which is
what makes conversation tests (and support questions about a call) reproducible. The decision
rules (keywords, spoken keypad, examples, catch-alls, slots, idle handling) live in
:class:`vr3ai.workflows.engine.WorkflowEngine`; see its module docstring for the priorities.
This class only turns caller turns into engine calls and engine results into :class:`Say` /
:class:`Hangup` parts.

Every node's text is one sentence group said as a single :class:`Say`; splitting it further would
only add TTS round trips for texts that are usually cached (``fixed``) anyway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from vr3ai.workflows.definition import WorkflowDefinition
from vr3ai.workflows.engine import WorkflowEngine
from vr3ai.workflows.responder import CallerTurn, ReplyPart, ResponderState


class RuleResponder:
    """``RuleResponder(definition, variables)``: ``definition`` is a validated
    :class:`WorkflowDefinition` or its JSON (dict/str, validated here); ``variables`` is the run's
    context (caller_number, called_number, direction, call_id, provider, ...)."""

    def __init__(
        self,
        definition: WorkflowDefinition | Mapping[str, Any] | str,
        variables: Mapping[str, Any] | None = None,
    ) -> None:
        self.engine = WorkflowEngine(definition, variables)
        self.state: ResponderState = self.engine.state

    async def opening(self) -> AsyncIterator[ReplyPart]:
        for part in self.engine.opening_parts():
            yield part

    async def respond(self, turn: CallerTurn) -> AsyncIterator[ReplyPart]:
        for part in self.decide(turn):
            yield part

    def decide(self, turn: CallerTurn) -> list[ReplyPart]:
        """The synchronous core of :meth:`respond` (< 1 ms; nothing here awaits)."""
        engine = self.engine
        if engine.ended:
            return []
        if turn.kind == "idle":
            digits = engine.take_pending_entry()
            if digits is not None:
                return self._speech(digits)
            return engine.idle_parts()
        engine.idle_count = 0
        if turn.kind == "dtmf":
            outcome = engine.feed_dtmf(turn.dtmf)
            if outcome.kind == "edge" and outcome.edge is not None:
                return engine.arrival_parts(engine.enter(outcome.edge.to))
            if outcome.kind == "pending":
                return []
            if outcome.kind == "entry":
                return self._speech(outcome.digits)
            return engine.no_match_parts()
        return self._speech(turn.text)

    def _speech(self, text: str) -> list[ReplyPart]:
        engine = self.engine
        filled = engine.extract(text)
        edge = engine.match_speech(text, filled)
        if edge is None:
            return engine.no_match_parts()
        node, filled_there = engine.follow_chain(edge, text)
        return engine.speech_arrival_parts(node, filled_there)

    def fixed_texts(self) -> list[str]:
        return self.engine.fixed_texts("rules")
