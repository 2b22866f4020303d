"""What a call and its media leg use of the ARI listener that created them, named by shape.

``vr3ai.telephony.ari.connection.AriConnection`` is that listener; it creates calls, so calls name
this Protocol instead of importing it (no import cycle between them).
"""

from __future__ import annotations

from typing import Any, Protocol

from vr3ai.logs import Redactor
from vr3ai.telephony.ari.client import AriClient
from vr3ai.telephony.ari.config import AriConfig


class CallHost(Protocol):
    provider: str
    tag: str
    """Short id of the configuration, in the ids of the channels and bridges we create."""
    config: AriConfig
    client: AriClient
    redactor: Redactor

    def record_event(self, level: str, message: str) -> None: ...

    def forget(self, call: Any) -> None:
        """The call ended: stop routing its events (``call`` is the ``calls.Call`` itself)."""
        ...

    def recording_path(self, run_id: str) -> str: ...

    async def media_unreachable_text(self) -> str: ...
