"""Organization secrets are bound to the hosts they may be sent to.

A secret is write-only (its value never comes back), but a workflow decides where it goes: the
LLM's ``base_url`` is free text. Without a binding, anyone who may edit a workflow could point
``base_url`` at a server of theirs and receive the organization's API key in the first request's
``Authorization`` header. So every secret carries ``allowed_hosts``:

* set it when the secret is stored (``POST /secrets`` with ``allowed_hosts``). Changing it takes the
  value again — the same rule as an ARI password when the endpoint moves: only someone who knows a
  value chooses where it may go;
* left empty, the secret is bound on first use (trust on first use): the first workflow saved with
  it — or, for workflows saved before binding existed, the first call — binds it to the hosts that
  workflow sends it to;
* a bound secret used with any other host is refused: 422 when the workflow is saved, and at call
  time the secret is withheld (the run shows an error event) rather than sent.

An entry is ``host`` (any port) or ``host:port``. A use is described by its host and, when the URL
names a non-default port, that port. Cloud STT/TTS send the key to the provider's fixed API host
(or the operator's ``VR3AI_<PROVIDER>_URL``), which is bound the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv6Address
from typing import Any
from urllib.parse import urlsplit

from vr3ai.settings import VendorURLs

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
MAX_ALLOWED_HOSTS = 20
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")

CLOUD_URLS: dict[tuple[str, str], str] = {
    ("stt", "deepgram"): "deepgram_url",
    ("stt", "openai"): "openai_url",
    ("tts", "openai"): "openai_url",
    ("tts", "elevenlabs"): "elevenlabs_url",
    ("tts", "cartesia"): "cartesia_url",
}
"""(section, provider) → the :class:`~vr3ai.settings.VendorURLs` field (``VR3AI_<NAME>_URL``, default
base URL written there) of the cloud engines: the one table ``vr3ai.agent.factory`` builds them
from, so a key is bound to the host it is sent to."""


def cloud_url(section: str, provider: str) -> str | None:
    """The base URL a cloud STT/TTS provider's key is sent to, or None for a local engine."""
    found = CLOUD_URLS.get((section, provider))
    if found is None:
        return None
    # Read at each use, not cached: the operator's override and the tests' redirects apply at once.
    return str(getattr(VendorURLs.from_env(), found))


def _host(hostname: str) -> str:
    return f"[{hostname}]" if ":" in hostname else hostname


def host_of(url: str) -> str | None:
    """``host`` or ``host:port`` (port only when it is not the scheme's default) of ``url``."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    hostname = (parts.hostname or "").lower().rstrip(".")
    if not hostname:
        return None
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme.lower()):
        return f"{_host(hostname)}:{port}"
    return _host(hostname)


def normalize_host_entry(entry: str) -> str:
    """Check one ``allowed_hosts`` entry and return its normal form (lower case, no trailing dot)."""
    raw = entry.strip().lower()
    port: int | None = None
    if raw.startswith("["):
        host, _, rest = raw[1:].partition("]")
        try:
            IPv6Address(host)
        except ValueError:
            raise ValueError(f"'{entry}' is not a valid [IPv6] address") from None
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"'{entry}': expected [address] or [address]:port")
            port = int(rest[1:])
        host = f"[{host}]"
    else:
        host, sep, port_text = raw.partition(":")
        if sep:
            if not port_text.isdigit():
                raise ValueError(f"'{entry}': a port must be a number, like api.example.com:8443")
            port = int(port_text)
        host = host.rstrip(".")
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(
                f"'{entry}' is not a host name: give the host only (like api.openai.com or llm.internal:8000), "
                "without scheme, path or wildcard"
            )
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"'{entry}': port must be between 1 and 65535")
    return f"{host}:{port}" if port is not None else host


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """``host`` (as :func:`host_of` gives it) matches an entry: the same ``host:port``, or an entry
    without port naming the same host."""
    bare = host.rsplit(":", 1)[0] if not host.endswith("]") and ":" in host else host
    return any(entry == host or entry == bare for entry in allowed)


@dataclass(frozen=True)
class SecretUse:
    name: str
    """The organization secret's name."""
    host: str | None
    """Where its value is sent (None: the URL has no usable host, so it is never allowed)."""
    loc: tuple[str, ...]
    """Which field of the definition decides the host, e.g. ``("settings", "llm", "base_url")``."""


def secret_uses(settings: Any) -> list[SecretUse]:
    """Every place a workflow's ``settings`` send an organization secret, from the stored JSON (a
    definition the checker accepted; anything malformed is skipped, not raised)."""
    if not isinstance(settings, Mapping):
        return []
    uses: list[SecretUse] = []
    llm = settings.get("llm")
    if isinstance(llm, Mapping) and llm.get("provider") == "openai_compatible":
        name, base_url = llm.get("api_key_secret"), llm.get("base_url")
        if isinstance(name, str) and name:
            url = base_url if isinstance(base_url, str) else ""
            uses.append(SecretUse(name, host_of(url), ("settings", "llm", "base_url")))
    for section in ("stt", "tts"):
        cfg = settings.get(section)
        if not isinstance(cfg, Mapping):
            continue
        name, provider = cfg.get("api_key_secret"), cfg.get("provider")
        url = cloud_url(section, provider) if isinstance(provider, str) else None
        if isinstance(name, str) and name and url is not None:
            uses.append(SecretUse(name, host_of(url), ("settings", section, "provider")))
    return uses


def refusal(use: SecretUse, allowed: Iterable[str]) -> str:
    """Why ``use`` may not have its secret: the sentence for the 422 and for the run's event."""
    where = ".".join(use.loc)
    return (
        f"organization secret '{use.name}' may only be sent to {', '.join(sorted(allowed))}; {where} would send it "
        f"to {use.host or 'a URL without a valid host'}. To allow that host, store the secret again with its value "
        "and allowed_hosts (POST /api/v1/secrets)."
    )


Refused = list[tuple[SecretUse, str]]


def check_uses(uses: Iterable[SecretUse], allowed: Mapping[str, list[str]]) -> tuple[dict[str, list[str]], Refused]:
    """Decide every use against the stored bindings (``allowed``: secret name → its ``allowed_hosts``,
    only for secrets that exist). Returns (bindings to store for unbound secrets, refused uses)."""
    uses = list(uses)
    bind: dict[str, list[str]] = {}
    refused: Refused = []
    for name, hosts in allowed.items():
        mine = [u for u in uses if u.name == name]
        if not mine:
            continue
        if not hosts:
            new = sorted({u.host for u in mine if u.host is not None})
            bad = [u for u in mine if u.host is None]
            if new:
                bind[name] = new
            refused += [(u, refusal(u, new or ["(no host yet)"])) for u in bad]
            continue
        refused += [(u, refusal(u, hosts)) for u in mine if u.host is None or not host_allowed(u.host, hosts)]
    return bind, refused
