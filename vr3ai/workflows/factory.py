"""Pick and build the responder a workflow asks for.

``settings.llm.provider`` decides: ``rules`` → :class:`~vr3ai.workflows.responders.rules.RuleResponder`,
``openai_compatible`` → :class:`~vr3ai.workflows.responders.openai_compat.OpenAICompatResponder` with the
API key looked up in the organization's secrets by the name in ``api_key_secret``.

A missing secret does not fail the call: the responder is built without a key and a warning event
says which secret name was not found (many self-hosted servers need no key; a server that does will
answer 401, which the responder turns into a spoken apology and an error event).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from vr3ai.core.outbound import OutboundPolicy
from vr3ai.workflows.definition import OpenAICompatLLM, WorkflowDefinition
from vr3ai.workflows.engine import ensure_definition
from vr3ai.workflows.responder import Responder
from vr3ai.workflows.responders.openai_compat import OpenAICompatResponder
from vr3ai.workflows.responders.rules import RuleResponder


def build_responder(
    definition: WorkflowDefinition | Mapping[str, Any] | str,
    variables: Mapping[str, Any] | None = None,
    secrets: Mapping[str, str] | None = None,
    *,
    http_client: httpx.AsyncClient | None = None,
    policy: OutboundPolicy | None = None,
) -> Responder:
    """The responder for ``definition`` on one call. ``secrets``: organization secrets by name."""
    defn = ensure_definition(definition)
    llm = defn.settings.llm
    if not isinstance(llm, OpenAICompatLLM):
        return RuleResponder(defn, variables)
    api_key: str | None = None
    missing = False
    if llm.api_key_secret:
        api_key = (secrets or {}).get(llm.api_key_secret)
        missing = api_key is None
    responder = OpenAICompatResponder(defn, variables, api_key=api_key, client=http_client, policy=policy)
    if missing:
        responder.state.event("warning", f"organization secret '{llm.api_key_secret}' (settings.llm.api_key_secret) "
                                         "was not found; calling the LLM without an API key")
    return responder
