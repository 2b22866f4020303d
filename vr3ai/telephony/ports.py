"""What telephony reads from the process's services, named by shape.

``vr3ai.services.Services`` (built by the app) has all of it, but it sits in the layer above
telephony (it holds the telephony manager), so telephony names a Protocol instead of importing it:
no import cycle, and a test can hand in any object with these attributes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from vr3ai.core.outbound import OutboundPolicy
    from vr3ai.core.quota import QuotaService
    from vr3ai.core.runs import RunService
    from vr3ai.core.secrets import SecretBox
    from vr3ai.db.session import Database
    from vr3ai.media.session import MediaSession
    from vr3ai.settings import Settings


class MediaChannels(Protocol):
    """The media server's registry of expected channels (``vr3ai.media.server.MediaRegistry``)."""

    def expect(
        self,
        channel_id: str,
        basic_auth: tuple[str, str] | None = None,
        *,
        recording_path: str | None = None,
    ) -> asyncio.Future[MediaSession]: ...

    def cancel(self, channel_id: str) -> bool: ...


class Listener(Protocol):
    """One configuration's ARI listener (``vr3ai.telephony.ari.connection.AriConnection``)."""

    @property
    def connected(self) -> bool: ...
    @property
    def calls(self) -> dict[str, Any]: ...


class Listeners(Protocol):
    """The running ARI listeners (``vr3ai.telephony.manager.TelephonyManager``)."""

    def status(self, config_id: str) -> dict[str, Any]: ...

    def connection(self, config_id: str) -> Listener | None: ...


class ProcessServices(Protocol):
    """Read-only views, so the app's ``Services`` (with narrower or optional types) matches."""

    @property
    def settings(self) -> Settings: ...
    @property
    def db(self) -> Database: ...
    @property
    def box(self) -> SecretBox: ...
    @property
    def quota(self) -> QuotaService: ...
    @property
    def runs(self) -> RunService: ...
    @property
    def outbound(self) -> OutboundPolicy: ...
    @property
    def media(self) -> MediaChannels | None: ...
    @property
    def telephony(self) -> Listeners | None: ...
