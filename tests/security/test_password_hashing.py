"""Item 9 (Low): dashboard passwords are hashed at OWASP's scrypt cost; a hash names its
parameters, so hashes made at the old cost still verify and are upgraded at the next sign-in."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest
from sqlalchemy import select, update

from tests.web.platform import start_platform
from vr3ai.core.secrets import hash_password, password_needs_rehash, verify_password
from vr3ai.db.models import User


def _legacy_hash(password: str) -> str:
    """Exactly what main stored: scrypt N=2^14, r=8, p=1, no parameters in the string."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def _params(stored: str) -> dict[str, int]:
    scheme, params, salt, digest = stored.split("$")
    assert scheme == "scrypt" and len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32
    return {k: int(v) for k, v in (kv.split("=") for kv in params.split(","))}


def test_new_hashes_use_owasp_cost_and_carry_it() -> None:
    stored = hash_password("correct horse battery")
    p = _params(stored)
    # OWASP Password Storage Cheat Sheet: N=2^17 (128 MiB), r=8, p=1.
    assert 2 ** p["ln"] >= 2**17 and p["r"] >= 8 and p["p"] >= 1
    salt = base64.b64decode(stored.split("$")[2])
    expect = hashlib.scrypt(b"correct horse battery", salt=salt, n=2 ** p["ln"], r=p["r"], p=p["p"],
                            maxmem=2**28, dklen=32)
    assert base64.b64decode(stored.split("$")[3]) == expect
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterY", stored)
    assert not password_needs_rehash(stored)


def test_old_hashes_still_verify_and_need_rehash() -> None:
    old = _legacy_hash("correct horse battery")
    assert verify_password("correct horse battery", old)
    assert not verify_password("wrong", old)
    assert password_needs_rehash(old)


def test_malformed_or_absurd_hashes_never_verify() -> None:
    for stored in ("", "scrypt$", "bcrypt$x$y", "scrypt$ln=30,r=8,p=1$AAAA$AAAA", "scrypt$ln=17,r=8$AA$AA",
                   "scrypt$ln=17,r=8,p=1$!!$??"):
        assert not verify_password("x", stored)


async def test_sign_in_upgrades_an_old_hash(tmp_path: Path) -> None:
    async with start_platform(tmp_path) as p:
        user = await p.create_user()
        async with p.services.db.session() as s, s.begin():
            old = _legacy_hash(user.password)
            await s.execute(update(User).where(User.email == user.email).values(password_hash=old))
        async with p.dashboard(user) as web:  # signs in with the old hash
            assert (await web.get("/account")).status_code == 200  # and the new session is valid
        async with p.services.db.session() as s:
            stored = await s.scalar(select(User.password_hash).where(User.email == user.email))
        assert stored is not None and _params(stored)["ln"] >= 17 and verify_password(user.password, stored)
        # A wrong password changes nothing.
        async with p.dashboard() as web:
            await web.login(user.email, "wrong password", expect=401)
        async with p.services.db.session() as s:
            assert await s.scalar(select(User.password_hash).where(User.email == user.email)) == stored


async def test_upgrade_hashes_on_the_low_priority_password_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-hash at sign-in costs a full scrypt: it runs where sign-in hashing runs (niced threads),
    never on the event loop or asyncio's default executor."""
    import threading

    from vr3ai.core import orgs

    threads: list[str] = []
    real = orgs.hash_password

    def recording(password: str) -> str:
        threads.append(threading.current_thread().name)
        return real(password)

    async with start_platform(tmp_path) as p:
        user = await p.create_user()
        async with p.services.db.session() as s, s.begin():
            old = _legacy_hash(user.password)
            await s.execute(update(User).where(User.email == user.email).values(password_hash=old))
        monkeypatch.setattr(orgs, "hash_password", recording)
        async with p.dashboard(user) as web:
            assert (await web.get("/account")).status_code == 200
    assert len(threads) == 1 and threads[0].startswith("vr3ai-password"), threads
