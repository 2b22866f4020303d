"""The Asterisk side of one ARI configuration, as text a PBX operator can paste.

Pure functions (no I/O, no database, no settings object) so that the dashboard, the CLI and the
tests produce the same text from the same inputs. Each snippet follows the user guide's example
for that file (``ari.conf``, ``http.conf``, ``extensions.conf``, ``websocket_client.conf``) with the
names of *this* configuration filled in, plus the few lines the guide leaves implicit and that we
know matter on Asterisk 22:

* ``websocket_client.conf``: ``protocols = media`` (chan_websocket refuses other sub-protocols),
  ``connection_type = per_call_config`` (the only type media supports), and ``tls_enabled = yes``
  whenever the URI is ``wss://`` — Asterisk does not negotiate TLS from the scheme alone.
* The media URI is derived from the platform's public URL (``http`` → ``ws``, ``https`` → ``wss``)
  or, when a separate TLS media listener is configured, from that port.

The ARI password is never rendered: it is the operator's own, so it appears as the guide's
placeholder (``your_secure_password``) with a comment saying which value to put there. The media
password is different: VR3 AI generates it for the configuration (``vr3ai.core.media_auth``) and
Asterisk must present it, so the ``websocket_client.conf`` snippet carries it when the caller
passes it. Callers pass it only when showing the snippets to the configuration's own organization.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from vr3ai.core.secrets import SecretBox
    from vr3ai.db.models import TelephonyConfiguration
    from vr3ai.settings import Settings

MEDIA_PATH = "/api/v1/telephony/ws/ari"
"""Where the platform accepts Asterisk's media WebSocket connections."""
ARI_PASSWORD_PLACEHOLDER = "your_secure_password"
MEDIA_PASSWORD_PLACEHOLDER = "your_media_password"
DEFAULT_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
ULAW_NOTE = (
    "VR3 AI's external media channel uses G.711 μ-law (ulaw). Make sure any PJSIP endpoint or SIP trunk "
    "that places or receives calls through VR3 AI allows ulaw (e.g. allow=ulaw in the endpoint config)."
)
TLS_NOTE = (
    "tls_enabled = yes is required even though the URI scheme is wss:// — without it Asterisk will not "
    "negotiate TLS and the connection will fail. ca_list_file must be a CA bundle that contains the CA "
    "which signed VR3 AI's certificate (the system bundle for a public CA; your own CA's PEM file "
    "otherwise), and the URI's host must be the certificate's CN or one of its DNS names (Asterisk "
    "does not consult IP-address entries). VR3 AI serves wss:// on its main port when started with "
    "VR3AI_TLS_CERT and VR3AI_TLS_KEY."
)


@dataclass(frozen=True)
class Snippet:
    filename: str
    """``ari.conf`` … or ``Asterisk CLI`` for the reload commands."""
    title: str
    text: str
    notes: tuple[str, ...] = field(default_factory=tuple)


def media_ws_uri(public_url: str, *, tls_port: int = 0) -> str:
    """The ``uri`` Asterisk must dial for media.

    ``public_url`` is how Asterisk reaches the platform's HTTP port (``settings.effective_public_url()``).
    ``tls_port``: the platform also serves media as ``wss://`` on that port (``VR3AI_MEDIA_TLS_PORT``);
    when the public URL is plain ``http`` we prefer it, because media then travels encrypted.
    """
    parts = urlsplit(public_url.strip().rstrip("/"))
    scheme = (parts.scheme or "http").lower()
    host = parts.hostname or "127.0.0.1"
    netloc_host = f"[{host}]" if ":" in host else host
    base_path = parts.path.rstrip("/")
    if scheme == "https":
        port = f":{parts.port}" if parts.port and parts.port != 443 else ""
        return f"wss://{netloc_host}{port}{base_path}{MEDIA_PATH}"
    if tls_port:
        return f"wss://{netloc_host}:{tls_port}{base_path}{MEDIA_PATH}"
    port = f":{parts.port}" if parts.port and parts.port != 80 else ""
    return f"ws://{netloc_host}{port}{base_path}{MEDIA_PATH}"


def is_loopback_url(url: str) -> bool:
    """True when the URL names this machine only: an Asterisk on another host cannot reach it."""
    host = (urlsplit(url).hostname or "").lower()
    return host in {"localhost", "::1", "0.0.0.0", "::"} or host.startswith("127.")


def _ari_port(ari_endpoint_url: str) -> tuple[str, int]:
    parts = urlsplit(ari_endpoint_url)
    scheme = (parts.scheme or "http").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, port or (8089 if scheme == "https" else 8088)


def ari_conf(stasis_app_name: str) -> Snippet:
    text = (
        "[general]\n"
        "enabled = yes\n"
        "\n"
        f"[{stasis_app_name}]\n"
        "type = user\n"
        "read_only = no\n"
        f"; replace {ARI_PASSWORD_PLACEHOLDER} with the App Password you saved in VR3 AI\n"
        f"password = {ARI_PASSWORD_PLACEHOLDER}\n"
    )
    return Snippet(
        "ari.conf",
        "Enable ARI (ari.conf)",
        text,
        (
            f"The section name ({stasis_app_name}) and password must match the Stasis App Name and App "
            "Password of this configuration, with no extra spaces.",
        ),
    )


def http_conf(ari_endpoint_url: str) -> Snippet:
    scheme, port = _ari_port(ari_endpoint_url)
    if scheme == "https":
        text = (
            "[general]\n"
            "enabled = yes\n"
            "tlsenable = yes\n"
            f"tlsbindaddr = 0.0.0.0:{port}\n"
            "tlscertfile = /etc/asterisk/keys/asterisk.crt\n"
            "tlsprivatekey = /etc/asterisk/keys/asterisk.key\n"
        )
        notes = (
            f"Your ARI Endpoint URL uses https, so ARI must be served over TLS on port {port}; "
            "use your own certificate and key paths.",
        )
    else:
        text = f"[general]\nenabled = yes\nbindaddr = 0.0.0.0\nbindport = {port}\n"
        notes = (f"bindport must match the port of your ARI Endpoint URL ({port}).",)
    notes += ("Changes to http.conf require a full Asterisk reload (core reload) or a service restart.",)
    return Snippet("http.conf", "Enable the HTTP Server (http.conf)", text, notes)


def extensions_conf(stasis_app_name: str, extensions: list[str] | tuple[str, ...] = ()) -> Snippet:
    lines = ["[from-external]"]
    if extensions:
        for exten in extensions:
            lines += [
                f"exten => {exten},1,NoOp(Incoming call to {exten})",
                f" same => n,Stasis({stasis_app_name})",
                " same => n,Hangup()",
            ]
        notes: tuple[str, ...] = (
            "One entry per phone number of this configuration. To route every extension instead, use the "
            f"pattern _X. (exten => _X.,1,NoOp(Incoming call to ${{EXTEN}}) then Stasis({stasis_app_name})).",
        )
    else:
        lines += [
            "exten => _X.,1,NoOp(Incoming call to ${EXTEN})",
            f" same => n,Stasis({stasis_app_name})",
            " same => n,Hangup()",
        ]
        notes = (
            "The pattern _X. routes every numeric extension into VR3 AI; once you have added phone numbers "
            "this snippet lists them one by one instead.",
        )
    notes += (
        "Use the context your SIP endpoints or trunk deliver calls to (from-external in the guide). Adding "
        "an extension in VR3 AI doesn't change Asterisk's dialplan — that's what this snippet is for.",
    )
    return Snippet("extensions.conf", "Configure the Stasis Dialplan (extensions.conf)", "\n".join(lines) + "\n", notes)


def websocket_client_conf(
    websocket_client_name: str,
    uri: str,
    *,
    media_username: str | None = None,
    media_password: str | None = None,
    ca_list_file: str = DEFAULT_CA_FILE,
) -> Snippet:
    tls = uri.lower().startswith("wss://")
    lines = [
        f"[{websocket_client_name}]",
        "type = websocket_client",
        "connection_type = per_call_config",
        f"uri = {uri}",
        "protocols = media",
    ]
    if media_username:
        lines.append(f"username = {conf_value(media_username)}")
        if media_password:
            lines.append(f"password = {conf_value(media_password)}")
        else:
            lines.append(f"; replace {MEDIA_PASSWORD_PLACEHOLDER} with the media password you saved in VR3 AI")
            lines.append(f"password = {MEDIA_PASSWORD_PLACEHOLDER}")
    if tls:
        lines += ["tls_enabled = yes", f"ca_list_file = {ca_list_file}"]
    else:
        lines.append("tls_enabled = no")
    notes: list[str] = []
    if tls:
        notes.append(TLS_NOTE)
    notes.append(
        f"The section name ({websocket_client_name}) is the WebSocket Client Name of this configuration. "
        "This name tells Asterisk which WebSocket connection to use for external media streaming during calls."
    )
    if media_username and media_password:
        notes.append(
            "username and password are this configuration's media credentials: VR3 AI refuses a media connection "
            "without them. Keep the password secret (chmod 640 websocket_client.conf, owned by Asterisk's user)."
        )
    notes.append(ULAW_NOTE)
    return Snippet(
        "websocket_client.conf",
        "Configure External Media Streaming (websocket_client.conf)",
        "\n".join(lines) + "\n",
        tuple(notes),
    )


def conf_value(value: str) -> str:
    """``value`` as Asterisk's config parser reads it back: ``;`` starts a comment unless escaped."""
    return value.replace(";", "\\;")


def reload_commands() -> Snippet:
    text = (
        "module reload res_ari.so                   # picks up ari.conf changes\n"
        "dialplan reload                            # picks up extensions.conf changes\n"
        "module reload res_websocket_client.so      # picks up websocket_client.conf changes\n"
    )
    return Snippet(
        "Asterisk CLI",
        "Apply the configuration changes (asterisk -rvvv)",
        text,
        (
            "Asterisk 22 has no \"ari reload\" command (some guides print it; the CLI answers \"No such "
            "command\"): module reload res_ari.so is what re-reads ari.conf.",
            "Changes to http.conf require a full Asterisk reload (core reload) or a service restart.",
        ),
    )


def asterisk_snippets(
    *,
    ari_endpoint_url: str,
    stasis_app_name: str,
    websocket_client_name: str,
    public_url: str,
    media_tls_port: int = 0,
    extensions: list[str] | tuple[str, ...] = (),
    media_username: str | None = None,
    media_password: str | None = None,
) -> list[Snippet]:
    """All snippets for one configuration, in the guide's order, then the reload commands."""
    uri = media_ws_uri(public_url, tls_port=media_tls_port)
    return [
        ari_conf(stasis_app_name),
        http_conf(ari_endpoint_url),
        extensions_conf(stasis_app_name, extensions),
        websocket_client_conf(websocket_client_name, uri, media_username=media_username, media_password=media_password),
        reload_commands(),
    ]


def configuration_snippets(
    settings: Settings, box: SecretBox, row: TelephonyConfiguration, extensions: list[str]
) -> tuple[list[Snippet], str]:
    """The Asterisk snippets of one configuration, with its media password, and the media URI.

    For the configuration's own organization only (callers check ownership first)."""
    public_url = settings.effective_public_url()
    tls_port = settings.media.tls_port if settings.media.tls_cert and settings.media.tls_key else 0
    password = box.decrypt(row.media_password_enc) if row.media_password_enc else None
    items = asterisk_snippets(
        ari_endpoint_url=row.ari_endpoint_url,
        stasis_app_name=row.stasis_app_name,
        websocket_client_name=row.websocket_client_name,
        public_url=public_url,
        media_tls_port=tls_port,
        extensions=extensions,
        media_username=row.media_username,
        media_password=password,
    )
    return items, media_ws_uri(public_url, tls_port=tls_port)
