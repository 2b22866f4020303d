"""The project's real-Asterisk test harness (pytest fixtures and benchmarks)."""

from .asterisk import (
    ARI_PASSWORD,
    ARI_USER,
    ARI_USERS,
    MEDIA_PASSWORD,
    MEDIA_PATH,
    MEDIA_USER,
    PHONE_PASSWORD,
    PHONE_USER,
    PLATFORM_APP,
    AriEventProbe,
    AsteriskLab,
    AsteriskLabError,
    CallerHandle,
    SecondAsterisk,
    TlsMaterial,
    ensure_tls,
    free_port,
)
from .wscaller import Played, WebSocketCaller

__all__ = [
    "ARI_PASSWORD",
    "ARI_USER",
    "ARI_USERS",
    "MEDIA_PASSWORD",
    "MEDIA_PATH",
    "MEDIA_USER",
    "PHONE_PASSWORD",
    "PHONE_USER",
    "PLATFORM_APP",
    "AriEventProbe",
    "AsteriskLab",
    "AsteriskLabError",
    "CallerHandle",
    "Played",
    "SecondAsterisk",
    "TlsMaterial",
    "WebSocketCaller",
    "ensure_tls",
    "free_port",
]
