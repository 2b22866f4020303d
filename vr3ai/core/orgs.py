"""Organizations, their API keys and dashboard users."""

from __future__ import annotations

from sqlalchemy import null, select

from vr3ai.core.secrets import hash_api_key, hash_password, new_api_key
from vr3ai.db.models import ApiKey, Organization, User
from vr3ai.db.session import Database


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


async def create_api_key(db: Database, organization_id: str, name: str = "default") -> str:
    key = new_api_key()
    async with db.session() as s, s.begin():
        if await s.get(Organization, organization_id) is None:
            raise LookupError(f"organization {organization_id} not found")
        s.add(ApiKey(organization_id=organization_id, name=name, prefix=key[:8], key_hash=hash_api_key(key)))
    return key


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


async def create_user(db: Database, organization_id: str, email: str, password: str) -> User:
    if len(password) < 8:
        raise ValueError("password must be at least 8 characters")
    async with db.session() as s, s.begin():
        if await s.get(Organization, organization_id) is None:
            raise LookupError(f"organization {organization_id} not found")
        user = User(organization_id=organization_id, email=email.strip().lower(), password_hash=hash_password(password))
        s.add(user)
    return user
