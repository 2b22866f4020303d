"""Organizations, their API keys and dashboard users."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from sqlalchemy import func, null, select, update

from vr3ai.core.limits import LIMIT_COLUMNS
from vr3ai.core.secrets import hash_api_key, hash_password, new_api_key, password_needs_rehash
from vr3ai.db.models import ApiKey, Organization, User, utcnow
from vr3ai.db.session import Database

MIN_PASSWORD_LENGTH = 8


async def create_organization(
    db: Database, name: str, *, max_concurrent_calls: int = 5, minutes_per_month: int | None = 1000
) -> tuple[Organization, str]:
    """Create an organization with one API key. The key is returned once and stored only hashed."""
    if max_concurrent_calls < 0 or (minutes_per_month is not None and minutes_per_month < 0):
        raise ValueError("quota values must not be negative")
    key = new_api_key()
    async with db.session() as s, s.begin():
        org = Organization(
            name=name,
            max_concurrent_calls=max_concurrent_calls,
            # The column has a default (1000) and the ORM applies it to a plain None, silently turning
            # "no monthly limit" into 1000 minutes; null() writes NULL.
            minutes_per_month=minutes_per_month if minutes_per_month is not None else null(),
        )
        s.add(org)
        await s.flush()
        await s.refresh(org, ["minutes_per_month"])
        s.add(ApiKey(organization_id=org.id, prefix=key[:8], key_hash=hash_api_key(key)))
    return org, key


async def ensure_default_organization(db: Database) -> tuple[str, str] | None:
    """On the first start of an empty data folder, create an organization and return its id and
    API key (the key this once only); ``None`` when any organization exists."""
    if await list_organizations(db):
        return None
    org, key = await create_organization(db, "Default organization")
    return org.id, key


async def set_limits(db: Database, organization_id: str, **limits: int) -> Organization:
    """Change per-tenant limits (``vr3ai.core.limits.LIMIT_COLUMNS``); existing rows over a lowered
    limit stay, only new ones are refused."""
    unknown = set(limits) - set(LIMIT_COLUMNS)
    if unknown:
        raise ValueError(f"unknown limit(s): {', '.join(sorted(unknown))}")
    if any(v < 0 for v in limits.values()):
        raise ValueError("limits must not be negative")
    async with db.session() as s, s.begin():
        org = await s.get(Organization, organization_id)
        if org is None:
            raise LookupError(f"organization {organization_id} not found")
        for name, value in limits.items():
            setattr(org, name, value)
    return org


async def create_api_key(db: Database, organization_id: str, name: str = "default") -> str:
    return (await create_api_key_row(db, organization_id, name))[1]


async def create_api_key_row(db: Database, organization_id: str, name: str = "default") -> tuple[ApiKey, str]:
    """A new API key: its row (the id names it for ``revoke``) and the key itself, shown once."""
    key = new_api_key()
    async with db.session() as s, s.begin():
        if await s.get(Organization, organization_id) is None:
            raise LookupError(f"organization {organization_id} not found")
        row = ApiKey(organization_id=organization_id, name=name, prefix=key[:8], key_hash=hash_api_key(key))
        s.add(row)
    return row, key


async def list_api_keys(db: Database, organization_id: str) -> list[ApiKey]:
    async with db.session() as s:
        if await s.get(Organization, organization_id) is None:
            raise LookupError(f"organization {organization_id} not found")
        rows = await s.scalars(
            select(ApiKey).where(ApiKey.organization_id == organization_id).order_by(ApiKey.created_at)
        )
        return list(rows)


async def revoke_api_key(db: Database, key_id: str) -> ApiKey:
    """Revoke the key with this id: every request with it is refused from the next one on (keys are
    looked up per request, nothing caches them). Revoking twice keeps the first time."""
    async with db.session() as s, s.begin():
        row = await s.get(ApiKey, key_id)
        if row is None:
            raise LookupError(f"API key {key_id} not found")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
    return row


async def organization_for_key(db: Database, key: str) -> Organization | None:
    async with db.session() as s:
        row = await s.execute(
            select(Organization)
            .join(ApiKey, ApiKey.organization_id == Organization.id)
            .where(ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None))
        )
        return row.scalar_one_or_none()


async def list_organizations(db: Database) -> list[Organization]:
    async with db.session() as s:
        return list((await s.execute(select(Organization).order_by(Organization.created_at))).scalars())


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")


async def create_user(db: Database, organization_id: str, email: str, password: str) -> User:
    check_password(password)
    # ~0.5 s of CPU: off the event loop, and before the write transaction (on SQLite it holds the
    # process's write gate, which call set-up waits for).
    password_hash = await asyncio.to_thread(hash_password, password)
    async with db.session() as s, s.begin():
        if await s.get(Organization, organization_id) is None:
            raise LookupError(f"organization {organization_id} not found")
        user = User(organization_id=organization_id, email=email.strip().lower(), password_hash=password_hash)
        s.add(user)
    return user


async def set_password(db: Database, email: str, password: str) -> User:
    """Give the user a new password. The session cookies carry a fingerprint of the password hash,
    so this also signs the user out of every dashboard session."""
    check_password(password)
    new_hash = await asyncio.to_thread(hash_password, password)  # as in create_user
    async with db.session() as s, s.begin():
        user = await s.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))
        if user is None:
            raise LookupError(f"user {email.strip()} not found")
        user.password_hash = new_hash
    return user


async def upgrade_password_hash(db: Database, user: User, password: str, executor: Executor | None = None) -> None:
    """After a successful sign-in with a hash made at an older cost: store one at today's cost.
    Conditional on the old hash, so a password changed meanwhile is never overwritten. ``executor``:
    where the hash runs (the dashboard's low-priority password threads); default: asyncio's."""
    if not password_needs_rehash(user.password_hash):
        return
    new_hash = await asyncio.get_running_loop().run_in_executor(executor, hash_password, password)
    async with db.session() as s, s.begin():
        done = await s.execute(
            update(User)
            .where(User.id == user.id, User.password_hash == user.password_hash)
            .values(password_hash=new_hash)
        )
    if done.rowcount:  # type: ignore[attr-defined]
        user.password_hash = new_hash
