"""Telephony providers: what a configuration of each kind asks for, and how to run it.

A provider is a folder plus an entry here (the Dograh pattern): the API validates ``provider``
against :data:`PROVIDERS`, the dashboard renders the fields with the guide's words, and the manager
loads a configuration row with ``load`` and starts it with ``connect``. This is the one list of
providers; nothing else spells their keys. Only Asterisk ARI exists today, so the connection type
is ARI's own; a second provider would put a Protocol of what the manager uses in its place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vr3ai.core.secrets import SecretBox
from vr3ai.db.models import TelephonyConfiguration
from vr3ai.telephony.ari.config import AriConfig
from vr3ai.telephony.ari.connection import AriConnection
from vr3ai.telephony.deps import CallDeps


@dataclass(frozen=True)
class ProviderField:
    name: str
    label: str
    description: str
    example: str
    secret: bool = False
    required: bool = True


@dataclass(frozen=True)
class ProviderSpec:
    key: str
    label: str
    fields: tuple[ProviderField, ...]
    load: Callable[[TelephonyConfiguration, SecretBox], AriConfig]
    """A decrypted snapshot of a configuration row; ``ValueError`` if it cannot run."""
    connect: Callable[[CallDeps, AriConfig], AriConnection]
    """The connection that listens for the configuration's calls (not started yet)."""


ARI = ProviderSpec(
    key="ari",
    label="Asterisk ARI",
    fields=(
        ProviderField(
            "ari_endpoint_url",
            "ARI Endpoint URL",
            "HTTP base URL of your Asterisk ARI server",
            "http://asterisk.example.com:8088",
        ),
        ProviderField("stasis_app_name", "Stasis App Name", "The ARI username configured in ari.conf", "vr3ai"),
        ProviderField(
            "app_password",
            "App Password",
            "The ARI password configured in ari.conf",
            "your_secure_password",
            secret=True,
        ),
        ProviderField(
            "websocket_client_name", "WebSocket Client Name", "The connection name from websocket_client.conf", "vr3ai"
        ),
        ProviderField(
            "from_extensions",
            "From Extensions",
            "Optional SIP extensions or trunk numbers for outbound calls",
            "PJSIP/6001 or 6001",
            required=False,
        ),
    ),
    load=AriConfig.from_row,
    connect=AriConnection,
)

PROVIDERS: dict[str, ProviderSpec] = {ARI.key: ARI}
DEFAULT_PROVIDER = ARI
"""What a new configuration is when the form or request names none."""
