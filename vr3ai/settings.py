"""Process settings, read once from the environment.

Embedded default: SQLite in ``VR3AI_DATA_DIR`` (``./data``). Production: PostgreSQL through
``VR3AI_DATABASE_URL``. Everything else has a default so ``vr3ai serve`` works with no setup.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def _env_positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number of bytes, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be greater than 0, got {value}")
    return value


def normalize_database_url(url: str) -> str:
    """Accept the URLs people paste (``postgres://``, ``postgresql://``) and pick the async drivers."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url[len("postgresql://") :]
    if url.startswith("sqlite:///"):
        url = "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    return url


@dataclass
class Settings:
    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("VR3AI_DATA_DIR", "./data")))
    database_url: str = ""
    host: str = "0.0.0.0"
    """Where ``vr3ai serve`` listens. All interfaces, like ``scripts/run.sh``: the Asterisk the guide
    connects is usually another machine, and loopback-only would refuse it (start-up warns when the
    URL Asterisk must use is loopback)."""
    port: int = 8000
    public_url: str = ""
    """How Asterisk reaches us (used in generated websocket_client.conf snippets and diagnostics)."""
    secret_key: str = ""
    """Key for encrypting secrets at rest (a Fernet key, or a passphrase stretched with scrypt);
    default: generated once into ``data_dir/secret.key``."""
    secret_key_previous: str = ""
    """The key in force before ``secret_key`` during a rotation: it only decrypts (``vr3ai secrets rotate``)."""
    tls_cert: str = ""
    tls_key: str = ""
    """PEM certificate (chain) and key: the main port serves everything (dashboard, API, the media
    WebSocket) over TLS, so Asterisk's ``uri = wss://<host>:<port>/api/v1/telephony/ws/ari`` works,
    and the public URL defaults to ``https://``."""
    media_tls_cert: str = ""
    media_tls_key: str = ""
    media_tls_port: int = 0
    """If set with cert and key, the media WebSocket is also served as wss on this port."""
    media_tick_reads_from: int = 16
    """From this many concurrent calls, media sockets are read once per 20 ms tick instead of
    waking the event loop per frame (a fifth to a third less CPU per call, 10 ms more latency on average;
    ``vr3ai.media.tickread``). 0: never."""
    media_paired_sends_from: int = 16
    """From this many concurrent calls, Asterisk's queue is refilled two frames every other tick
    (half the messages and Asterisk wake-ups; speech start is not delayed). 0: never."""
    media_ring_sends: bool = True
    """Send each 20 ms tick's media frames with one io_uring submission where Linux allows it,
    instead of one ``write`` per call (``vr3ai.media.uring``). Off: one write per frame."""
    start_telephony: bool = True
    """Start ARI listeners for stored configurations (tests of the API alone switch this off)."""
    voice: bool = True
    """Load the offline voice stack at start-up (off for API-only tests)."""
    ring_timeout_s: int = 30
    """How long an outbound call rings before it ends as ``no_answer``."""
    agent_factory: str = ""
    """``module:callable`` building an agent per call (default: the workflow's voice agent)."""
    shutdown_grace_s: float = 0.0
    """On SIGTERM, how long live calls may go on before they are ended cleanly."""
    log_json: bool = True
    cookie_secure: bool | None = None
    """Mark dashboard cookies ``Secure``. None (``VR3AI_COOKIE_SECURE`` unset): when the public URL
    is https, since a browser that reached us over TLS must never send the session in clear text."""
    allow_root: bool = False
    """``vr3ai serve`` refuses to run as root unless this is set (``VR3AI_ALLOW_ROOT=1``, e.g. in a
    container whose root is not the host's)."""
    max_body_bytes: int = 1024 * 1024
    """Largest HTTP request body accepted (bytes); larger ones get 413 before they are read."""
    max_workflow_body_bytes: int = 256 * 1024
    """Largest body of a request that carries a workflow definition (API and dashboard editor)."""
    recording_retention_days: float = 0.0
    """Delete call recordings of runs that ended longer ago than this (checked hourly); the run keeps
    a note. 0: keep them (the per-organization disk quota ``max_recording_mb`` still applies)."""
    call_starts_per_s: float = 25.0
    """New inbound calls (StasisStart of an unknown channel) one telephony configuration may start per
    second, on average; more are hung up at once (congestion), without a run, so an Asterisk (or a
    server posing as one) that floods events cannot fill the database. 0: no limit."""
    call_starts_burst: int = 100
    """How many new calls may arrive at once before ``call_starts_per_s`` applies."""
    tts_warm_queue_max: int = 500
    """Fixed texts waiting for background synthesis, at most; further ones are synthesised by the
    call that needs them."""
    tts_cache_max_mb: int = 512
    """Disk space of the fixed-text audio cache (``<data dir>/tts-cache``); oldest files go first."""
    outbound_allow: str = ""
    """Where requests made for a tenant (ARI, LLM, cloud STT/TTS) may go (``vr3ai.core.outbound``):
    comma list of CIDRs, addresses and host names, plus ``public`` to refuse loopback and private
    ranges unless listed. Link-local and cloud metadata addresses are refused unless listed."""

    @classmethod
    def from_env(cls) -> Settings:
        s = cls()
        s.database_url = os.environ.get("VR3AI_DATABASE_URL", "")
        s.host = os.environ.get("VR3AI_HOST", s.host)
        s.port = int(os.environ.get("VR3AI_PORT", s.port))
        s.public_url = os.environ.get("VR3AI_PUBLIC_URL", "")
        s.secret_key = os.environ.get("VR3AI_SECRET_KEY", "")
        s.secret_key_previous = os.environ.get("VR3AI_SECRET_KEY_PREVIOUS", "")
        s.tls_cert = os.environ.get("VR3AI_TLS_CERT", "")
        s.tls_key = os.environ.get("VR3AI_TLS_KEY", "")
        s.media_tls_cert = os.environ.get("VR3AI_MEDIA_TLS_CERT", "")
        s.media_tls_key = os.environ.get("VR3AI_MEDIA_TLS_KEY", "")
        s.media_tls_port = int(os.environ.get("VR3AI_MEDIA_TLS_PORT", "0") or 0)
        s.media_tick_reads_from = int(
            os.environ.get("VR3AI_MEDIA_TICK_READS_FROM", str(s.media_tick_reads_from)) or 0
        )
        s.media_paired_sends_from = int(
            os.environ.get("VR3AI_MEDIA_PAIRED_SENDS_FROM", str(s.media_paired_sends_from)) or 0
        )
        s.media_ring_sends = _env_bool("VR3AI_MEDIA_RING_SENDS", s.media_ring_sends)
        s.start_telephony = _env_bool("VR3AI_START_TELEPHONY", True)
        s.voice = _env_bool("VR3AI_VOICE", True)
        s.log_json = _env_bool("VR3AI_LOG_JSON", True)
        s.agent_factory = os.environ.get("VR3AI_AGENT_FACTORY", "")
        s.shutdown_grace_s = float(os.environ.get("VR3AI_SHUTDOWN_GRACE_S", "0") or 0)
        s.ring_timeout_s = int(os.environ.get("VR3AI_RING_TIMEOUT_S", s.ring_timeout_s))
        raw_cookie_secure = os.environ.get("VR3AI_COOKIE_SECURE", "")
        s.cookie_secure = _env_bool("VR3AI_COOKIE_SECURE", False) if raw_cookie_secure.strip() else None
        s.allow_root = _env_bool("VR3AI_ALLOW_ROOT", False)
        s.max_body_bytes = _env_positive_int("VR3AI_MAX_BODY_BYTES", s.max_body_bytes)
        s.max_workflow_body_bytes = _env_positive_int("VR3AI_MAX_WORKFLOW_BODY_BYTES", s.max_workflow_body_bytes)
        s.recording_retention_days = float(os.environ.get("VR3AI_RECORDING_RETENTION_DAYS", "0") or 0)
        s.call_starts_per_s = float(os.environ.get("VR3AI_CALL_STARTS_PER_S", str(s.call_starts_per_s)) or 0)
        s.call_starts_burst = int(os.environ.get("VR3AI_CALL_STARTS_BURST", str(s.call_starts_burst)) or 0)
        s.tts_warm_queue_max = int(os.environ.get("VR3AI_TTS_WARM_QUEUE_MAX", str(s.tts_warm_queue_max)) or 0)
        s.tts_cache_max_mb = int(os.environ.get("VR3AI_TTS_CACHE_MAX_MB", str(s.tts_cache_max_mb)) or 0)
        s.outbound_allow = os.environ.get("VR3AI_OUTBOUND_ALLOW", "")
        return s

    def resolved_database_url(self) -> str:
        if self.database_url:
            return normalize_database_url(self.database_url)
        return f"sqlite+aiosqlite:///{(self.data_dir / 'vr3ai.db').resolve()}"

    def session_cookie_secure(self) -> bool:
        if self.cookie_secure is not None:
            return self.cookie_secure
        return self.effective_public_url().lower().startswith("https://")

    def effective_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in {"0.0.0.0", "::", ""} else self.host
        return f"{'https' if self.tls_cert else 'http'}://{host}:{self.port}"

    def main_listener_tls(self) -> dict[str, str]:
        """uvicorn's ``ssl_certfile`` / ``ssl_keyfile`` for the main port (empty: plain HTTP).

        Checked here, with a message naming the settings, because uvicorn's own failure for a missing
        key or a key that does not fit the certificate is a bare ``ssl.SSLError`` at start-up."""
        if not self.tls_cert and not self.tls_key:
            return {}
        if not (self.tls_cert and self.tls_key):
            raise ValueError("VR3AI_TLS_CERT and VR3AI_TLS_KEY must be set together (or neither)")
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(
                f"cannot serve TLS with VR3AI_TLS_CERT={self.tls_cert} and VR3AI_TLS_KEY={self.tls_key}: {e} "
                "(both must be PEM files readable by this user, the key the certificate's)"
            ) from None
        return {"ssl_certfile": self.tls_cert, "ssl_keyfile": self.tls_key}
