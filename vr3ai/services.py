"""The process's long-lived services, built once in the app's lifespan and shared by every route.

The media registry, the voice runtime and the telephony manager are typed by name only
(``TYPE_CHECKING``): they sit in layers above this module and are attached by ``vr3ai.app``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vr3ai.core.outbound import OutboundPolicy
from vr3ai.core.quota import QuotaService
from vr3ai.core.runs import RunService
from vr3ai.core.secrets import SecretBox
from vr3ai.db.session import Database
from vr3ai.files import private_dir
from vr3ai.settings import Settings

if TYPE_CHECKING:
    from vr3ai.agent.services.runtime import VoiceRuntime
    from vr3ai.media.server import MediaRegistry
    from vr3ai.telephony.manager import TelephonyManager


@dataclass
class Services:
    settings: Settings
    db: Database
    box: SecretBox
    quota: QuotaService
    runs: RunService
    telephony: TelephonyManager | None = None
    media: MediaRegistry | None = None
    """Pending media channels awaiting Asterisk's connection (set by ``create_app``)."""
    voice: VoiceRuntime | None = None
    """The offline voice stack's models, when loaded."""
    outbound: OutboundPolicy = field(init=False)
    """Where requests made for a tenant may go (``settings.server.outbound_allow``)."""

    def __post_init__(self) -> None:
        # Invalid VR3AI_OUTBOUND_ALLOW entries fail here, at start-up, with the entry named.
        self.outbound = OutboundPolicy.from_settings(self.settings)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        private_dir(settings.storage.data_dir)  # before anything is written into it
        db = Database(settings.resolved_database_url())
        storage = settings.storage
        box = SecretBox.from_settings(storage.secret_key, storage.data_dir, storage.secret_key_previous)
        quota = QuotaService(db)
        return cls(settings=settings, db=db, box=box, quota=quota, runs=RunService(db, quota))
