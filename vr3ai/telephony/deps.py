"""What a telephony connection and its calls need from the rest of the process, and nothing more.

Built once by the manager from the process's ``Services``; a connection hands it to every call it
creates. Keeping it this narrow means a call cannot reach the database except through the call
store (``vr3ai.core.calls``), and a test can build one from a store on a real database, a fake
media registry and a test agent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vr3ai.agent.base import Agent, CallContext
from vr3ai.core.calls import CallStore
from vr3ai.core.outbound import OutboundPolicy

if TYPE_CHECKING:
    from vr3ai.telephony.ports import MediaChannels, ProcessServices

AgentFactory = Callable[[CallContext], Agent]


@dataclass(frozen=True)
class CallDeps:
    store: CallStore
    media: MediaChannels
    agent_factory: AgentFactory
    outbound: OutboundPolicy
    """Where requests made for this tenant may go: ARI, and the agent's cloud services."""
    data_dir: Path
    """Recordings go to ``data_dir/recordings``."""
    public_url: Callable[[], str]
    """How Asterisk reaches this process (read when an error text needs it: the port may be bound late)."""
    ring_timeout_s: float
    call_starts_per_s: float
    call_starts_burst: int

    @classmethod
    def from_services(cls, services: ProcessServices, agent_factory: AgentFactory) -> CallDeps:
        if services.media is None:
            raise ValueError("the media registry must exist before telephony starts")
        settings = services.settings
        return cls(
            store=CallStore(services.db, services.runs, services.box),
            media=services.media,
            agent_factory=agent_factory,
            outbound=services.outbound,
            data_dir=Path(settings.storage.data_dir),
            public_url=settings.effective_public_url,
            ring_timeout_s=settings.server.ring_timeout_s,
            call_starts_per_s=settings.server.call_starts_per_s,
            call_starts_burst=settings.server.call_starts_burst,
        )
