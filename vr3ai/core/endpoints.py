"""ARI endpoint URLs: what we accept, what we store, and the key that makes Stasis apps unique.

Accepted: ``http(s)://host[:port]`` with an optional trailing ``/`` or ``/ari`` (people paste the
ARI root they see in Asterisk's docs). Stored (``ari_endpoint_url``): ``scheme://host:port`` with
scheme and host lower-cased, no path and the port always written out; the ARI client appends
``/ari/...`` itself. A URL without a port means Asterisk's HTTP server on its documented default,
8088 (8089 for https, Asterisk's ``tlsbindaddr`` default) — the port the guide and the generated
``http.conf`` use — not the scheme's 80/443, which would connect somewhere Asterisk is not. The
uniqueness key (``endpoint_key``) is the same ``scheme://host:port``, so ``http://PBX:8088/``,
``http://pbx:8088`` and ``http://pbx`` are recognised as the same Asterisk.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 8088, "https": 8089}
"""Asterisk's HTTP server defaults (``bindport``, ``tlsbindaddr``), used when the URL has no port."""
_EXAMPLE = "http://asterisk.example.com:8088"


class EndpointError(ValueError):
    pass


@dataclass(frozen=True)
class AriEndpoint:
    url: str
    """Normalised base URL to store and connect to (port written out, no trailing slash, no ``/ari``)."""
    key: str
    """``scheme://host:port`` with the port always present: the identity of one ARI server."""


def normalize_ari_endpoint(raw: str) -> AriEndpoint:
    if raw != raw.strip():
        raise EndpointError("has leading or trailing spaces; ensure there are no extra spaces")
    if not raw:
        raise EndpointError(f"must not be empty; expected the ARI base URL, like {_EXAMPLE}")
    if any(c.isspace() for c in raw):
        raise EndpointError("must not contain spaces")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as e:
        raise EndpointError(f"is not a valid URL ({e}); expected something like {_EXAMPLE}") from e
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise EndpointError(f"must start with http:// or https://, like {_EXAMPLE}")
    if parts.username is not None or parts.password is not None:
        # Credentials in the URL would be stored unencrypted and end up in logs.
        raise EndpointError("must not contain credentials; put the ARI password in app_password")
    host = (parts.hostname or "").lower()
    if not host:
        raise EndpointError(f"has no host; expected something like {_EXAMPLE}")
    if parts.query or parts.fragment:
        raise EndpointError("must not have a query string or fragment")
    if parts.path.rstrip("/") not in ("", "/ari"):
        raise EndpointError(f"must be the HTTP base URL of Asterisk (like {_EXAMPLE}); the only path allowed is /ari")
    if port == 0:
        raise EndpointError("port must be between 1 and 65535")
    netloc_host = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{netloc_host}:{port if port is not None else DEFAULT_PORTS[scheme]}"
    return AriEndpoint(url=url, key=url)
