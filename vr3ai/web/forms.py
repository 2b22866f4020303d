"""Form fields ⇄ API payloads, and the structured workflow editor.

HTML forms send strings; the API models want lists, booleans and ``None``. The conversions here are
the only dashboard-specific rules, and they are deliberately dumb (split a list, map empty to
"unchanged" for passwords): every real check happens in the API models.

The workflow editor edits the parts of a definition a person changes most (node ids, types, what
each node says, its prompt; edges with their condition, keywords and DTMF) and keeps everything
else (settings, variables, slots, examples, ...) from the definition the form was rendered from
(``base_json``), matched by row position. Anything finer is edited in the raw JSON.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from vr3ai.telephony.registry import DEFAULT_PROVIDER, PROVIDERS, ProviderSpec

CONFIG_TEXT_FIELDS = (
    "name",
    "ari_endpoint_url",
    "stasis_app_name",
    "websocket_client_name",
    "from_extensions",
    "dial_template",
    "media_username",
)
SECRET_FIELDS = ("app_password", "media_password")


def _text(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def split_list(raw: str) -> list[str]:
    return [p for p in re.split(r"[,\s]+", raw) if p]


def default_name(endpoint_url: str) -> str:
    try:
        host = urlsplit(endpoint_url.strip()).hostname
    except ValueError:
        host = None
    return f"Asterisk {host}" if host else "Asterisk ARI"


@dataclass
class ConfigForm:
    """What the configuration form shows: submitted or stored values, never a password."""

    values: dict[str, str] = field(default_factory=dict)
    enabled: bool = True
    has_app_password: bool = False
    has_media_password: bool = False

    @classmethod
    def from_row(cls, row: Any) -> ConfigForm:
        return cls(
            values={
                "name": row.name,
                "ari_endpoint_url": row.ari_endpoint_url,
                "stasis_app_name": row.stasis_app_name,
                "websocket_client_name": row.websocket_client_name,
                "from_extensions": ", ".join(row.from_extensions or []),
                "dial_template": row.dial_template,
                "media_username": row.media_username or "",
            },
            enabled=row.enabled,
            has_app_password=bool(row.app_password_enc),
            has_media_password=bool(row.media_password_enc),
        )

    @classmethod
    def blank(cls) -> ConfigForm:
        return cls(values={"dial_template": "PJSIP/{to}"})

    @classmethod
    def from_form(cls, form: Mapping[str, Any]) -> ConfigForm:
        return cls(values={k: _text(form, k) for k in CONFIG_TEXT_FIELDS}, enabled=_text(form, "enabled") == "on")


def config_payload(form: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    """The API body for a submitted configuration form. Passwords left empty on edit mean "keep"."""
    v = {k: _text(form, k) for k in CONFIG_TEXT_FIELDS}
    data: dict[str, Any] = {
        "name": v["name"].strip() or (default_name(v["ari_endpoint_url"]) if creating else v["name"]),
        "ari_endpoint_url": v["ari_endpoint_url"],
        "stasis_app_name": v["stasis_app_name"],
        "websocket_client_name": v["websocket_client_name"],
        "from_extensions": split_list(v["from_extensions"]),
        "dial_template": v["dial_template"] or "PJSIP/{to}",
        "media_username": v["media_username"] or None,
        "enabled": _text(form, "enabled") == "on",
    }
    if creating:
        data["provider"] = _text(form, "provider") or DEFAULT_PROVIDER.key
    for name in SECRET_FIELDS:
        value = _text(form, name)
        if value or (creating and name == "app_password"):
            data[name] = value
    return data


def provider_spec(key: str) -> ProviderSpec | None:
    return PROVIDERS.get(key)


# --- workflows ------------------------------------------------------------------------------------

NODE_TYPES = ("start", "agent", "end")
_NODE_KEYS = {
    "start": {"id", "type", "greeting", "prompt", "reprompt", "extract", "name", "position", "meta"},
    "agent": {"id", "type", "say", "prompt", "reprompt", "extract", "name", "position", "meta"},
    "end": {"id", "type", "say", "name", "position", "meta"},
}
_ROW = re.compile(r"^(node|edge)-(\d+)-([a-z_]+)$")


@dataclass
class NodeRow:
    index: int
    id: str = ""
    type: str = "agent"
    text: str = ""
    prompt: str = ""
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class EdgeRow:
    index: int
    id: str = ""
    from_: str = ""
    to: str = ""
    condition: str = ""
    keywords: str = ""
    dtmf: str = ""
    errors: dict[str, str] = field(default_factory=dict)


def node_text_key(node_type: str) -> str:
    return "greeting" if node_type == "start" else "say"


def rows_from_definition(definition: Any) -> tuple[list[NodeRow], list[EdgeRow]]:
    nodes_raw = definition.get("nodes") if isinstance(definition, dict) else None
    edges_raw = definition.get("edges") if isinstance(definition, dict) else None
    nodes: list[NodeRow] = []
    for i, n in enumerate(nodes_raw if isinstance(nodes_raw, list) else []):
        if not isinstance(n, dict):
            continue
        ntype = str(n.get("type") or "agent")
        nodes.append(
            NodeRow(
                i, str(n.get("id") or ""), ntype, str(n.get(node_text_key(ntype)) or ""), str(n.get("prompt") or "")
            )
        )
    edges: list[EdgeRow] = []
    for i, e in enumerate(edges_raw if isinstance(edges_raw, list) else []):
        if not isinstance(e, dict):
            continue
        kws = e.get("keywords")
        edges.append(
            EdgeRow(
                i,
                str(e.get("id") or ""),
                str(e.get("from") or ""),
                str(e.get("to") or ""),
                str(e.get("condition") or ""),
                ", ".join(str(k) for k in kws) if isinstance(kws, list) else "",
                str(e.get("dtmf") or ""),
            )
        )
    return nodes, edges


def _set_or_pop(obj: dict[str, Any], key: str, value: str) -> None:
    if value.strip():
        obj[key] = value
    else:
        obj.pop(key, None)


def merge_structured(form: Mapping[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Apply the structured editor's rows to ``base`` (a copy) and return the new definition."""
    rows: dict[tuple[str, int], dict[str, str]] = {}
    for key in form:
        m = _ROW.match(key)
        if m:
            rows.setdefault((m.group(1), int(m.group(2))), {})[m.group(3)] = _text(form, key)
    definition = copy.deepcopy(base)
    base_nodes = base.get("nodes") if isinstance(base.get("nodes"), list) else []
    base_edges = base.get("edges") if isinstance(base.get("edges"), list) else []

    nodes: list[dict[str, Any]] = []
    for _key, r in sorted((k, v) for k, v in rows.items() if k[0] == "node"):
        orig = _orig(r, base_nodes)
        if r.get("remove") == "on" or (orig is None and not r.get("id", "").strip()):
            continue
        node = copy.deepcopy(base_nodes[orig]) if orig is not None and isinstance(base_nodes[orig], dict) else {}
        ntype = r.get("type") or node.get("type") or "agent"
        # The row's text replaces either key: a type change moves it (start: greeting, else say).
        node.pop("greeting", None)
        node.pop("say", None)
        node["id"] = r.get("id", "").strip()
        node["type"] = ntype
        _set_or_pop(node, node_text_key(ntype), r.get("text", ""))
        _set_or_pop(node, "prompt", r.get("prompt", ""))
        allowed = _NODE_KEYS.get(ntype)
        if allowed:
            node = {k: v for k, v in node.items() if k in allowed}
        nodes.append(node)

    edges: list[dict[str, Any]] = []
    for _key, r in sorted((k, v) for k, v in rows.items() if k[0] == "edge"):
        orig = _orig(r, base_edges)
        if r.get("remove") == "on" or (orig is None and not r.get("id", "").strip()):
            continue
        edge = copy.deepcopy(base_edges[orig]) if orig is not None and isinstance(base_edges[orig], dict) else {}
        edge_id = r.get("id", "").strip()
        if edge_id:
            edge["id"] = edge_id
        else:  # an edge stored without an id (the original format) keeps the id derived from from/to
            edge.pop("id", None)
        edge["from"] = r.get("from", "").strip()
        edge["to"] = r.get("to", "").strip()
        _set_or_pop(edge, "condition", r.get("condition", ""))
        _set_or_pop(edge, "dtmf", r.get("dtmf", "").strip())
        keywords = [k.strip() for k in r.get("keywords", "").split(",") if k.strip()]
        if keywords:
            edge["keywords"] = keywords
        else:
            edge.pop("keywords", None)
        edges.append(edge)

    definition["nodes"] = nodes
    definition["edges"] = edges
    definition.setdefault("version", 1)
    return definition


def _orig(row: dict[str, str], base_list: list[Any]) -> int | None:
    raw = row.get("orig", "")
    if raw.isdigit() and int(raw) < len(base_list):
        return int(raw)
    return None


_LOC = re.compile(r"^(nodes|edges)\[(\d+)\](?:\.([A-Za-z_]+))?")
_NODE_FIELD = {"id": "id", "type": "type", "greeting": "text", "say": "text", "prompt": "prompt"}
_EDGE_FIELD = {"id": "id", "from": "from", "to": "to", "condition": "condition", "keywords": "keywords", "dtmf": "dtmf"}


def attach_errors(errors: list[dict[str, Any]], nodes: list[NodeRow], edges: list[EdgeRow]) -> list[str]:
    """Put each validation error next to its row and field; return the ones that belong to no row."""
    rest: list[str] = []
    for err in errors:
        loc = str(err.get("loc") or "")
        msg = str(err.get("msg") or "invalid")
        m = _LOC.match(loc)
        if m:
            rows: list[Any] = nodes if m.group(1) == "nodes" else edges
            row = next((r for r in rows if r.index == int(m.group(2))), None)
            mapping = _NODE_FIELD if m.group(1) == "nodes" else _EDGE_FIELD
            if row is not None:
                key = mapping.get(m.group(3) or "", "row")
                sub = loc[m.end(2) + 2 :]
                if key == "row" and sub:
                    msg = f"{sub}: {msg}"
                prev = row.errors.get(key)
                row.errors[key] = f"{prev}; {msg}" if prev else msg
                continue
        rest.append(f"{loc}: {msg}" if loc else msg)
    return rest


def parse_json_definition(text: str) -> tuple[dict[str, Any] | None, str]:
    """(definition, "") or (None, a message with line and column)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"Not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}."
    if not isinstance(value, dict):
        return None, "The definition must be a JSON object ({...})."
    return value, ""
