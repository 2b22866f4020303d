"""Templating of workflow texts: ``{{variable}}`` with an optional ``{{variable|fallback}}``.

Syntax (deliberately tiny; Jinja would let a workflow author run loops and filters on a live call):

* ``{{caller_number}}`` inserts a variable. Spaces inside the braces are allowed: ``{{ caller_number }}``.
* Names are letters, digits and ``_``, not starting with a digit; dots walk into nested objects the run
  carries: ``{{customer.name}}`` reads ``variables["customer"]["name"]`` (a flat key ``"customer.name"``
  is tried first).
* ``{{name|there}}`` renders ``there`` when ``name`` is missing, ``None`` or empty. The fallback is
  literal text up to ``}}``; it may be empty (``{{name|}}`` = "say nothing, and don't report it") and
  may be wrapped in double quotes to keep leading or trailing spaces: ``{{title|" "}}``.
* A variable with no value and no fallback renders as the empty string and is reported in
  :attr:`Rendered.missing`, so the run can show a warning instead of the call failing.
* Values: strings as they are, ``True``/``False`` as ``yes``/``no``, whole floats without ``.0``, lists
  joined with ``", "``.
* There is no escaping; a ``{{`` that does not start a well-formed placeholder is left as it is and
  reported by :func:`malformed_placeholders` (validation turns that into an error, because a TTS
  voice would read the braces out).

When a placeholder renders empty the result is tidied (double spaces collapsed, no space before
punctuation), so ``"Hello {{name}}, welcome"`` becomes ``"Hello, welcome"`` rather than
``"Hello , welcome"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PLACEHOLDER_RE = re.compile(
    r"\{\{\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\s*(?:\|(?P<fallback>[^{}]*?))?\s*\}\}"
)
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

CONTEXT_VARIABLES: tuple[str, ...] = ("caller_number", "called_number", "direction", "call_id", "provider")
"""The inbound call context of the product guide, present on every run."""


@dataclass(frozen=True, slots=True)
class Rendered:
    text: str
    used: tuple[str, ...]
    """Every variable the template references, in order of first use."""
    missing: tuple[str, ...]
    """Referenced variables that had no value and no fallback (rendered as "")."""


def _lookup(variables: Mapping[str, Any], name: str) -> Any:
    if name in variables:
        return variables[name]
    value: Any = variables
    for part in name.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        else:
            return None
    return value


def format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple):
        return ", ".join(format_value(v) for v in value)
    return str(value)


def _fallback_text(raw: str) -> str:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return raw[1:-1]
    return raw


def render(template: str, variables: Mapping[str, Any]) -> Rendered:
    """Render ``template`` against ``variables`` (see the module docstring for the syntax)."""
    used: list[str] = []
    missing: list[str] = []
    emptied = False

    def sub(m: re.Match[str]) -> str:
        nonlocal emptied
        name = m.group("name")
        if name not in used:
            used.append(name)
        text = format_value(_lookup(variables, name))
        if text == "":
            fallback = m.group("fallback")
            if fallback is None:
                if name not in missing:
                    missing.append(name)
            else:
                text = _fallback_text(fallback)
        if text == "":
            emptied = True
        return text

    out = PLACEHOLDER_RE.sub(sub, template)
    if emptied:
        out = re.sub(r"[ \t]{2,}", " ", out)
        out = re.sub(r"[ \t]+([,.!?;:])", r"\1", out)
        out = out.strip()
    return Rendered(out, tuple(used), tuple(missing))


def variables_in(template: str) -> list[str]:
    """Names referenced by ``template``, in order of first use (dotted names as written)."""
    names: list[str] = []
    for m in PLACEHOLDER_RE.finditer(template):
        if m.group("name") not in names:
            names.append(m.group("name"))
    return names


def required_variables_in(template: str) -> list[str]:
    """Names referenced *without* a fallback: those render empty when the run lacks them."""
    names: list[str] = []
    for m in PLACEHOLDER_RE.finditer(template):
        if m.group("fallback") is None and m.group("name") not in names:
            names.append(m.group("name"))
    return names


def malformed_placeholders(template: str) -> list[str]:
    """Snippets that look like a placeholder but are not a well-formed one: ``{{first name}}``,
    an unclosed ``{{name``, or a stray ``}}`` as in ``{caller_number}}``."""
    spans = [(m.start(), m.end()) for m in PLACEHOLDER_RE.finditer(template)]
    bad: list[str] = []
    for m in re.finditer(r"\{\{", template):
        if any(s <= m.start() < e for s, e in spans):
            continue
        close = template.find("}}", m.start())
        end = close + 2 if close != -1 else min(len(template), m.start() + 30)
        spans.append((m.start(), end))
        bad.append(template[m.start() : end])
    for m in re.finditer(r"\}\}", template):
        if not any(s <= m.start() < e for s, e in spans):
            bad.append(template[max(0, m.start() - 20) : m.end()])
    return bad
