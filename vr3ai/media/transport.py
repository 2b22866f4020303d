"""The socket as a media session needs it: sends that never block, and messages handed over with
their arrival time.

Why ``attach(deliver, time)`` and not a ``receive()`` loop in the session: how a socket is read
(pushed from the event loop's ``data_received``, read once per clock tick by the engine, or pulled
from an ASGI ``receive``) is the transport's business, and so is when a message arrived (a tick
read knows it only to within the time since the previous read). The session is handed each
message with that time, ``deliver(msg, arrived_at)``, on the clock's time base.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

Deliver = Callable[[str | bytes, float], None]
"""``deliver(msg, arrived_at)``: one message from Asterisk and when it arrived (clock time base)."""


class MediaTransport(Protocol):
    """The socket as the session needs it. Sends never block and keep their order."""

    def send_text(self, text: str) -> None: ...

    def send_bytes(self, data: bytes) -> None: ...

    async def attach(self, deliver: Deliver, time: Callable[[], float]) -> None:
        """Hand every message to ``deliver`` until the socket is closed (see :attr:`close_code`);
        raises what ``deliver`` raised. ``time``: the clock's time, for transports that do not
        know the arrival time any better than "now"."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    @property
    def close_code(self) -> int | None: ...


async def pump(
    receive: Callable[[], Awaitable[str | bytes | None]], deliver: Deliver, time: Callable[[], float]
) -> None:
    """``attach`` for a transport that is read by awaiting ``receive()`` (``None`` once closed)."""
    while (msg := await receive()) is not None:
        deliver(msg, time())
