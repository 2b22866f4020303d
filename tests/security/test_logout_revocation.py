"""Item 9 (Low): a signed-out dashboard cookie stays dead after the server restarts."""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet

from tests.web.platform import start_platform
from vr3ai.web.auth import SESSION_COOKIE


async def test_logout_survives_a_restart(tmp_path: Path) -> None:
    key = {"secret_key": Fernet.generate_key().decode()}
    async with start_platform(tmp_path, settings_overrides=key) as p:
        user = await p.create_user()
        async with p.dashboard(user) as web:
            cookie = web.http.cookies.get(SESSION_COOKIE)
            assert cookie and (await web.get("/account")).status_code == 200
            r = await web.http.post("/logout", data={"csrf_token": await web.csrf("/account")})
            assert r.status_code == 303
        # Someone kept a copy of the cookie (a shared computer, a proxy log): refused now...
        async with p.client(cookies={SESSION_COOKIE: cookie}) as http:
            assert (await http.get("/account")).status_code == 303
        # ...while another session of the same user is untouched by this sign-out.
        async with p.dashboard(user) as other:
            other_cookie = other.http.cookies.get(SESSION_COOKIE)

    # A new process on the same data folder and key.
    async with start_platform(tmp_path, settings_overrides=key) as p:
        async with p.client(cookies={SESSION_COOKIE: cookie}) as http:
            r = await http.get("/account")
            assert r.status_code == 303 and r.headers["location"].startswith("/login")
        async with p.client(cookies={SESSION_COOKIE: other_cookie}) as http:
            assert (await http.get("/account")).status_code == 200


async def test_expired_revocations_are_pruned(tmp_path: Path) -> None:
    """The table holds only sessions whose cookies could still be presented (bounded growth)."""
    from datetime import timedelta

    from sqlalchemy import select

    from vr3ai.db.models import RevokedSession, utcnow
    from vr3ai.web.auth import WebState

    async with start_platform(tmp_path) as p:
        db = p.services.db
        async with db.session() as s, s.begin():
            s.add(RevokedSession(sid="long-expired", expires_at=utcnow() - timedelta(hours=1)))
            s.add(RevokedSession(sid="still-valid", expires_at=utcnow() + timedelta(hours=1)))
        await WebState(p.services).revoke("just-now")
        await WebState(p.services).revoke("just-now")  # twice: no error, one row
        async with db.session() as s:
            sids = set((await s.scalars(select(RevokedSession.sid))).all())
        assert sids == {"still-valid", "just-now"}
