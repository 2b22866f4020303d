"""Process settings: every ``VR3AI_*`` environment variable, read in this one module.

Why pydantic-settings: each group below is a ``BaseSettings`` whose field names *are* the variable
names (``env_prefix`` + field, upper case), so a variable, its type, its default and its meaning
are written once, here; bad values fail at start-up with the variable named; and the README's
settings table is generated from these classes (``python -m vr3ai.settings``, checked by
``tests/unit/test_settings.py``). The variable names are a contract: never rename one.

Two ways to make :class:`Settings`:

* :meth:`Settings.from_env` — what the process uses: every group reads the environment.
* ``Settings(port=8001, data_dir=...)`` — explicit, for tests and embedding: the defaults plus the
  given values, and the environment is *not* read, so a stray ``VR3AI_*`` variable in a test run
  cannot change a test. Keywords are the variable names without ``VR3AI_`` (``media_tls_port``),
  or whole groups (``server=ServerSettings(...)``).

Embedded default: SQLite in ``VR3AI_DATA_DIR`` (``./data``). Production: PostgreSQL through
``VR3AI_DATABASE_URL``. Everything has a default so ``vr3ai serve`` works with no setup.
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "VR3AI_"

_READ_ENV: ContextVar[bool] = ContextVar("vr3ai_settings_read_env", default=False)
"""True only inside :meth:`_Group.from_env` / :meth:`Settings.from_env`: a group made any other way
(``ServerSettings(port=1)``, or validated inside ``Settings(...)``) never reads the environment."""


@contextmanager
def _reading_env() -> Iterator[None]:
    token = _READ_ENV.set(True)
    try:
        yield
    finally:
        _READ_ENV.reset(token)


def normalize_database_url(url: str) -> str:
    """Accept the URLs people paste (``postgres://``, ``postgresql://``) and pick the async drivers."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url[len("postgresql://") :]
    if url.startswith("sqlite:///"):
        url = "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    return url


class _Group(BaseSettings):
    """One group of settings, read from ``VR3AI_<FIELD>`` (or the group's longer prefix)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        # An empty variable (``VR3AI_PUBLIC_URL=``) means "not set": the default applies.
        env_ignore_empty=True,
        extra="forbid",
        validate_assignment=True,
        use_attribute_docstrings=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment only, and only when asked (from_env); no .env or secrets files.
        return (init_settings, env_settings) if _READ_ENV.get() else (init_settings,)

    @classmethod
    def from_env(cls) -> Self:
        """The group read from the environment (``ValidationError`` on a bad value)."""
        with _reading_env():
            return cls()

    @classmethod
    def defaults(cls) -> Self:
        """The group with its defaults only."""
        return cls()

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field name → its environment variable."""
        prefix = str(cls.model_config.get("env_prefix", ENV_PREFIX))
        return {name: (prefix + name).upper() for name in cls.model_fields}


class ServerSettings(_Group):
    """The HTTP server, its limits and how calls are taken."""

    host: str = "0.0.0.0"
    """Where ``vr3ai serve`` listens. All interfaces, like ``scripts/run.sh``: the Asterisk the guide
    connects is usually another machine, and loopback-only would refuse it (start-up warns when the
    URL Asterisk must use is loopback)."""
    port: int = Field(default=8000, ge=0, le=65535)
    """HTTP port of the API, the dashboard and the media WebSocket."""
    public_url: str = ""
    """How Asterisk reaches us (used in generated ``websocket_client.conf`` snippets and diagnostics);
    default ``http://127.0.0.1:<port>``, which only an Asterisk on this machine can use: start-up
    prints the media ``uri`` Asterisk must use and warns when it is loopback."""
    tls_cert: str = ""
    """PEM certificate (chain) of the main port: with ``VR3AI_TLS_KEY`` it serves everything
    (dashboard, API, the media WebSocket) over TLS, so Asterisk's
    ``uri = wss://<host>:<port>/api/v1/telephony/ws/ari`` works, and the public URL defaults to
    ``https://``."""
    tls_key: str = ""
    """PEM private key of ``VR3AI_TLS_CERT`` (both or neither)."""
    start_telephony: bool = True
    """Start ARI listeners for stored configurations (tests of the API alone switch this off)."""
    agent_factory: str = ""
    """``module:callable`` building an agent per call (default: the workflow's voice agent)."""
    ring_timeout_s: int = Field(default=30, ge=1)
    """How long an outbound call rings before it ends as ``no_answer``."""
    shutdown_grace_s: float = Field(default=0.0, ge=0)
    """On SIGTERM, how long live calls may go on before they are ended cleanly."""
    log_json: bool = True
    """Log one JSON object per line (off: human-readable lines)."""
    cookie_secure: bool | None = None
    """Mark dashboard cookies ``Secure``. Unset: when the public URL is ``https://``, since a browser
    that reached us over TLS must never send the session in clear text (set 1 behind a TLS proxy)."""
    allow_root: bool = False
    """``vr3ai serve`` refuses to run as root unless this is set (e.g. in a container whose root is
    not the host's)."""
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    """Largest HTTP request body accepted (bytes); larger ones get 413 before they are read."""
    max_workflow_body_bytes: int = Field(default=256 * 1024, gt=0)
    """Largest body of a request that carries a workflow definition (API and dashboard editor)."""
    call_starts_per_s: float = Field(default=25.0, ge=0)
    """New inbound calls one telephony configuration may start per second, on average; more are hung
    up at once (congestion), without a run, so an Asterisk (or a server posing as one) that floods
    events cannot fill the database. 0: no limit."""
    call_starts_burst: int = Field(default=100, ge=0)
    """How many new calls may arrive at once before ``VR3AI_CALL_STARTS_PER_S`` applies."""
    outbound_allow: str = ""
    """Where requests made for a tenant (ARI, LLM, cloud STT/TTS) may go (``vr3ai.core.outbound``):
    comma list of CIDRs, addresses and host names, plus ``public`` to refuse loopback and private
    ranges unless listed. Link-local and cloud metadata addresses are refused unless listed."""


class StorageSettings(_Group):
    """Where data lives and how it is kept."""

    data_dir: Path = Path("./data")
    """The data folder: the SQLite database, ``secret.key``, recordings, the TTS cache."""
    database_url: str = ""
    """PostgreSQL (``postgresql://…``) instead of SQLite in the data folder."""
    secret_key: str = ""
    """Key for encrypting secrets at rest (a Fernet key, or a passphrase stretched with scrypt);
    default: generated once into ``<data dir>/secret.key``."""
    secret_key_previous: str = ""
    """The key in force before ``VR3AI_SECRET_KEY`` during a rotation: it only decrypts
    (``vr3ai secrets rotate``)."""
    recording_retention_days: float = Field(default=0.0, ge=0)
    """Delete call recordings of runs that ended longer ago than this (checked hourly); the run keeps
    a note. 0: keep them (the per-organization disk quota ``max_recording_mb`` still applies)."""


class MediaSettings(_Group):
    """The media WebSocket's process-wide I/O tuning (``vr3ai.media.engine.MediaTuning``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX + "MEDIA_")

    tls_cert: str = ""
    """Certificate file (PEM) of the ``wss://`` media port."""
    tls_key: str = ""
    """Private key file (PEM) of the ``wss://`` media port."""
    tls_port: int = Field(default=0, ge=0, le=65535)
    """If set with cert and key, the media WebSocket is also served as ``wss://`` on this port."""
    tick_reads_from: int = Field(default=16, ge=0)
    """From this many concurrent calls, media sockets are read once per 20 ms tick instead of waking
    the event loop per frame (a fifth to a third less CPU per call, 10 ms more latency on average;
    ``vr3ai.media.tickread``). 0: never."""
    paired_sends_from: int = Field(default=16, ge=0)
    """From this many concurrent calls, Asterisk's queue is refilled two frames every other tick
    (half the messages and Asterisk wake-ups; speech start is not delayed). 0: never."""
    ring_sends: bool = True
    """Send each 20 ms tick's media frames with one io_uring submission where Linux allows it,
    instead of one ``write`` per call (``vr3ai.media.uring``). Off: one write per frame."""


class VoiceSettings(_Group):
    """The offline voice stack (``vr3ai.agent.services.runtime``), loaded once per process."""

    voice: bool = True
    """Load the offline voice stack at start-up (off for API-only tests)."""
    stt_threads: int = Field(default=2, ge=1)
    """Threads of each speech-to-text worker (CTranslate2 ``intra_threads``)."""
    stt_workers: int = Field(default=2, ge=1)
    """Speech-to-text workers: with one, a long transcription of one call blocks every other call."""
    tts_workers: int = Field(default=2, ge=1)
    """Piper text-to-speech processes."""
    tts_threads: int = Field(default=1, ge=1)
    """Threads of each Piper process."""
    tts_engine: str = ""
    """Offline text-to-speech engine, ``piper`` or ``flite``; default: ``piper`` if installed."""
    tts_cache_dir: Path | None = None
    """Disk cache of fixed-text audio; default: ``<data dir>/tts-cache``."""
    tts_cache_max_mb: int = Field(default=512, ge=0)
    """Disk space of the fixed-text audio cache; oldest files go first."""
    tts_warm_queue_max: int = Field(default=500, ge=0)
    """Fixed texts waiting for background synthesis, at most; further ones are synthesised by the
    call that needs them."""
    silero_model: Path | None = None
    """The Silero VAD ONNX model; default: the one bundled in pipecat-ai."""


class VendorURLs(_Group):
    """Base URLs of the cloud STT/TTS vendors (self-hosted compatible servers, test doubles). An
    organization's key for a vendor is only ever sent to its URL (``vr3ai.core.secret_hosts``)."""

    deepgram_url: str = "wss://api.deepgram.com"
    """Deepgram speech-to-text."""
    openai_url: str = "https://api.openai.com/v1"
    """OpenAI speech-to-text and text-to-speech."""
    elevenlabs_url: str = "https://api.elevenlabs.io"
    """ElevenLabs text-to-speech."""
    cartesia_url: str = "https://api.cartesia.ai"
    """Cartesia text-to-speech."""


class Settings(BaseModel):
    """All settings of the process, in groups (see the module doc for how to make one)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    server: ServerSettings = Field(default_factory=ServerSettings.defaults)
    storage: StorageSettings = Field(default_factory=StorageSettings.defaults)
    media: MediaSettings = Field(default_factory=MediaSettings.defaults)
    voice: VoiceSettings = Field(default_factory=VoiceSettings.defaults)
    vendors: VendorURLs = Field(default_factory=VendorURLs.defaults)

    GROUPS: ClassVar[dict[str, type[_Group]]] = {
        "server": ServerSettings,
        "storage": StorageSettings,
        "media": MediaSettings,
        "voice": VoiceSettings,
        "vendors": VendorURLs,
    }

    @classmethod
    def variables(cls) -> dict[str, tuple[str, str]]:
        """Every setting: ``VR3AI_NAME`` → (group, field)."""
        return {
            env: (group, name)
            for group, model in cls.GROUPS.items()
            for name, env in model.env_names().items()
        }

    @model_validator(mode="before")
    @classmethod
    def _route_flat_keywords(cls, data: Any) -> Any:
        """``Settings(port=1, media_tls_port=2)``: each keyword goes to the group that declares the
        variable ``VR3AI_<KEYWORD>``. A keyword no group declares is an error."""
        if not isinstance(data, dict):
            return data
        variables = cls.variables()
        routed: dict[str, Any] = {}
        groups: dict[str, dict[str, Any]] = {}
        for key, value in data.items():
            # "voice" is both a group and VR3AI_VOICE: a bool is the switch, anything else the group.
            if key in cls.GROUPS and not (key == "voice" and isinstance(value, bool)):
                routed[key] = value
                continue
            found = variables.get((ENV_PREFIX + key).upper())
            if found is None:
                raise ValueError(f"unknown setting {key!r} (no variable {ENV_PREFIX}{key.upper()})")
            group, name = found
            groups.setdefault(group, {})[name] = value
        for group, values in groups.items():
            base = routed.get(group)
            if isinstance(base, BaseModel):
                base = base.model_dump(exclude_unset=True)
            routed[group] = {**(base or {}), **values}
        return routed

    @classmethod
    def from_env(cls) -> Settings:
        """Every group read from the environment. A bad value raises ``ValueError`` naming the
        variable (start-up stops there rather than run with a guess)."""
        groups: dict[str, _Group] = {}
        problems: list[str] = []
        for group, model in cls.GROUPS.items():
            try:
                groups[group] = model.from_env()
            except ValidationError as e:
                names = model.env_names()
                for err in e.errors():
                    field = str(err["loc"][0]) if err["loc"] else ""
                    problems.append(f"{names.get(field, field)}: {err['msg']}")
        if problems:
            raise ValueError("invalid settings: " + "; ".join(problems))
        return cls(**groups)  # type: ignore[arg-type]

    # ---------------------------------------------------------------- derived values
    def resolved_database_url(self) -> str:
        if self.storage.database_url:
            return normalize_database_url(self.storage.database_url)
        return f"sqlite+aiosqlite:///{(self.storage.data_dir / 'vr3ai.db').resolve()}"

    def session_cookie_secure(self) -> bool:
        if self.server.cookie_secure is not None:
            return self.server.cookie_secure
        return self.effective_public_url().lower().startswith("https://")

    def effective_public_url(self) -> str:
        if self.server.public_url:
            return self.server.public_url.rstrip("/")
        host = "127.0.0.1" if self.server.host in {"0.0.0.0", "::", ""} else self.server.host
        return f"{'https' if self.server.tls_cert else 'http'}://{host}:{self.server.port}"

    def main_listener_tls(self) -> dict[str, str]:
        """uvicorn's ``ssl_certfile`` / ``ssl_keyfile`` for the main port (empty: plain HTTP).

        Checked here, with a message naming the settings, because uvicorn's own failure for a missing
        key or a key that does not fit the certificate is a bare ``ssl.SSLError`` at start-up."""
        cert, key = self.server.tls_cert, self.server.tls_key
        if not cert and not key:
            return {}
        if not (cert and key):
            raise ValueError("VR3AI_TLS_CERT and VR3AI_TLS_KEY must be set together (or neither)")
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(
                f"cannot serve TLS with VR3AI_TLS_CERT={cert} and VR3AI_TLS_KEY={key}: {e} "
                "(both must be PEM files readable by this user, the key the certificate's)"
            ) from None
        return {"ssl_certfile": cert, "ssl_keyfile": key}

    def tts_cache_dir(self) -> Path:
        """Where the fixed-text audio cache lives on disk."""
        return self.voice.tts_cache_dir or self.storage.data_dir / "tts-cache"


# ---------------------------------------------------------------- the README's table
README_BEGIN = "<!-- settings:begin (generated by `python -m vr3ai.settings`; do not edit by hand) -->"
README_END = "<!-- settings:end -->"


def _default_text(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def readme_table() -> str:
    """The README's settings table, one row per variable, grouped as in :class:`Settings`."""
    lines = [README_BEGIN, "| Variable | Default | What it does |", "|---|---|---|"]
    for model in Settings.GROUPS.values():
        title = (model.__doc__ or "").strip().splitlines()[0]
        lines.append(f"| **{model.__name__}** | | {title} |")
        for name, env in model.env_names().items():
            info = model.model_fields[name]
            text = " ".join((info.description or "").split()).replace("``", "`").replace("|", "\\|")
            lines.append(f"| `{env}` | {_default_text(info.default)} | {text} |")
    lines.append(README_END)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(readme_table() + "\n")
