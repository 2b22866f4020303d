"""Sign-in, sessions, CSRF and the login rate limit, over real HTTP."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.web.platform import CSRF_RE, Platform
from vr3ai.web.auth import SESSION_COOKIE

PAGES = [
    "/telephony-configurations",
    "/telephony-configurations/new",
    "/workflows",
    "/workflows/new",
    "/runs",
    "/account",
]


async def test_every_page_redirects_to_login_without_session(platform: Platform) -> None:
    async with platform.client() as http:
        r = await http.get("/")
        assert r.status_code == 303 and r.headers["location"] == "/login"
        for path in PAGES:
            r = await http.get(path)
            assert r.status_code == 303, path
            assert r.headers["location"].startswith("/login"), path
        r = await http.get("/runs?status=failed")
        assert r.headers["location"] == "/login?next=/runs%3Fstatus%3Dfailed"
        # POSTs too (no session means no CSRF token either).
        r = await http.post("/telephony-configurations", data={"ari_endpoint_url": "http://x:8088"})
        assert r.status_code == 303 and r.headers["location"] == "/login"
        r = await http.get("/telephony-configurations/00000000-0000-0000-0000-000000000000/status.json")
        assert r.status_code == 303


async def test_login_ok_sets_a_safe_cookie_and_follows_next(platform: Platform) -> None:
    user = await platform.create_user("Ops@Example.com")
    async with platform.dashboard() as web:
        token = await web.csrf("/login?next=/runs")
        r = await web.http.post(
            "/login", data={"email": "ops@example.com", "password": user.password, "csrf_token": token, "next": "/runs"}
        )
        assert r.status_code == 303 and r.headers["location"] == "/runs"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie
        page = await web.get("/runs")
        assert page.status_code == 200 and "Sign out" in page.text
        assert page.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        # Signed in: / and /login lead to the dashboard.
        assert (await web.get("/")).headers["location"] == "/telephony-configurations"
        assert (await web.get("/login")).headers["location"] == "/telephony-configurations"


async def test_secure_cookie_flag(tmp_path: object) -> None:
    from pathlib import Path

    from tests.web.platform import start_platform

    async with start_platform(Path(str(tmp_path)), settings_overrides={"cookie_secure": True}) as p:
        async with p.client() as http:
            r = await http.get("/login")
            assert "Secure" in r.headers["set-cookie"]


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example"])
async def test_next_cannot_leave_the_site(platform: Platform, target: str) -> None:
    user = await platform.create_user()
    async with platform.dashboard() as web:
        token = await web.csrf("/login")
        r = await web.http.post(
            "/login", data={"email": user.email, "password": user.password, "csrf_token": token, "next": target}
        )
        assert r.headers["location"] == "/telephony-configurations"


async def test_bad_password_and_unknown_user(platform: Platform) -> None:
    user = await platform.create_user()
    async with platform.dashboard() as web:
        r = await web.login(user.email, "wrong password", expect=401)
        assert "Wrong email or password." in r.text
        assert 'value="' + user.email + '"' in r.text  # the e-mail is kept, the password is not
        assert "wrong password" not in r.text
        r = await web.login("nobody@example.com", "whatever12", expect=401)
        assert "Wrong email or password." in r.text
        assert (await web.get("/account")).status_code == 303


async def test_login_is_rate_limited_per_ip_and_email(platform: Platform) -> None:
    user = await platform.create_user()
    other = await platform.create_user()
    async with platform.dashboard() as web:
        for _ in range(5):
            await web.login(user.email, "wrong password", expect=401)
        r = await web.login(user.email, user.password, expect=429)  # even the right password waits
        assert "Too many failed sign-in attempts" in r.text
        assert 0 < int(r.headers["retry-after"]) <= 60
        # Another account from the same address is not locked out by these failures.
        await web.login(other.email, other.password, expect=303)


async def test_csrf_is_required_on_every_post(platform: Platform) -> None:
    user = await platform.create_user()
    async with platform.dashboard(user) as web:
        for path in ("/telephony-configurations", "/workflows", "/logout"):
            r = await web.http.post(path, data={"name": "x"})
            assert r.status_code == 403, path
            assert "This form has expired" in r.text
            r = await web.http.post(path, data={"name": "x", "csrf_token": "forged"})
            assert r.status_code == 403, path
        # Still signed in: the forged logout did nothing.
        assert (await web.get("/account")).status_code == 200
        # The header form (fetch) works as well as the field.
        token = await web.csrf("/account")
        r = await web.http.post("/logout", headers={"X-CSRF-Token": token})
        assert r.status_code == 303


async def test_login_form_needs_its_csrf_token(platform: Platform) -> None:
    user = await platform.create_user()
    async with platform.client() as http:
        r = await http.post("/login", data={"email": user.email, "password": user.password})
        assert r.status_code == 403 and "expired" in r.text
        # A token from another browser's anonymous session does not fit this one.
        async with platform.client() as other:
            foreign = CSRF_RE.search((await other.get("/login")).text)
            assert foreign
        await http.get("/login")
        r = await http.post(
            "/login", data={"email": user.email, "password": user.password, "csrf_token": foreign.group(1)}
        )
        assert r.status_code == 403


async def test_session_fixation_new_session_at_login(platform: Platform) -> None:
    user = await platform.create_user()
    async with platform.dashboard() as web:
        await web.get("/login")
        before = web.http.cookies.get(SESSION_COOKIE)
        csrf_before = await web.csrf("/login")
        await web.login(user.email, user.password)
        after = web.http.cookies.get(SESSION_COOKIE)
        assert before and after and before != after
        assert await web.csrf("/account") != csrf_before
    # A cookie planted before login (the attacker's) is not signed in afterwards.
    async with platform.client() as attacker:
        await attacker.get("/login")
        planted = attacker.cookies.get(SESSION_COOKIE)
        assert planted
    async with platform.client(cookies={SESSION_COOKIE: planted}) as victim:
        token = CSRF_RE.search((await victim.get("/login")).text)
        assert token
        r = await victim.post(
            "/login", data={"email": user.email, "password": user.password, "csrf_token": token.group(1)}
        )
        assert r.status_code == 303
    async with platform.client(cookies={SESSION_COOKIE: planted}) as attacker_again:
        assert (await attacker_again.get("/account")).status_code == 303


async def test_logout_revokes_the_session(platform: Platform) -> None:
    user = await platform.create_user()
    async with platform.dashboard(user) as web:
        stolen = web.http.cookies.get(SESSION_COOKIE)
        token = await web.csrf("/account")
        r = await web.http.post("/logout", data={"csrf_token": token})
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert (await web.get("/account")).status_code == 303
    async with platform.client(cookies={SESSION_COOKIE: stolen or ""}) as thief:
        assert (await thief.get("/account")).status_code == 303


async def test_tampered_cookie_is_ignored(platform: Platform) -> None:
    user = await platform.create_user()
    async with platform.dashboard(user) as web:
        value = web.http.cookies.get(SESSION_COOKIE) or ""
    forged = re.sub(r"^.", lambda m: "A" if m.group(0) != "A" else "B", value)
    async with platform.client(cookies={SESSION_COOKIE: forged}) as http:
        assert (await http.get("/account")).status_code == 303


async def test_password_change_ends_sessions(platform: Platform) -> None:
    from sqlalchemy import update

    from vr3ai.core.secrets import hash_password
    from vr3ai.db.models import User

    user = await platform.create_user()
    async with platform.dashboard(user) as web:
        assert (await web.get("/account")).status_code == 200
        async with platform.services.db.session() as s, s.begin():
            await s.execute(
                update(User).where(User.email == user.email).values(password_hash=hash_password("new pass 123"))
            )
        assert (await web.get("/account")).status_code == 303


async def test_static_files(platform: Platform) -> None:
    async with platform.client() as http:
        css = await http.get("/static/app.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        js = await http.get("/static/app.js")
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]
        assert (await http.get("/static/../settings.py")).status_code == 404
        assert (await http.get("/static/nope.css")).status_code == 404


async def test_api_is_unaffected(platform: Platform) -> None:
    async with httpx.AsyncClient(base_url=platform.base_url) as http:
        r = await http.get("/api/v1/workflows")
        assert r.status_code == 401
        spec = (await http.get("/openapi.json")).json()
        assert not any(p.startswith(("/login", "/telephony-configurations")) for p in spec["paths"])
