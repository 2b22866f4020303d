"""``ResponderLink``: the workflow's responder as one call sees it.

A responder is workflow code (rules, an LLM): a bug or a vendor failure in it must not end the
call. The link makes its replies safe to iterate (a failure ends that reply and becomes an
``error`` event on the run), copies its state (variables, node path, new events) into the run's
report whenever the agent asks, and closes it once the call is over if it holds resources.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol, runtime_checkable

from vr3ai.agent.base import RunReport
from vr3ai.workflows.responder import CallerTurn, Hangup, ReplyPart, Responder, Say

log = logging.getLogger(__name__)


@runtime_checkable
class ClosableResponder(Protocol):
    """Optional extra of a responder that holds resources (an HTTP client)."""

    async def aclose(self) -> None: ...


class ResponderLink:
    def __init__(self, responder: Responder, report: RunReport, clock: Callable[[], int]) -> None:
        self.responder = responder
        self._report = report
        self._clock = clock
        self._events_seen = 0
        self._sync_failed = False

    def opening(self) -> AsyncIterator[ReplyPart]:
        return self._safe(self.responder.opening)

    def respond(self, turn: CallerTurn) -> AsyncIterator[ReplyPart]:
        return self._safe(lambda: self.responder.respond(turn))

    @staticmethod
    async def closing(text: str, reason: str) -> AsyncIterator[ReplyPart]:
        """The agent's own last words (the time limit), not the workflow's."""
        yield Say(text, fixed=True)
        yield Hangup(reason)

    async def _safe(self, make: Callable[[], AsyncIterator[ReplyPart]]) -> AsyncIterator[ReplyPart]:
        try:
            async for part in make():
                yield part
        except Exception as exc:  # a responder bug must not kill the call
            log.exception("responder failed")
            self._report.event("error", f"responder failed: {type(exc).__name__}: {exc}", self._clock())

    def fixed_texts(self) -> list[str]:
        """The workflow's fixed texts, or none if the responder cannot say (logged)."""
        try:
            return list(self.responder.fixed_texts())
        except Exception:
            log.exception("responder.fixed_texts failed")
            return []

    def sync(self) -> None:
        """Copy the responder's variables, node path and new events into the report."""
        try:
            st = self.responder.state
            self._report.variables.update(st.variables)
            self._report.node_path = list(st.node_path)
            now = self._clock()
            for ev in st.events[self._events_seen :]:
                self._report.event(ev.get("level", "warning"), str(ev.get("message", "")), ev.get("at_ms") or now)
            self._events_seen = len(st.events)
        except Exception as exc:  # a responder bug must not kill the call; reported once
            log.exception("reading the responder's state failed")
            if not self._sync_failed:
                self._sync_failed = True
                self._report.event("error", f"responder state unreadable: {type(exc).__name__}", self._clock())

    async def aclose(self) -> None:
        if isinstance(self.responder, ClosableResponder):
            await self.responder.aclose()
