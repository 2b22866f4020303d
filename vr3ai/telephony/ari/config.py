"""One telephony configuration as its ARI listener and calls see it: decrypted once, when the
listener starts. A module of its own so the calls can name it without importing the connection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vr3ai.core.secrets import SecretBox
    from vr3ai.db.models import TelephonyConfiguration


@dataclass
class AriConfig:
    """A decrypted snapshot of a configuration row (the listener never reads the DB row again)."""

    id: str
    organization_id: str
    name: str
    ari_endpoint_url: str
    stasis_app_name: str
    app_password: str = field(repr=False)
    websocket_client_name: str
    from_extensions: list[str]
    dial_template: str
    media_username: str | None = None
    media_password: str | None = field(default=None, repr=False)

    @classmethod
    def from_row(cls, row: TelephonyConfiguration, box: SecretBox) -> AriConfig:
        return cls(
            id=row.id,
            organization_id=row.organization_id,
            name=row.name,
            ari_endpoint_url=row.ari_endpoint_url,
            stasis_app_name=row.stasis_app_name,
            app_password=box.decrypt(row.app_password_enc),
            websocket_client_name=row.websocket_client_name,
            from_extensions=list(row.from_extensions or []),
            dial_template=row.dial_template or "PJSIP/{to}",
            media_username=row.media_username,
            media_password=box.decrypt(row.media_password_enc) if row.media_password_enc else None,
        )

    def media_auth(self) -> tuple[str, str] | None:
        if self.media_username and self.media_password:
            return (self.media_username, self.media_password)
        return None

    def fingerprint(self) -> tuple[Any, ...]:
        return (
            self.ari_endpoint_url,
            self.stasis_app_name,
            self.app_password,
            self.websocket_client_name,
            tuple(self.from_extensions),
            self.dial_template,
            self.media_username,
            self.media_password,
        )
