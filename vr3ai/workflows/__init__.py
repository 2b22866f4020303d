"""Workflows: the node graph an agent follows (:mod:`.definition`), its templating
(:mod:`.templating`), the per-call state machine (:mod:`.engine`), the offline language helpers
(:mod:`.nlu`) and the choice of responder (:mod:`.factory`)."""

from vr3ai.workflows.definition import (
    DefinitionError,
    WorkflowDefinition,
    check_definition,
    example_definition,
    validate_definition,
)
from vr3ai.workflows.templating import Rendered, render

__all__ = [
    "DefinitionError",
    "Rendered",
    "WorkflowDefinition",
    "check_definition",
    "example_definition",
    "render",
    "validate_definition",
]
