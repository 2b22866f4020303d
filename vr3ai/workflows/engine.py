"""The per-call workflow state machine shared by both responders.

:class:`WorkflowEngine` owns where the call is in the graph (``ResponderState``: node, variables,
path, events), renders templates, extracts slots, handles DTMF, idle turns and end nodes. The two
responders differ only in how they pick an edge from the caller's words: the rule responder
(:mod:`vr3ai.workflows.responders.rules`) calls :meth:`WorkflowEngine.match_speech`; the LLM responder
lets the model call tools. DTMF, idle handling, slots and hang-up work the same in both modes, so a
keypad menu behaves identically whatever the workflow's LLM setting.

Offline matching of a speech turn, in priority order (first that applies wins):

1. slots of the current node are extracted from the utterance and stored;
2. **keywords**: the edge whose keyword matches the most words (so "opening hours" beats "open"),
   ties going to the edge listed first;
3. **spoken keypad**: "three" / "option 3" / "press three" takes the edge whose ``dtmf`` is ``3``;
4. **examples**: the best example score (share of the example's content words the caller said)
   at or above ``settings.match_threshold``; ties go to more matched words, then to the edge listed first;
5. **catch-all** edges (no keywords, examples or dtmf), first listed first. A catch-all with
   ``requires`` is taken only when all those variables have values *and* this turn filled one of
   them (if the node extracts any of them) — otherwise an answer like "um" would re-use a time the
   caller gave on an earlier pass through the node;
6. nothing matched: the ``ask`` of the node's first required slot that is still empty, else the
   node's ``reprompt``, else ``phrases.no_match`` followed by the node's ``say``.

Only edges whose ``requires`` are all filled take part. After a move, the new node's slots are
extracted from the *same* utterance and a gated catch-all that this fills is followed at once (at most
:data:`MAX_HOPS` moves a turn), speaking only the last node's ``say``: "book me tomorrow at three pm"
goes from the menu through "which day and time?" straight to "So that's tomorrow at 3 PM, shall I
book it?". If the words filled some of the new node's slots but a required one is still empty, its
``ask`` is said instead of the node's ``say``. Free-text slots are not filled on arrival unless one
of their ``after`` phrases occurs ("I'd like to leave a message" is the request, not the message).

DTMF: keys collect in a per-node buffer. An exact match with an edge's ``dtmf`` (optionally followed
by ``#``) takes it; a prefix of one waits for more keys; otherwise, at a node with a ``digits`` or
``number`` slot, keys are an entry for that slot, finished by ``#``, by reaching ``max_digits``, or
by the next idle timeout, and then handled like a spoken answer. Any other key re-prompts.

Idle turns: ``phrases.still_there`` + the node's ``say``; after ``max_idle_prompts`` of them in a row,
``phrases.idle_goodbye`` and a hang-up. Any other turn resets the count.

``Say.fixed`` is True when the rendered text uses no variable that comes from the caller's words
(any variable a node extracts): such a text is the same for the whole call, so TTS may cache it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vr3ai.workflows import nlu
from vr3ai.workflows.definition import (
    AgentNode,
    DefinitionError,
    Edge,
    EndNode,
    StartNode,
    WorkflowDefinition,
    check_definition,
    validate_definition,
)
from vr3ai.workflows.responder import Hangup, ReplyPart, ResponderState, Say
from vr3ai.workflows.templating import Rendered, render

MAX_HOPS = 5
NodeT = StartNode | AgentNode | EndNode


def ensure_definition(definition: WorkflowDefinition | Mapping[str, Any] | str) -> WorkflowDefinition:
    """A validated definition from a model, a dict or JSON text (graph checks included)."""
    if isinstance(definition, WorkflowDefinition):
        if definition._checked:
            return definition
        result = check_definition(definition.dump())
        if result.errors or result.definition is None:
            raise DefinitionError(result.errors, result.warnings)
        return result.definition
    return validate_definition(definition)


@dataclass(frozen=True, slots=True)
class DtmfOutcome:
    kind: Literal["edge", "pending", "entry", "none"]
    edge: Edge | None = None
    digits: str = ""


class WorkflowEngine:
    """One call's position in one workflow. Not thread-safe; one engine per call."""

    def __init__(
        self,
        definition: WorkflowDefinition | Mapping[str, Any] | str,
        variables: Mapping[str, Any] | None = None,
    ) -> None:
        self.definition = ensure_definition(definition)
        self.settings = self.definition.settings
        start = self.definition.start
        merged: dict[str, Any] = dict(self.definition.variables)
        merged.update(variables or {})
        self.state = ResponderState(node_id=start.id, variables=merged, node_path=[start.id])
        self.caller_variables = self.definition.extracted_variables()
        self.idle_count = 0
        self.dtmf_buffer = ""
        self._reported_missing: set[str] = set()

    # -- graph --

    @property
    def node(self) -> NodeT:
        return self.definition.node(self.state.node_id)

    @property
    def ended(self) -> bool:
        return self.state.ended

    def outgoing(self, node_id: str | None = None) -> list[Edge]:
        return self.definition.outgoing(node_id or self.state.node_id)

    def has_value(self, name: str) -> bool:
        value = self.state.variables.get(name)
        return value is not None and value != ""

    def eligible(self, edges: list[Edge] | None = None) -> list[Edge]:
        """Edges of the current node whose ``requires`` are all filled."""
        return [e for e in (edges if edges is not None else self.outgoing()) if all(map(self.has_value, e.requires))]

    def auto_edge(self) -> Edge | None:
        """The start node's single outgoing edge, followed right after the greeting."""
        out = self.definition.outgoing(self.definition.start.id)
        return out[0] if len(out) == 1 else None

    def enter(self, node_id: str) -> NodeT:
        self.state.node_id = node_id
        self.state.node_path.append(node_id)
        self.dtmf_buffer = ""
        self.idle_count = 0
        return self.node

    # -- speech --

    def render(self, template: str, where: str = "") -> Rendered:
        rendered = render(template, self.state.variables)
        for name in rendered.missing:
            if name not in self._reported_missing:
                self._reported_missing.add(name)
                place = f" ({where})" if where else ""
                self.state.event("warning", f"template variable '{name}' has no value{place}; it was left empty")
        return rendered

    def say(self, template: str, where: str = "") -> Say:
        rendered = self.render(template, where)
        return Say(rendered.text, fixed=self._is_fixed(rendered))

    def _is_fixed(self, rendered: Rendered) -> bool:
        return not any(name.split(".")[0] in self.caller_variables for name in rendered.used)

    def node_say_template(self, node: NodeT | None = None) -> str | None:
        """What the node says on arrival, as a template (the greeting for a start node)."""
        node = node or self.node
        if isinstance(node, StartNode):
            return node.greeting
        return node.say

    def end_parts(self, node: EndNode) -> list[ReplyPart]:
        self.state.ended = True
        return [self.say(node.say, f"end node '{node.id}'"), Hangup(f"workflow reached end node '{node.id}'")]

    def arrival_parts(self, node: NodeT | None = None) -> list[ReplyPart]:
        """Offline: what to say on entering a node (its ``say``; end nodes then hang up)."""
        node = node or self.node
        if isinstance(node, EndNode):
            return self.end_parts(node)
        template = self.node_say_template(node)
        return [self.say(template, f"node '{node.id}'")] if template else []

    def opening_parts(self) -> list[ReplyPart]:
        start = self.definition.start
        parts: list[ReplyPart] = [self.say(start.greeting, f"start node '{start.id}' greeting")]
        edge = self.auto_edge()
        if edge is not None:
            target = self.enter(edge.to)
            if isinstance(target, EndNode):
                parts += self.end_parts(target)
        return parts

    def reprompt_template(self) -> str | None:
        node = self.node
        if isinstance(node, EndNode):
            return None
        for slot in node.extract:
            if slot.required and slot.ask and not self.has_value(slot.name):
                return slot.ask
        if node.reprompt:
            return node.reprompt
        base = self.node_say_template(node)
        return f"{self.settings.phrases.no_match} {base}" if base else self.settings.phrases.no_match

    def no_match_parts(self) -> list[ReplyPart]:
        template = self.reprompt_template()
        return [self.say(template, f"node '{self.state.node_id}' reprompt")] if template else []

    def idle_template(self) -> str:
        base = self.node_say_template()
        still = self.settings.phrases.still_there
        return f"{still} {base}" if base else still

    def idle_parts(self) -> list[ReplyPart]:
        """A "still there?" with the node's question; after ``max_idle_prompts`` of them in a row, a
        goodbye and a hang-up."""
        self.idle_count += 1
        if self.idle_count > self.settings.max_idle_prompts:
            self.state.ended = True
            self.state.event("info", f"caller silent for {self.idle_count} idle timeouts; hanging up")
            return [self.say(self.settings.phrases.idle_goodbye, "idle goodbye"), Hangup("caller stayed silent")]
        return [self.say(self.idle_template(), f"node '{self.state.node_id}' idle prompt")]

    # -- caller input --

    def extract(self, text: str, node: NodeT | None = None, *, arriving: bool = False) -> set[str]:
        """Fill the node's slots from ``text``; returns the names filled by this call.

        ``arriving``: ``text`` is the utterance that led *to* this node, not an answer to its question.
        A free-text slot then only takes text after one of its ``after`` phrases ("I'd like to leave a
        message" is the request, not the message itself)."""
        node = node or self.node
        if isinstance(node, EndNode):
            return set()
        filled: set[str] = set()
        for slot in node.extract:
            value = nlu.extract_slot(
                slot.type,
                text,
                min_digits=slot.min_digits,
                max_digits=slot.max_digits,
                after=slot.after,
                require_after=arriving,
            )
            if value is not None:
                self.state.variables[slot.name] = value
                filled.add(slot.name)
        return filled

    def _catch_all_ready(self, edge: Edge, filled: set[str]) -> bool:
        if not edge.requires:
            return True
        node = self.node
        extracted_here = set() if isinstance(node, EndNode) else {s.name for s in node.extract}
        relevant = set(edge.requires) & extracted_here
        return not relevant or bool(relevant & filled)

    def match_speech(self, text: str, filled: set[str] | None = None) -> Edge | None:
        """The offline choice of an edge for an utterance (priorities in the module docstring)."""
        filled = filled or set()
        if not text.strip():
            return None
        edges = self.eligible()
        tokens = nlu.normalize(text)
        best: Edge | None = None
        best_len = 0
        for edge in edges:
            length = nlu.keyword_match(tokens, edge.keywords)
            if length > best_len:
                best, best_len = edge, length
        if best is not None:
            return best
        keys = nlu.spoken_keypad(text)
        if keys:
            for edge in edges:
                if edge.dtmf and edge.dtmf.upper() == keys:
                    return edge
        best_key = (0.0, 0)
        for edge in edges:
            for example in edge.examples:
                score = nlu.example_score(tokens, example)
                if score[0] >= self.settings.match_threshold and score > best_key:
                    best, best_key = edge, score
        if best is not None:
            return best
        for edge in edges:
            if edge.is_catch_all and self._catch_all_ready(edge, filled):
                return edge
        return None

    def follow_chain(self, edge: Edge, text: str) -> tuple[NodeT, set[str]]:
        """Take ``edge``, then keep following gated catch-alls that ``text`` fills at each new node.

        Returns the node reached and the slots ``text`` filled there."""
        node = self.enter(edge.to)
        filled: set[str] = set()
        for _ in range(MAX_HOPS - 1):
            if isinstance(node, EndNode):
                break
            filled = self.extract(text, node, arriving=True)
            if not filled:
                break
            nxt = next(
                (e for e in self.eligible() if e.is_catch_all and e.requires and self._catch_all_ready(e, filled)),
                None,
            )
            if nxt is None:
                break
            node = self.enter(nxt.to)
            filled = set()
        return node, filled

    def speech_arrival_parts(self, node: NodeT, filled: set[str]) -> list[ReplyPart]:
        """Arrival after a speech turn: if the caller's words already filled some of this node's
        slots but a required one is still empty, ask for that one instead of the node's opening
        question ("Sure, which day and time?" after "book me for tomorrow" would ask for the day again)."""
        if filled and not isinstance(node, EndNode):
            for slot in node.extract:
                if slot.required and slot.ask and not self.has_value(slot.name):
                    return [self.say(slot.ask, f"node '{node.id}' slot '{slot.name}'")]
        return self.arrival_parts(node)

    def feed_dtmf(self, keys: str) -> DtmfOutcome:
        """Add keypad keys to this node's buffer and say what they amount to: an edge, an entry for a
        digits/number slot (ended by ``#`` or by reaching ``max_digits``), or nothing yet."""
        buf = self.dtmf_buffer + "".join(keys.split()).upper()
        dtmf_edges = [e for e in self.eligible() if e.dtmf]
        for candidate in (buf, buf[:-1] if buf.endswith("#") else None):
            if candidate:
                for edge in dtmf_edges:
                    if edge.dtmf and edge.dtmf.upper() == candidate:
                        self.dtmf_buffer = ""
                        return DtmfOutcome("edge", edge)
        if any(e.dtmf and e.dtmf.upper().startswith(buf) for e in dtmf_edges):
            self.dtmf_buffer = buf
            return DtmfOutcome("pending")
        slot = self._keypad_slot()
        if slot is not None:
            if buf.endswith("#"):
                self.dtmf_buffer = ""
                digits = buf[:-1]
                return DtmfOutcome("entry", digits=digits) if digits else DtmfOutcome("none")
            if len(buf) >= slot.max_digits:
                # Keys beyond max_digits in the same burst are dropped, as on a real keypad prompt.
                self.dtmf_buffer = ""
                return DtmfOutcome("entry", digits=buf[: slot.max_digits])
            self.dtmf_buffer = buf
            return DtmfOutcome("pending")
        self.dtmf_buffer = ""
        return DtmfOutcome("none")

    def take_pending_entry(self) -> str | None:
        """On an idle timeout: digits typed into a slot without the closing ``#`` count as entered."""
        if self.dtmf_buffer and self._keypad_slot() is not None:
            digits, self.dtmf_buffer = self.dtmf_buffer, ""
            return digits
        self.dtmf_buffer = ""
        return None

    def _keypad_slot(self) -> Any:
        node = self.node
        if isinstance(node, EndNode):
            return None
        return next((s for s in node.extract if s.type in ("digits", "number")), None)

    # -- pre-synthesis --

    def fixed_texts(self, mode: Literal["rules", "llm"] = "rules") -> list[str]:
        """Every text this call may say that is the same all call long (rendered now)."""
        return self._rendered_texts(mode, self.state.variables, self._is_fixed)

    def static_texts(self, mode: Literal["rules", "llm"] = "rules") -> list[str]:
        """The fixed texts that are the same on *every* call: no variable of the call or the run,
        only the workflow's own ``variables``. What can be synthesised before any call arrives."""
        static = self.definition.variables
        return self._rendered_texts(mode, static, lambda r: all(n.split(".")[0] in static for n in r.used))

    def _rendered_texts(
        self, mode: Literal["rules", "llm"], variables: Mapping[str, Any], keep: Callable[[Rendered], bool]
    ) -> list[str]:
        out: list[str] = []
        for template in self._fixed_templates(mode):
            rendered = render(template, variables)
            if keep(rendered) and rendered.text and rendered.text not in out:
                out.append(rendered.text)
        return out

    def _fixed_templates(self, mode: Literal["rules", "llm"]) -> list[str]:
        templates: list[str] = [self.definition.start.greeting]
        phrases = self.settings.phrases
        start_is_menu = self.auto_edge() is None
        for node in self.definition.nodes:
            if isinstance(node, EndNode):
                templates.append(node.say)
                continue
            if isinstance(node, StartNode) and not start_is_menu:
                continue
            base = self.node_say_template(node)
            if base and mode == "rules" and not isinstance(node, StartNode):
                templates.append(base)
            if node.reprompt:
                templates.append(node.reprompt)
            else:
                templates.append(f"{phrases.no_match} {base}" if base else phrases.no_match)
            templates += [s.ask for s in node.extract if s.required and s.ask]
            templates.append(f"{phrases.still_there} {base}" if base else phrases.still_there)
        templates.append(phrases.idle_goodbye)
        if mode == "llm":
            templates.append(phrases.error)
        return templates
