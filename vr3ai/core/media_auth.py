"""Media WebSocket credentials: every telephony configuration has its own pair, always required.

Why: the media WebSocket listens wherever Asterisk can reach the platform (by default on every
address). Without credentials anyone who can reach that port and knows or guesses a pending channel id
could take over a call's audio. So each configuration gets a user name and a password of its own,
generated when the configuration is created (or when an operator sets the field to null), and the
media server refuses every connection whose HTTP Basic credentials do not match the call's
configuration. Configurations saved before this existed get theirs on the next start
(:func:`backfill`): it needs the process's secret key, which a database migration does not have.

The password is a secret: encrypted at rest like the ARI password, never in an API field or a
log line. Its owner sees it in one place only, the ``websocket_client.conf`` snippet that must
carry it (dashboard page and ``GET /telephony-configurations/{id}/asterisk-snippets``).

Generated values use only ``[A-Za-z0-9_-]``: nothing that websocket_client.conf (``;`` starts a
comment) or HTTP Basic (``:`` separates user and password) would need quoted.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING

from sqlalchemy import or_, select

from vr3ai.db.models import TelephonyConfiguration
from vr3ai.db.session import Database

if TYPE_CHECKING:
    from vr3ai.core.secrets import SecretBox

log = logging.getLogger("vr3ai.core.media_auth")


def generate_username() -> str:
    return f"vr3ai-{secrets.token_hex(4)}"


def generate_password() -> str:
    return secrets.token_urlsafe(24)  # 192 bits, 32 characters


def fill_missing(row: TelephonyConfiguration, box: SecretBox) -> bool:
    """Give ``row`` whichever half of its media credentials it lacks; True when something changed."""
    changed = False
    if not row.media_username:
        row.media_username = generate_username()
        changed = True
    if not row.media_password_enc:
        row.media_password_enc = box.encrypt(generate_password())
        changed = True
    return changed


async def backfill(db: Database, box: SecretBox) -> int:
    """Generate credentials for every stored configuration that has none (saved by an older version,
    when media authentication was optional). Returns how many were changed."""
    missing = or_(TelephonyConfiguration.media_username.is_(None), TelephonyConfiguration.media_password_enc.is_(None))
    async with db.session() as s, s.begin():
        rows = (await s.scalars(select(TelephonyConfiguration).where(missing))).all()
        changed = sum(fill_missing(row, box) for row in rows)
    if changed:
        log.warning(
            "generated media WebSocket credentials for telephony configurations that had none; their Asterisk "
            "must use the username and password of the websocket_client.conf snippet shown for them",
            extra={"configurations": changed},
        )
    return changed
