"""One outbound policy for every request the platform makes on a tenant's behalf.

Tenants choose where we connect: the ARI endpoint of their PBX, the ``base_url`` of their LLM, and
(through the workflow) which cloud STT/TTS vendor is called. Without a policy each of these is a
server-side request forgery: a tenant could make this server talk to a cloud metadata service, to
another tenant's PBX on the LAN, or to this platform's own API from inside.

``VR3AI_OUTBOUND_ALLOW`` (``Settings.outbound_allow``) is a comma list of CIDRs, addresses and host
names, plus the keyword ``public``:

* Link-local and cloud metadata addresses (``169.254.0.0/16``, ``fe80::/10``, ``fd00:ec2::254``)
  are refused unless listed.
* Loopback and private ranges are allowed by default: a PBX on the same host or LAN is the common
  case of a self-hosted install. With ``public`` in the list they are refused unless listed
  (multi-tenant installs, where one tenant must not reach what sits next to the platform).
* The platform's own listening ports on this host are never a target, listed or not.

Why a transport instead of checking URLs before a request: checking a name, then letting the HTTP
library resolve it again, is open to DNS rebinding (the second answer can differ). We resolve once,
vet every address of the answer and connect to the vetted address ourselves, keeping the original
name in the ``Host`` header and for TLS (SNI and certificate checks). Redirects are never followed
(a redirect is a new, unvetted target), and environment proxies are not used for these requests
(a proxy would resolve the name itself).

Saving a URL runs the same checks (:meth:`OutboundPolicy.check_url`), so a refused target is a 422
at save time; requests check again at call time because DNS answers change.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect

POLICY = "VR3AI_OUTBOUND_ALLOW"
"""How refusals name the policy, so an operator knows which setting to change."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) → addresses``. The seam tests use to play DNS (e.g. a rebinding answer)."""

ALWAYS_REFUSED: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),  # IPv4 link-local, incl. 169.254.169.254 (AWS, GCP, Azure, ...)
    ipaddress.ip_network("fe80::/10"),  # IPv6 link-local
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS metadata over IPv6
)
RESOLVE_TIMEOUT_S = 3.0
CACHE_TTL_S = 30.0
"""How long one vetted answer is reused: a name is not looked up for every ARI request, and a changed
answer (to a refused address) takes effect within this time."""
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class OutboundRefused(Exception):
    """The policy refuses this target. The text names the host (the tenant's own input) and the
    policy, never an address it resolved to or anything the remote said."""

    def __init__(self, host: str, why: str) -> None:
        super().__init__(f"the outbound policy ({POLICY}) does not allow connecting to {host}: {why}")
        self.host = host
        self.why = why


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in out:
            out.append(address)
    return out


def _ip(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:169.254.169.254 is 169.254.169.254
            return address.ipv4_mapped
        if address.scope_id:
            return ipaddress.IPv6Address(str(address).split("%", 1)[0])
    return address


@lru_cache(maxsize=256)
def _is_this_host(address: IPAddress) -> bool:
    """Whether ``address`` is one of this machine's own: a socket can bind to exactly those (no
    interface list to parse, and it follows address changes). Loopback and unspecified addresses
    reach this host too."""
    if address.is_loopback or address.is_unspecified:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((str(address), 0))
    except OSError:
        return False
    return True


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


@dataclass(frozen=True)
class Target:
    """A vetted destination: connect to ``address``; ``host`` goes in the Host header and SNI."""

    scheme: str
    host: str
    port: int
    address: str


class OutboundPolicy:
    def __init__(
        self,
        allow: str | Iterable[str] = "",
        *,
        own_ports: Iterable[int] = (),
        resolver: Resolver | None = None,
        cache_ttl_s: float = CACHE_TTL_S,
    ) -> None:
        items = [a.strip() for a in (allow.split(",") if isinstance(allow, str) else allow)]
        self.public = False
        self.networks: list[IPNetwork] = []
        self.hosts: set[str] = set()
        for item in items:
            if not item:
                continue
            if item.lower() == "public":
                self.public = True
                continue
            try:
                self.networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = _normal_host(item)
            if not name or any(c in name for c in "/:@ ") or not all(part for part in name.split(".")):
                raise ValueError(
                    f"{POLICY}: '{item}' is neither an address, a CIDR (10.0.0.0/8), a host name nor 'public'"
                )
            self.hosts.add(name)
        self.own_ports = frozenset(p for p in own_ports if p)
        self.resolver = resolver
        """None: :func:`system_resolver`, looked up when used (a test session swaps it for an
        offline table, so that no test asks a DNS server)."""
        self.cache_ttl_s = cache_ttl_s

    @classmethod
    def from_settings(cls, settings: Any, resolver: Resolver | None = None) -> OutboundPolicy:
        ports = [settings.server.port]
        if settings.media.tls_port and settings.media.tls_cert and settings.media.tls_key:
            ports.append(settings.media.tls_port)
        return cls(settings.server.outbound_allow, own_ports=ports, resolver=resolver)

    # --- the rules ------------------------------------------------------------------------------------

    def _listed(self, address: IPAddress) -> bool:
        return any(address.version == n.version and address in n for n in self.networks)

    def refusal(self, address: IPAddress, port: int, *, host_listed: bool = False) -> str | None:
        """Why the policy refuses ``address:port`` (a sentence), or None when it is allowed."""
        if port in self.own_ports and _is_this_host(address):
            return "that is this platform's own port"
        if host_listed or self._listed(address):
            return None
        if any(address.version == n.version and address in n for n in ALWAYS_REFUSED):
            return "link-local and cloud metadata addresses are refused unless listed"
        if self.public and not address.is_global:
            return "only public addresses are allowed ('public'); loopback and private ranges must be listed"
        return None

    async def _resolve(self, host: str, port: int) -> list[str]:
        try:
            resolve = self.resolver or system_resolver
            return await asyncio.wait_for(resolve(host, port), RESOLVE_TIMEOUT_S)
        except (OSError, TimeoutError, UnicodeError):
            return []

    async def vet(self, host: str, port: int) -> list[str]:
        """The addresses of ``host`` we may connect to on ``port``; raises :class:`OutboundRefused`
        if any of them is refused (one bad answer in a round-robin set is enough to refuse the name),
        ``OSError`` if the name does not resolve."""
        name = _normal_host(host)
        literal = _ip(name)
        if literal is not None:
            if why := self.refusal(literal, port):
                raise OutboundRefused(host, why)
            return [str(literal)]
        answers = await self._resolve(name, port)
        addresses = [a for a in (_ip(x) for x in answers) if a is not None]
        if not addresses:
            raise OSError(f"the host name {host} did not resolve")
        listed = name in self.hosts
        for address in addresses:
            if why := self.refusal(address, port, host_listed=listed):
                raise OutboundRefused(host, why)
        return [str(a) for a in addresses]

    async def target(self, url: str | httpx.URL) -> Target:
        parts = urlsplit(str(url))
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
        if not host or not port:
            raise OutboundRefused(host or str(url), "not an http(s) or ws(s) URL with a host")
        return Target(scheme, host, port, (await self.vet(host, port))[0])

    async def check_url(self, url: str) -> None:
        """Save-time check: raises :class:`OutboundRefused` for a target the policy refuses. A name
        that does not resolve now is accepted (a PBX may be offline while it is configured); every
        request checks again."""
        try:
            await self.target(url)
        except OSError:
            pass

    # --- clients ------------------------------------------------------------------------------------

    def transport(self, **kwargs: Any) -> PolicyTransport:
        return PolicyTransport(self, **kwargs)

    def http_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` for tenant-chosen URLs: vetted addresses, no redirects, no
        environment proxies. ``limits`` and ``verify`` go to the transport (a client ignores its own
        once it has one); other arguments to the client."""
        transport = self.transport(**{k: kwargs.pop(k) for k in ("limits", "verify") if k in kwargs})
        return httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False, **kwargs)

    @asynccontextmanager
    async def websocket(self, uri: str, **kwargs: Any) -> AsyncIterator[ClientConnection]:
        """``websockets.connect`` to the vetted address of ``uri`` (Host header and TLS keep the
        name), with no redirects and no proxy."""
        target = await self.target(uri)
        async with _NoRedirectConnect(uri, host=target.address, port=target.port, proxy=None, **kwargs) as ws:
            yield ws


class _NoRedirectConnect(connect):
    """websockets follows 3xx answers to a new URI by itself; for us that new URI is unvetted."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


class PolicyTransport(httpx.AsyncBaseTransport):
    """Resolves and vets each request's host (answers cached for ``cache_ttl_s``), then sends the
    request to the vetted address with the original Host header and TLS server name.

    One connection pool per host name: pools key connections by the URL's address, so two names
    served at one address would otherwise share a TLS connection verified for only one of them."""

    def __init__(self, policy: OutboundPolicy, **kwargs: Any) -> None:
        self.policy = policy
        self._kwargs = kwargs
        self._pools: dict[tuple[str, str, int], httpx.AsyncHTTPTransport] = {}
        self._vetted: dict[tuple[str, int], tuple[str, float]] = {}

    async def _address(self, host: str, port: int) -> str:
        key = (host, port)
        cached = self._vetted.get(key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        address = (await self.policy.vet(host, port))[0]
        self._vetted[key] = (address, now + self.policy.cache_ttl_s)
        return address

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        port = url.port or _DEFAULT_PORTS.get(url.scheme, 0)
        try:
            address = await self._address(url.host, port)
        except OSError as e:
            raise httpx.ConnectError(str(e), request=request) from None
        extensions = dict(request.extensions)
        if url.scheme == "https" and _ip(url.host) is None:
            extensions.setdefault("sni_hostname", url.host)
        vetted = httpx.Request(
            request.method,
            url.copy_with(host=address),
            headers=request.headers,  # carries Host: <original name>
            stream=request.stream,
            extensions=extensions,
        )
        key = (url.scheme, url.host, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = httpx.AsyncHTTPTransport(**self._kwargs)
        return await pool.handle_async_request(vetted)

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()


_default: OutboundPolicy | None = None


def default_policy() -> OutboundPolicy:
    """The process's policy from the environment, for code that was not handed one (a library
    caller building an ``AriClient`` or a responder directly): a missing argument must not mean
    "no policy"."""
    global _default
    if _default is None:
        from vr3ai.settings import Settings

        _default = OutboundPolicy.from_settings(Settings.from_env())
    return _default
