"""Caller ID is attacker controlled: whoever places the call chooses it (SIP From, P-Asserted-Identity),
and it reaches the agent's spoken texts (``{{caller_number}}``) and the LLM's request.

So the run's ``caller_number`` keeps only what a phone number can contain, ``[0-9+*#]``, at most
32 characters; what the network delivered is kept as ``caller_id_raw`` in the run's context (for the
operator, capped at 256 characters), and never handed to the agent: templates cannot speak it and
no prompt contains it (:func:`agent_variables`).
"""

from __future__ import annotations

from typing import Any

CALLER_NUMBER_MAX = 32
CALLER_ID_RAW_MAX = 256
_ALLOWED = frozenset("0123456789+*#")
PRIVATE_CONTEXT = ("caller_id_raw",)
"""Context keys the run stores but the agent (templating, LLM) never sees."""


def normalize_caller_number(raw: Any) -> str:
    """``'+1 (555) 010-0199'`` → ``'+15550100199'``; anything but ``[0-9+*#]`` is dropped."""
    return "".join(c for c in str(raw or "") if c in _ALLOWED)[:CALLER_NUMBER_MAX]


def caller_context(raw: Any) -> dict[str, str]:
    """The context entries for a caller ID as delivered: normalised number and the capped raw value."""
    text = str(raw or "")
    return {"caller_number": normalize_caller_number(text), "caller_id_raw": text[:CALLER_ID_RAW_MAX]}


def agent_variables(context: dict[str, Any]) -> dict[str, Any]:
    """The run context as the agent may see it."""
    return {k: v for k, v in context.items() if k not in PRIVATE_CONTEXT}
