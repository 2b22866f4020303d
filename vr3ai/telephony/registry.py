"""Telephony providers: what a configuration of each kind asks for, and how to run it.

A provider is a folder plus an entry here (the Dograh pattern): the API validates against the
fields, the dashboard renders them with the guide's words, and the manager starts ``connection``.
Only Asterisk ARI exists today.
"""

from __future__ import annotations

from dataclasses import dataclass


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
)

PROVIDERS: dict[str, ProviderSpec] = {ARI.key: ARI}
