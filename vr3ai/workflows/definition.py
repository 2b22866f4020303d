"""A workflow definition: the JSON node graph an agent follows on a call, and its validation.

Shape (see :func:`example_definition` for a complete one)::

    {
      "version": 1,
      "settings": {...},                        # optional, every field has a default
      "variables": {"company": "Acme Dental"},  # optional defaults; the run's variables win
      "nodes": [
        {"id": "greeting", "type": "start", "greeting": "Thanks for calling {{company}}. How can I help?"},
        {"id": "menu", "type": "agent", "say": "...", "prompt": "...", "reprompt": "...", "extract": [...]},
        {"id": "bye", "type": "end", "say": "Goodbye!"}
      ],
      "edges": [
        {"id": "e1", "from": "greeting", "to": "menu"},
        {"id": "e2", "from": "menu", "to": "bye", "condition": "The caller is done",
         "keywords": ["bye", "that's all"], "examples": ["nothing else thanks"], "dtmf": "9"}
      ]
    }

Semantics the validator enforces (and the engine relies on):

* Exactly one ``start`` node; its ``greeting`` is spoken first, verbatim after templating. If it has
  exactly one outgoing edge, the call moves along it right after the greeting (the greeting asks the
  next node's question, so that node's ``say`` is not spoken then). With several outgoing edges the
  start node itself is a menu: caller turns are matched against its edges.
* ``agent`` nodes need ``say`` in offline (``rules``) mode and ``prompt`` in LLM mode; the other is
  optional. ``end`` nodes need ``say`` and can have no outgoing edges. Nothing may point back to
  the start node (the greeting is said once; point to an agent node instead).
* Edges carry a natural-language ``condition`` (LLM mode: the description of the tool the model calls
  to take the edge, so it is required there) and, for the offline engine, ``keywords``, ``examples``
  and ``dtmf``. An edge with none of those three is a *catch-all*: in offline mode any caller answer
  takes it, once the variables listed in its ``requires`` are filled.
* An edge's ``id`` is optional (the format was first specified without it): a missing one is derived
  as ``<from>-<to>`` (``-2``, ``-3``... when taken), deterministically, so a stored definition parses
  to the same ids every time; a given id is kept.
* DTMF strings use ``0-9 * # A-D``; two edges of one node cannot share a DTMF string, nor can one be
  a prefix of the other (the shorter one would always win).

Decisions on the open questions of the spec:

* Unreachable nodes are **warnings**: an author may park a node while editing, and it cannot break a
  call. Agent nodes with no way out are **warnings** too: a single-node LLM assistant that talks until
  the caller hangs up is a legitimate workflow. A start node with no outgoing edge is an **error**:
  the call could do nothing after the greeting (use an end node to play a message and hang up).
* Unknown template variables are **warnings** (runs can carry variables the editor cannot know, e.g.
  an outbound call's context); malformed placeholders are **errors** (the voice would read the braces).
* Unknown fields are **errors** (a typo like ``greting`` would otherwise silently drop the greeting).
  ``name``, ``position`` and ``meta`` are accepted on nodes and edges for the dashboard.
* Secrets are referenced by name (``api_key_secret``); a field that looks like a key itself
  (``api_key``, ``token``, ...) is rejected with a hint, and error messages never echo its value.
* ``settings.llm.base_url`` is an origin plus at most an API-version path (``/v1``, or one word
  and a version: ``/api/v1``, ``/openai/v1``; a trailing ``/chat/completions`` is accepted):
  requests go to ``{base_url}/chat/completions``, and anything else (a query, a fragment, a user
  name, another path) would let a workflow aim our server at any URL of any HTTP service.

:func:`validate_definition` is the only entry point that runs the graph checks; it returns a
:class:`WorkflowDefinition` whose :attr:`~WorkflowDefinition.warnings` lists the non-fatal findings,
or raises :class:`DefinitionError` whose ``errors`` each carry a ``loc`` (``"edges[1].to"``) and a
message naming the node or edge.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from vr3ai.workflows import nlu
from vr3ai.workflows.templating import (
    CONTEXT_VARIABLES,
    NAME_RE,
    PLACEHOLDER_RE,
    malformed_placeholders,
)

ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
SECRET_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
DTMF_KEYS = frozenset("0123456789*#ABCD")

Json = dict[str, Any]


class _Model(BaseModel):
    # serialize_by_alias (pydantic >= 2.11) makes model_dump() write "from", not "from_"; on older
    # pydantic use WorkflowDefinition.dump(), which asks for aliases explicitly.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)


class _UiFields(_Model):
    name: str | None = None
    """A display label for the dashboard; ids are what edges refer to."""
    position: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None


SlotType = Literal["digits", "number", "yes_no", "time", "date", "text"]


class Slot(_Model):
    """A variable to extract from the caller's words while at a node (see :mod:`vr3ai.workflows.nlu`)."""

    name: str = Field(pattern=NAME_RE.pattern)
    type: SlotType
    required: bool = False
    """While a required slot is empty and no edge matched, the engine asks for it (``ask``)."""
    ask: str | None = None
    after: list[str] = Field(default_factory=list)
    """``text`` slots: keep only what follows the first of these phrases ("my name is")."""
    min_digits: int = Field(default=1, ge=1, le=64)
    max_digits: int = Field(default=32, ge=1, le=64)


class StartNode(_UiFields):
    id: str = Field(pattern=ID_PATTERN)
    type: Literal["start"] = "start"
    greeting: str
    prompt: str | None = None
    """LLM mode, only used while the call stays at a start node that has several outgoing edges."""
    reprompt: str | None = None
    extract: list[Slot] = Field(default_factory=list)


class AgentNode(_UiFields):
    id: str = Field(pattern=ID_PATTERN)
    type: Literal["agent"] = "agent"
    prompt: str | None = None
    say: str | None = None
    reprompt: str | None = None
    """Said when nothing the caller said matched (default: ``phrases.no_match`` + ``say``)."""
    extract: list[Slot] = Field(default_factory=list)


class EndNode(_UiFields):
    id: str = Field(pattern=ID_PATTERN)
    type: Literal["end"] = "end"
    say: str


def _derived_edge_ids(raw: list[Any]) -> dict[int, str]:
    """Ids for edges written without one (the original format had only ``from``/``to``/...):
    ``<from>-<to>``, then ``-2``, ``-3``... when that is taken by a given id or an earlier derived one.
    Derived from the definition alone, so every parse of one stored definition gets the same ids;
    the stored JSON is left as written."""
    taken = {item["id"] for item in raw if isinstance(item, Mapping) and isinstance(item.get("id"), str)}
    out: dict[int, str] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or item.get("id") is not None:
            continue
        ends = [item.get("from"), item.get("to")]
        if not all(isinstance(e, str) and e for e in ends):
            base = f"edge-{i + 1}"
        else:
            base = re.sub(r"[^A-Za-z0-9_.:-]", "_", f"{ends[0]}-{ends[1]}")[:56]
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}-{n}"
        taken.add(candidate)
        out[i] = candidate
    return out


Node = Annotated[StartNode | AgentNode | EndNode, Field(discriminator="type")]
NODE_CLASSES: dict[str, type[StartNode | AgentNode | EndNode]] = {
    "start": StartNode,
    "agent": AgentNode,
    "end": EndNode,
}


class Edge(_UiFields):
    id: str = Field(pattern=ID_PATTERN)
    from_: str = Field(alias="from")
    to: str
    condition: str | None = None
    keywords: list[str] = Field(default_factory=list)
    examples: list[str] = Field(default_factory=list)
    dtmf: str | None = None
    requires: list[str] = Field(default_factory=list)
    """Variables that must have a value before the offline engine takes (or the LLM is offered) this edge."""

    @property
    def is_catch_all(self) -> bool:
        return not (self.keywords or self.examples or self.dtmf)


class RulesLLM(_Model):
    provider: Literal["rules"] = "rules"


class OpenAICompatLLM(_Model):
    provider: Literal["openai_compatible"]
    base_url: str
    """Like the OpenAI SDK's: includes ``/v1``; requests go to ``{base_url}/chat/completions``."""
    model: str = Field(min_length=1)
    api_key_secret: str | None = None
    system_prompt: str | None = None
    """Prepended to every node's prompt: the persona and rules shared by the whole workflow."""
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    timeout_s: float = Field(default=20.0, gt=0, le=300)
    """Longest wait for the server's first byte and between streamed chunks."""


LLMSettings = Annotated[RulesLLM | OpenAICompatLLM, Field(discriminator="provider")]


class STTSettings(_Model):
    provider: Literal["offline", "deepgram", "openai"] = "offline"
    model: str | None = None
    api_key_secret: str | None = None


class TTSSettings(_Model):
    provider: Literal["offline", "piper", "flite", "openai", "elevenlabs", "cartesia"] = "offline"
    voice: str | None = None
    model: str | None = None
    api_key_secret: str | None = None


class Phrases(_Model):
    """The engine's own words, per workflow so that non-English workflows can translate them."""

    no_match: str = "Sorry, I didn't catch that."
    still_there: str = "Are you still there?"
    idle_goodbye: str = "I haven't heard anything for a while, so I'll hang up now. Goodbye."
    error: str = "Sorry, I'm having a little trouble right now. Could you say that again?"


class Settings(_Model):
    llm: LLMSettings = Field(default_factory=RulesLLM)
    stt: STTSettings = Field(default_factory=STTSettings)
    tts: TTSSettings = Field(default_factory=TTSSettings)
    max_call_duration_s: int = Field(default=600, ge=10, le=4 * 3600)
    idle_timeout_s: float = Field(default=15.0, ge=1, le=600)
    max_idle_prompts: int = Field(default=2, ge=0, le=10)
    """Consecutive idle timeouts answered with a "still there?" before the agent hangs up."""
    barge_in: bool = True
    turn_end_silence_ms: int = Field(default=200, ge=50, le=5000)
    language: str = Field(default="en", pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    match_threshold: float = Field(default=0.5, gt=0, le=1)
    """Offline engine: share of an example's content words the caller must say for it to match."""
    phrases: Phrases = Field(default_factory=Phrases)


CLOUD_STT = frozenset({"deepgram", "openai"})
CLOUD_TTS = frozenset({"openai", "elevenlabs", "cartesia"})

VariableValue = str | int | float | bool | None


class WorkflowDefinition(_Model):
    version: Literal[1] = 1
    nodes: list[Node]
    edges: list[Edge] = Field(default_factory=list)
    settings: Settings = Field(default_factory=Settings)
    variables: dict[str, VariableValue] = Field(default_factory=dict)
    """Workflow-level defaults for template variables; the run's variables override them."""
    meta: dict[str, Any] | None = None

    _warnings: list[dict[str, str]] = PrivateAttr(default_factory=list)
    _checked: bool = PrivateAttr(default=False)

    @property
    def warnings(self) -> list[dict[str, str]]:
        """Non-fatal findings of :func:`validate_definition` (same shape as errors)."""
        return self._warnings

    @property
    def mode(self) -> Literal["rules", "llm"]:
        return "llm" if isinstance(self.settings.llm, OpenAICompatLLM) else "rules"

    @property
    def start(self) -> StartNode:
        for node in self.nodes:
            if isinstance(node, StartNode):
                return node
        raise LookupError("workflow has no start node")

    def node(self, node_id: str) -> StartNode | AgentNode | EndNode:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def outgoing(self, node_id: str) -> list[Edge]:
        return [e for e in self.edges if e.from_ == node_id]

    def extracted_variables(self) -> set[str]:
        """Names any node extracts from the caller's words."""
        return {s.name for n in self.nodes if not isinstance(n, EndNode) for s in n.extract}

    def dump(self) -> Json:
        """The JSON form (``"from"`` on edges, defaults included) for storage and the API."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class DefinitionError(ValueError):
    """The definition is invalid. ``errors``: ``[{"loc": "edges[1].to", "msg": "..."}]``."""

    def __init__(self, errors: list[dict[str, str]], warnings: list[dict[str, str]] | None = None) -> None:
        self.errors = errors
        self.warnings = warnings or []
        super().__init__(self._summary())

    def _summary(self) -> str:
        if not self.errors:
            return "invalid workflow definition"
        first = self.errors[0]
        text = f"{first['loc']}: {first['msg']}" if first["loc"] else first["msg"]
        more = len(self.errors) - 1
        if more:
            text += f" (and {more} more error{'s' if more > 1 else ''})"
        return text

    def __str__(self) -> str:
        return self._summary()


@dataclass
class CheckResult:
    definition: WorkflowDefinition | None
    errors: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)


def validate_definition(obj: Any) -> WorkflowDefinition:
    """Validate a definition (a dict, or JSON text) and return the model; raise :class:`DefinitionError`."""
    result = check_definition(obj)
    if result.errors or result.definition is None:
        raise DefinitionError(result.errors, result.warnings)
    return result.definition


def check_definition(obj: Any) -> CheckResult:
    """Like :func:`validate_definition` but returns errors and warnings instead of raising."""
    return _Checker().run(obj)


# --- the checker ---------------------------------------------------------------------------------

_TOP_LEVEL = ("version", "nodes", "edges", "settings", "variables", "meta")
_SECRETISH = re.compile(r"(^|_)(api_?key|apikey|key|token|secret|password|authorization|bearer)$", re.I)
_SECRET_HINT = (
    "API keys are never stored in a workflow: save the key as an organization secret and put the "
    "secret's name in 'api_key_secret'"
)


def _loc(prefix: str, parts: Sequence[Any]) -> str:
    out = prefix
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out


_BASE_PATH_SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,40}")
_VERSION_SEGMENT = re.compile(r"v\d+(?:(?:alpha|beta)\d*)?")
_BASE_URL_SHAPE = (
    "must be an http(s) URL such as https://api.openai.com/v1 or http://127.0.0.1:11434/v1: the server's "
    "origin plus at most an API version path (/v1, /api/v1, /openai/v1); no query, fragment, user name or "
    "other path (requests go to {base_url}/chat/completions)"
)


def base_url_problem(url: str) -> str | None:
    """Why ``url`` is not an acceptable LLM ``base_url`` (see the module doc), or None."""
    if any(c.isspace() for c in url) or "\\" in url or "%" in url:
        return _BASE_URL_SHAPE
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        return _BASE_URL_SHAPE
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return _BASE_URL_SHAPE
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        return _BASE_URL_SHAPE
    if url.endswith(("?", "#")):
        return _BASE_URL_SHAPE
    path = parts.path.rstrip("/").removesuffix("/chat/completions")
    if not path:
        return None
    segments = path.split("/")[1:]
    if (
        len(segments) > 2
        or not all(_BASE_PATH_SEGMENT.fullmatch(seg) for seg in segments)
        or not _VERSION_SEGMENT.fullmatch(segments[-1])
    ):
        return _BASE_URL_SHAPE
    return None


def _looks_like_key(value: str) -> bool:
    if value.startswith(("sk-", "sk_", "Bearer ", "xai-", "gsk_")):
        return True
    # Names are short words; a long run of mixed letters and digits is a credential.
    return len(value) >= 32 and bool(re.search(r"\d", value)) and bool(re.search(r"[A-Za-z]", value))


class _Checker:
    def __init__(self) -> None:
        self.errors: list[dict[str, str]] = []
        self.warnings: list[dict[str, str]] = []
        # Ids and types as written, including nodes that failed to parse, so that one broken node
        # does not also produce "unknown node" errors on every edge that points to it.
        self.raw_node_ids: set[str] = set()
        self.raw_has_start = False
        self.raw_slot_names: set[str] = set()

    def error(self, loc: str, msg: str) -> None:
        self.errors.append({"loc": loc, "msg": msg})

    def warn(self, loc: str, msg: str) -> None:
        self.warnings.append({"loc": loc, "msg": msg})

    # -- pydantic error translation --

    def _pydantic(self, exc: ValidationError, prefix: str, subject: str | None) -> None:
        """Turn pydantic's errors into ours. ``subject`` names the node or edge; None means "name the
        parent of the failing field" (settings: ``settings.llm is missing 'model'``)."""
        for err in exc.errors(include_url=False, include_input=False):
            parts = [p for p in err["loc"] if p not in ("openai_compatible", "rules")]
            loc = _loc(prefix, parts)
            if subject is None:
                subj, rel = _loc(prefix, parts[:-1]), _loc("", parts[-1:])
            else:
                subj, rel = subject, _loc("", parts)
            field_name = next((str(p) for p in reversed(parts) if isinstance(p, str)), "")
            etype = err["type"]
            text = err["msg"]
            if text.startswith("Input should"):
                text = "should" + text[len("Input should"):]
            elif text:
                text = text[:1].lower() + text[1:]
            if etype == "missing":
                msg = f"{subj} is missing '{rel}'"
            elif etype == "extra_forbidden":
                if _SECRETISH.search(field_name):
                    msg = f"{subj} has a field '{rel}'; {_SECRET_HINT}"
                else:
                    msg = f"{subj} has an unknown field '{rel}'"
            elif etype == "string_pattern_mismatch" and field_name == "id":
                msg = f"{subj}: ids are 1-64 characters of letters, digits, '_', '-', '.' or ':'"
            elif etype == "string_pattern_mismatch" and field_name == "name":
                msg = f"{subj}: '{rel}' must be a variable name: letters, digits and '_', not starting with a digit"
            elif etype == "string_pattern_mismatch" and field_name == "language":
                msg = f"{subj}: 'language' must be a language tag like 'en' or 'en-US'"
            elif etype in ("union_tag_invalid", "union_tag_not_found"):
                msg = f"{loc}: 'provider' must be 'rules' or 'openai_compatible'"
                loc = _loc(prefix, [*parts, "provider"])
            else:
                msg = f"{subj}: '{rel}' {text}" if rel else f"{subj}: {text}"
            self.error(loc, msg)

    # -- entry --

    def run(self, obj: Any) -> CheckResult:
        if isinstance(obj, str | bytes | bytearray):
            try:
                obj = json.loads(obj)
            except ValueError as exc:
                self.error("", f"the workflow definition is not valid JSON: {exc}")
                return CheckResult(None, self.errors, self.warnings)
        if not isinstance(obj, Mapping):
            self.error("", "a workflow definition must be a JSON object with 'nodes' and 'edges'")
            return CheckResult(None, self.errors, self.warnings)

        for key in obj:
            if key not in _TOP_LEVEL:
                self.error(str(key), f"unknown top-level field '{key}' (allowed: {', '.join(_TOP_LEVEL)})")
        if obj.get("version", 1) != 1:
            self.error("version", "unsupported definition version; this server understands version 1")

        nodes = self._parse_nodes(obj.get("nodes"))
        edges = self._parse_edges(obj.get("edges", []))
        settings = self._parse_settings(obj.get("settings", {}))
        variables = self._parse_variables(obj.get("variables", {}))
        meta = obj.get("meta")
        if meta is not None and not isinstance(meta, Mapping):
            self.error("meta", "'meta' must be an object")

        if nodes is not None and edges is not None:
            # Check the graph even when settings or variables are broken, so that one save reports
            # everything; the mode then comes from the raw provider name.
            graph_settings = settings
            if graph_settings is None:
                raw_llm = (obj.get("settings") or {}).get("llm") if isinstance(obj.get("settings"), Mapping) \
                    else None
                llm_raw = raw_llm if isinstance(raw_llm, Mapping) else {}
                graph_settings = Settings()
                if llm_raw.get("provider") == "openai_compatible":
                    graph_settings.llm = OpenAICompatLLM.model_construct(provider="openai_compatible")
            self._check_graph(nodes, edges, graph_settings, variables or {})

        if self.errors or nodes is None or edges is None or settings is None or variables is None:
            return CheckResult(None, self.errors, self.warnings)
        definition = WorkflowDefinition(
            nodes=[n for n in nodes if n is not None],
            edges=[e for e in edges if e is not None],
            settings=settings,
            variables=variables,
            meta=dict(meta) if meta else None,
        )
        definition._warnings = list(self.warnings)
        definition._checked = True
        return CheckResult(definition, self.errors, self.warnings)

    # -- parsing, element by element, so that every message can name its node or edge --

    def _parse_nodes(self, raw: Any) -> list[StartNode | AgentNode | EndNode | None] | None:
        if raw is None:
            self.error("nodes", "a workflow needs a 'nodes' list with exactly one start node")
            return None
        if not isinstance(raw, list):
            self.error("nodes", "'nodes' must be a list")
            return None
        if not raw:
            self.error("nodes", "a workflow needs at least a start node")
        out: list[StartNode | AgentNode | EndNode | None] = []
        for i, item in enumerate(raw):
            prefix = f"nodes[{i}]"
            if not isinstance(item, Mapping):
                self.error(prefix, f"{prefix} must be an object with 'id' and 'type'")
                out.append(None)
                continue
            nid = item.get("id")
            subject = f"node '{nid}'" if isinstance(nid, str) and nid else prefix
            ntype = item.get("type")
            if isinstance(nid, str):
                self.raw_node_ids.add(nid)
            raw_extract = item.get("extract")
            for slot in raw_extract if isinstance(raw_extract, list) else []:
                if isinstance(slot, Mapping) and isinstance(slot.get("name"), str):
                    self.raw_slot_names.add(slot["name"])
            self.raw_has_start = self.raw_has_start or ntype == "start"
            if ntype is None:
                self.error(f"{prefix}.type", f"{subject} needs a 'type': start, agent or end")
                out.append(None)
                continue
            cls = NODE_CLASSES.get(ntype) if isinstance(ntype, str) else None
            if cls is None:
                self.error(f"{prefix}.type", f"{subject} has unknown type {ntype!r}; use start, agent or end")
                out.append(None)
                continue
            subject = f"{ntype} node '{nid}'" if isinstance(nid, str) and nid else f"{ntype} node {prefix}"
            try:
                out.append(cls.model_validate(item))
            except ValidationError as exc:
                self._pydantic(exc, prefix, subject)
                out.append(None)
        return out

    def _parse_edges(self, raw: Any) -> list[Edge | None] | None:
        if not isinstance(raw, list):
            self.error("edges", "'edges' must be a list")
            return None
        out: list[Edge | None] = []
        derived = _derived_edge_ids(raw)
        for i, item in enumerate(raw):
            prefix = f"edges[{i}]"
            if not isinstance(item, Mapping):
                self.error(prefix, f"{prefix} must be an object with 'from' and 'to'")
                out.append(None)
                continue
            if i in derived:
                item = {**item, "id": derived[i]}
            eid = item.get("id")
            subject = f"edge '{eid}'" if isinstance(eid, str) and eid else f"edge {prefix}"
            if "from_" in item and "from" not in item:
                # populate_by_name would accept it; the JSON form is "from", keep one spelling.
                self.error(f"{prefix}.from_", f"{subject}: write 'from', not 'from_'")
                out.append(None)
                continue
            try:
                out.append(Edge.model_validate(item))
            except ValidationError as exc:
                self._pydantic(exc, prefix, subject)
                out.append(None)
        return out

    def _parse_settings(self, raw: Any) -> Settings | None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            self.error("settings", "'settings' must be an object")
            return None
        try:
            settings = Settings.model_validate(raw)
        except ValidationError as exc:
            self._pydantic(exc, "settings", None)
            return None
        for section in ("llm", "stt", "tts"):
            sub = getattr(settings, section)
            name = getattr(sub, "api_key_secret", None)
            loc = f"settings.{section}.api_key_secret"
            if name is not None:
                if _looks_like_key(name):
                    # Never echo the value: it is probably a real key pasted in the wrong field.
                    self.error(loc, f"settings.{section}: 'api_key_secret' looks like an API key itself; "
                                    f"{_SECRET_HINT}")
                elif not re.match(SECRET_NAME_PATTERN, name):
                    self.error(loc, f"settings.{section}: 'api_key_secret' must be the name of an "
                                    "organization secret (letters, digits, '_', '-', '.')")
        if settings.stt.provider in CLOUD_STT and not settings.stt.api_key_secret:
            self.error("settings.stt.api_key_secret",
                       f"settings.stt: provider '{settings.stt.provider}' needs 'api_key_secret', the name "
                       "of the organization secret holding its API key")
        if settings.tts.provider in CLOUD_TTS and not settings.tts.api_key_secret:
            self.error("settings.tts.api_key_secret",
                       f"settings.tts: provider '{settings.tts.provider}' needs 'api_key_secret', the name "
                       "of the organization secret holding its API key")
        llm = settings.llm
        if isinstance(llm, OpenAICompatLLM) and (problem := base_url_problem(llm.base_url)):
            self.error("settings.llm.base_url", f"settings.llm: 'base_url' {problem}")
        return settings

    def _parse_variables(self, raw: Any) -> dict[str, VariableValue] | None:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            self.error("variables", "'variables' must be an object of name → value")
            return None
        out: dict[str, VariableValue] = {}
        ok = True
        for name, value in raw.items():
            if not isinstance(name, str) or not NAME_RE.match(name):
                self.error(f"variables.{name}", f"variable name {name!r} must be letters, digits and '_'")
                ok = False
            elif value is not None and not isinstance(value, str | int | float | bool):
                self.error(f"variables.{name}", f"variable '{name}' must be a string, number or boolean")
                ok = False
            else:
                out[name] = value
        return out if ok else None

    # -- graph and content checks --

    def _check_graph(
        self,
        nodes: list[StartNode | AgentNode | EndNode | None],
        edges: list[Edge | None],
        settings: Settings,
        variables: dict[str, VariableValue],
    ) -> None:
        mode = "llm" if isinstance(settings.llm, OpenAICompatLLM) else "rules"
        index: dict[str, int] = {}
        for i, node in enumerate(nodes):
            if node is None:
                continue
            if node.id in index:
                self.error(f"nodes[{i}].id",
                           f"node id '{node.id}' is used twice (nodes[{index[node.id]}] and nodes[{i}])")
            else:
                index[node.id] = i
        by_id = {n.id: n for n in nodes if n is not None}

        starts = [(i, n) for i, n in enumerate(nodes) if isinstance(n, StartNode)]
        if not starts and not self.raw_has_start and nodes:
            self.error("nodes", "the workflow has no start node; add one node with \"type\": \"start\" "
                                "and a greeting")
        for i, extra in starts[1:]:
            self.error(f"nodes[{i}].type",
                       f"node '{extra.id}' is a second start node; a workflow has exactly one "
                       f"(the first is '{starts[0][1].id}')")

        known_vars = set(CONTEXT_VARIABLES) | set(variables) | self.raw_slot_names

        for i, node in enumerate(nodes):
            if node is not None:
                self._check_node(i, node, mode, known_vars)

        edge_index: dict[str, int] = {}
        valid_edges: list[tuple[int, Edge]] = []
        for i, edge in enumerate(edges):
            if edge is None:
                continue
            prefix = f"edges[{i}]"
            if edge.id in edge_index:
                self.error(f"{prefix}.id",
                           f"edge id '{edge.id}' is used twice (edges[{edge_index[edge.id]}] and {prefix})")
            else:
                edge_index[edge.id] = i
            ok = True
            src = by_id.get(edge.from_)
            dst = by_id.get(edge.to)
            if src is None:
                ok = False
                if edge.from_ not in self.raw_node_ids:
                    self.error(f"{prefix}.from", f"edge '{edge.id}' starts at unknown node '{edge.from_}'")
            if dst is None:
                ok = False
                if edge.to not in self.raw_node_ids:
                    self.error(f"{prefix}.to", f"edge '{edge.id}' points to unknown node '{edge.to}'")
            if isinstance(src, EndNode):
                ok = False
                self.error(f"{prefix}.from",
                           f"edge '{edge.id}' leaves end node '{src.id}'; end nodes hang up, so they can "
                           "have no outgoing edges")
            if isinstance(dst, StartNode):
                ok = False
                self.error(f"{prefix}.to",
                           f"edge '{edge.id}' points back to start node '{dst.id}'; the greeting is said "
                           "once — point it to an agent node instead")
            self._check_edge_fields(prefix, edge, known_vars)
            if ok:
                valid_edges.append((i, edge))

        self._check_outgoing(nodes, [e for e in edges if e is not None], valid_edges, mode)
        if all(n is not None for n in nodes) and all(e is not None for e in edges):
            # With a broken node or edge the reachability findings would only be noise.
            self._check_reachability(nodes, starts, valid_edges)
        self._check_settings_texts(settings, known_vars)

    def _check_text(self, loc: str, subject: str, field_name: str, text: str | None, known: set[str],
                    required: bool, why: str = "") -> None:
        if text is None:
            if required:
                self.error(loc, f"{subject} needs a '{field_name}'{why}")
            return
        if not text.strip():
            if required:
                self.error(loc, f"{subject} has an empty '{field_name}'{why}")
            else:
                self.error(loc, f"{subject} has an empty '{field_name}'; leave it out instead")
            return
        for bad in malformed_placeholders(text):
            self.error(loc, f"{subject}: malformed placeholder {bad!r} in '{field_name}' (write "
                            "{{name}} or {{name|fallback}}; names are letters, digits, '_' and '.')")
        for m in PLACEHOLDER_RE.finditer(text):
            root = m.group("name").split(".")[0]
            if root not in known and m.group("fallback") is None:
                self.warn(loc, f"{subject} uses {{{{{m.group('name')}}}}} in '{field_name}', which is not a "
                               "call context variable, a workflow variable or an extracted slot; it will be "
                               "empty unless the run provides it (add a fallback: {{name|text}})")

    def _check_node(self, i: int, node: StartNode | AgentNode | EndNode, mode: str, known: set[str]) -> None:
        prefix = f"nodes[{i}]"
        subject = f"{node.type} node '{node.id}'"
        if isinstance(node, StartNode):
            self._check_text(f"{prefix}.greeting", subject, "greeting", node.greeting, known, True,
                             " (spoken first on every call)")
            self._check_text(f"{prefix}.prompt", subject, "prompt", node.prompt, known, False)
            self._check_text(f"{prefix}.reprompt", subject, "reprompt", node.reprompt, known, False)
        elif isinstance(node, AgentNode):
            self._check_text(f"{prefix}.say", subject, "say", node.say, known, mode == "rules",
                             " (what the offline engine says at this node)")
            self._check_text(f"{prefix}.prompt", subject, "prompt", node.prompt, known, mode == "llm",
                             " (the LLM's instructions at this node)")
            self._check_text(f"{prefix}.reprompt", subject, "reprompt", node.reprompt, known, False)
        else:
            self._check_text(f"{prefix}.say", subject, "say", node.say, known, True,
                             " (the last words before hanging up)")
            return
        seen: dict[str, int] = {}
        for k, slot in enumerate(node.extract):
            sloc = f"{prefix}.extract[{k}]"
            if slot.name in seen:
                self.error(f"{sloc}.name", f"{subject} extracts '{slot.name}' twice "
                                           f"(extract[{seen[slot.name]}] and extract[{k}])")
            seen.setdefault(slot.name, k)
            if slot.name in CONTEXT_VARIABLES:
                self.error(f"{sloc}.name", f"{subject}: slot '{slot.name}' would overwrite the call context "
                                           "variable of the same name; choose another name")
            self._check_text(f"{sloc}.ask", f"{subject} slot '{slot.name}'", "ask", slot.ask, known, False)
            if slot.ask and not slot.required:
                self.warn(f"{sloc}.ask", f"{subject} slot '{slot.name}': 'ask' is only said for required slots")
            if slot.after and slot.type != "text":
                self.warn(f"{sloc}.after", f"{subject} slot '{slot.name}': 'after' only applies to text slots")
            for a, phrase in enumerate(slot.after):
                if not phrase.strip():
                    self.error(f"{sloc}.after[{a}]", f"{subject} slot '{slot.name}' has an empty 'after' phrase")
            if slot.min_digits > slot.max_digits:
                self.error(f"{sloc}.min_digits",
                           f"{subject} slot '{slot.name}': min_digits is larger than max_digits")

    def _check_edge_fields(self, prefix: str, edge: Edge, known: set[str]) -> None:
        subject = f"edge '{edge.id}'"
        if edge.condition is not None:
            self._check_text(f"{prefix}.condition", subject, "condition", edge.condition, known, False)
        for k, kw in enumerate(edge.keywords):
            if not kw.strip() or not nlu.normalize(kw):
                self.error(f"{prefix}.keywords[{k}]", f"{subject} has an empty keyword (keywords[{k}])")
        for k, ex in enumerate(edge.examples):
            if not ex.strip() or not nlu.normalize(ex):
                self.error(f"{prefix}.examples[{k}]", f"{subject} has an empty example (examples[{k}])")
        if edge.dtmf is not None:
            bad = sorted({c for c in edge.dtmf if c.upper() not in DTMF_KEYS})
            if not edge.dtmf:
                self.error(f"{prefix}.dtmf", f"{subject} has an empty 'dtmf'; leave it out or give keys")
            elif bad:
                self.error(f"{prefix}.dtmf", f"{subject} has dtmf {edge.dtmf!r} with invalid key(s) "
                                             f"{''.join(bad)!r}; only 0-9, *, # and A-D exist")
            elif len(edge.dtmf) > 16:
                self.error(f"{prefix}.dtmf", f"{subject}: dtmf is limited to 16 keys")
        for k, name in enumerate(edge.requires):
            if not NAME_RE.match(name):
                self.error(f"{prefix}.requires[{k}]", f"{subject}: {name!r} is not a variable name")
            elif name not in known:
                self.warn(f"{prefix}.requires[{k}]",
                          f"{subject} requires '{name}', which no node extracts and the workflow does not "
                          "define; the edge is only taken if the run provides it")

    def _check_outgoing(
        self,
        nodes: list[StartNode | AgentNode | EndNode | None],
        parsed_edges: list[Edge],
        valid_edges: list[tuple[int, Edge]],
        mode: str,
    ) -> None:
        for i, node in enumerate(nodes):
            if node is None or isinstance(node, EndNode):
                continue
            out = [(k, e) for k, e in valid_edges if e.from_ == node.id]
            # Edges that exist but are broken (already reported) still count as a way out.
            has_any = any(e.from_ == node.id for e in parsed_edges)
            if isinstance(node, StartNode):
                if not has_any:
                    self.error(f"nodes[{i}]", f"start node '{node.id}' has no outgoing edge; connect it to an "
                                              "agent node (or to an end node to play a message and hang up)")
                elif len(out) == 1 and not out[0][1].is_catch_all:
                    k, e = out[0]
                    self.warn(f"edges[{k}]", f"edge '{e.id}' is the only edge of start node '{node.id}', so it "
                                             "is followed right after the greeting; its keywords, examples "
                                             "and dtmf are never used")
            elif not has_any:
                self.warn(f"nodes[{i}]", f"agent node '{node.id}' has no outgoing edge: the call stays there "
                                         "until the caller hangs up or a timeout ends it")
            auto = isinstance(node, StartNode) and len(out) == 1
            if mode == "llm" and not auto:
                for k, e in out:
                    if not (e.condition and e.condition.strip()):
                        self.error(f"edges[{k}].condition",
                                   f"edge '{e.id}' needs a 'condition' in LLM mode: it describes when the "
                                   f"model should move from '{node.id}' to '{e.to}'")
            dtmf_seen: list[tuple[int, Edge]] = []
            for k, e in out:
                if not e.dtmf or any(c not in DTMF_KEYS for c in e.dtmf.upper()):
                    continue
                for _k2, e2 in dtmf_seen:
                    a, b = e2.dtmf.upper(), e.dtmf.upper()  # type: ignore[union-attr]
                    if a == b:
                        self.error(f"edges[{k}].dtmf", f"edge '{e.id}' and edge '{e2.id}' both leave node "
                                                       f"'{node.id}' on dtmf '{e.dtmf}'")
                    elif b.startswith(a) or a.startswith(b):
                        short, long_ = (e2, e) if len(a) < len(b) else (e, e2)
                        self.error(f"edges[{k}].dtmf",
                                   f"node '{node.id}': dtmf '{short.dtmf}' of edge '{short.id}' is a prefix of "
                                   f"'{long_.dtmf}' of edge '{long_.id}', so '{long_.id}' could never be taken")
                dtmf_seen.append((k, e))
            if mode == "rules" and not auto:
                catch_alls = [(k, e) for k, e in out if e.is_catch_all and not e.requires]
                for k, e in catch_alls[1:]:
                    self.warn(f"edges[{k}]", f"edge '{e.id}' is a second catch-all (no keywords, examples, "
                                             f"dtmf or requires) of node '{node.id}'; only the first, "
                                             f"'{catch_alls[0][1].id}', is ever taken offline")
                kw_owner: dict[tuple[str, ...], str] = {}
                for k, e in out:
                    for kw in e.keywords:
                        key = tuple(nlu.normalize(kw))
                        if key in kw_owner and kw_owner[key] != e.id:
                            self.warn(f"edges[{k}].keywords",
                                      f"keyword '{kw}' is on edges '{kw_owner[key]}' and '{e.id}' of node "
                                      f"'{node.id}'; the first edge wins")
                        kw_owner.setdefault(key, e.id)

    def _check_reachability(
        self,
        nodes: list[StartNode | AgentNode | EndNode | None],
        starts: list[tuple[int, StartNode]],
        valid_edges: list[tuple[int, Edge]],
    ) -> None:
        if not starts:
            return
        reached = {starts[0][1].id}
        frontier = [starts[0][1].id]
        while frontier:
            current = frontier.pop()
            for _, e in valid_edges:
                if e.from_ == current and e.to not in reached:
                    reached.add(e.to)
                    frontier.append(e.to)
        for i, node in enumerate(nodes):
            if node is not None and node.id not in reached and not isinstance(node, StartNode):
                self.warn(f"nodes[{i}]", f"{node.type} node '{node.id}' cannot be reached from the start node")
        if not any(isinstance(n, EndNode) and n.id in reached for n in nodes):
            self.warn("nodes", "no end node can be reached: calls only end when the caller hangs up, stays "
                               "silent, or reaches max_call_duration_s")

    def _check_settings_texts(self, settings: Settings, known: set[str]) -> None:
        for key in Phrases.model_fields:
            self._check_text(f"settings.phrases.{key}", "settings.phrases", key,
                             getattr(settings.phrases, key), known, True)
        if isinstance(settings.llm, OpenAICompatLLM):
            self._check_text("settings.llm.system_prompt", "settings.llm", "system_prompt",
                             settings.llm.system_prompt, known, False)


# --- the example -----------------------------------------------------------------------------------


def example_definition() -> Json:
    """A small, valid receptionist workflow (offline mode) used by the dashboard and the tests.

    It shows every feature once: a greeting that leads straight into a menu, keywords, examples and
    DTMF on the menu, slots with a gated catch-all edge (booking), a yes/no confirmation, a free-text
    message, templating with fallbacks, and three end nodes."""
    return {
        "version": 1,
        "variables": {"company": "Acme Dental"},
        "settings": {
            "llm": {"provider": "rules"},
            "stt": {"provider": "offline"},
            "tts": {"provider": "offline"},
            "max_call_duration_s": 600,
            "idle_timeout_s": 15,
            "barge_in": True,
            "turn_end_silence_ms": 200,
            "language": "en",
        },
        "nodes": [
            {
                "id": "greeting",
                "type": "start",
                "greeting": "Hello, thanks for calling {{company|our office}}. How can I help you today?",
            },
            {
                "id": "menu",
                "type": "agent",
                "prompt": "You are the friendly receptionist of {{company|the practice}}. Find out whether the "
                          "caller wants to book an appointment, hear the opening hours, or leave a message.",
                "say": "I can book an appointment, tell you our opening hours, or take a message. "
                       "Which would you like? You can also press 1, 2 or 3.",
            },
            {
                "id": "booking",
                "type": "agent",
                "prompt": "Ask which day and time suit the caller for an appointment.",
                "say": "Sure. Which day and time would suit you?",
                "extract": [
                    {"name": "day", "type": "date"},
                    {"name": "time", "type": "time", "required": True,
                     "ask": "What time would suit you? For example, ten AM or three thirty PM."},
                ],
            },
            {
                "id": "confirm",
                "type": "agent",
                "prompt": "Confirm the appointment for {{day|the day they chose}} at {{time}}.",
                "say": "So that's {{day|the day you mentioned}} at {{time}}. Shall I book it?",
                "reprompt": "Sorry, please say yes to book {{time}}, or no to pick another time.",
            },
            {
                "id": "message",
                "type": "agent",
                "prompt": "Take a short message from the caller.",
                "say": "Of course. Please tell me your name and your message.",
                "extract": [{"name": "message", "type": "text", "after": ["my message is"]}],
            },
            {
                "id": "booked",
                "type": "end",
                "say": "Great, you're booked for {{day|}} at {{time}}. We'll text a reminder to "
                       "{{caller_number|your phone}}. Goodbye!",
            },
            {
                "id": "hours",
                "type": "end",
                "say": "We're open Monday to Friday from 9 AM to 5 PM. Thanks for calling, goodbye!",
            },
            {
                "id": "message_taken",
                "type": "end",
                "say": "Thank you, I'll pass your message on. Goodbye!",
            },
        ],
        "edges": [
            {"id": "start", "from": "greeting", "to": "menu"},
            {
                "id": "to_booking", "from": "menu", "to": "booking", "dtmf": "1",
                "condition": "The caller wants to book, make or schedule an appointment.",
                "keywords": ["appointment", "book", "booking", "schedule", "check up", "cleaning"],
                "examples": ["I need to see the dentist", "can I come in next week"],
            },
            {
                "id": "to_hours", "from": "menu", "to": "hours", "dtmf": "2",
                "condition": "The caller asks when the practice is open.",
                "keywords": ["hours", "opening hours", "open", "close", "closing"],
                "examples": ["what time do you shut", "are you there on saturday"],
            },
            {
                "id": "to_message", "from": "menu", "to": "message", "dtmf": "3",
                "condition": "The caller wants to leave a message or talk to a person.",
                "keywords": ["message", "speak to someone", "talk to someone", "person", "call me back"],
                "examples": ["can someone ring me back"],
            },
            {
                "id": "got_time", "from": "booking", "to": "confirm", "requires": ["time"],
                "condition": "The caller has said which time (and ideally which day) suits them.",
            },
            {
                "id": "confirmed", "from": "confirm", "to": "booked", "dtmf": "1",
                "condition": "The caller confirms the appointment.",
                "keywords": ["yes", "yeah", "yep", "correct", "please do", "book it", "sure"],
            },
            {
                "id": "rejected", "from": "confirm", "to": "booking", "dtmf": "2",
                "condition": "The caller wants a different day or time.",
                "keywords": ["no", "nope", "change", "different", "another time"],
            },
            {
                "id": "took_message", "from": "message", "to": "message_taken", "requires": ["message"],
                "condition": "The caller has left their message.",
            },
        ],
    }
