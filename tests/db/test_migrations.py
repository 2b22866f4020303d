"""Migrations on empty SQLite and PostgreSQL databases: they build exactly the models' schema,
are idempotent, and downgrade cleanly."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from vr3ai.db.migrate import alembic_config, upgrade
from vr3ai.db.models import Base
from vr3ai.db.session import Database


def _diff(connection: Any) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


async def _tables(db: Database) -> set[str]:
    async with db.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_upgrade_empty_database_to_head(empty_database_url: str) -> None:
    db = Database(empty_database_url)
    try:
        assert await _tables(db) == set()
        await upgrade(db)
        assert await _tables(db) == set(Base.metadata.tables) | {"alembic_version"}
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        async with db.engine.connect() as conn:
            assert (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one() == head
            # The migrations build what the models describe, so autogenerate finds nothing to do.
            assert await conn.run_sync(_diff) == []
        await upgrade(db)  # a second start is a no-op
        assert await _tables(db) == set(Base.metadata.tables) | {"alembic_version"}
    finally:
        await db.dispose()


async def test_downgrade_to_base_and_back(empty_database_url: str) -> None:
    db = Database(empty_database_url)
    try:
        await upgrade(db)
        cfg = alembic_config(db.url)

        def downgrade(connection: Any) -> None:
            cfg.attributes["connection"] = connection
            command.downgrade(cfg, "base")

        async with db.engine.begin() as conn:
            await conn.run_sync(downgrade)
        assert await _tables(db) <= {"alembic_version"}
        await upgrade(db)
        assert await _tables(db) == set(Base.metadata.tables) | {"alembic_version"}
    finally:
        await db.dispose()


async def test_port_less_ari_urls_get_the_port_they_connected_to(empty_database_url: str) -> None:
    """Before 0005 a URL without a port connected to 80/443; the migration writes that port out
    (from endpoint_key), so an existing configuration keeps its server and now shows the port."""
    db = Database(empty_database_url)
    try:
        cfg = alembic_config(db.url)

        def to_0004(connection: Any) -> None:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "0004")

        async with db.engine.begin() as conn:
            await conn.run_sync(to_0004)
            await conn.execute(
                text("INSERT INTO organizations (id, name, max_concurrent_calls, active_calls, created_at) "
                     "VALUES ('o1', 'Org', 1, 0, CURRENT_TIMESTAMP)")
            )
            for cid, url, key in (
                ("c1", "http://pbx", "http://pbx:80"),
                ("c2", "https://[::1]", "https://[::1]:443"),
                ("c3", "http://pbx:8088", "http://pbx:8088"),
            ):
                await conn.execute(
                    text("INSERT INTO telephony_configurations (id, organization_id, name, provider, "
                         "ari_endpoint_url, endpoint_key, stasis_app_name, app_password_enc, "
                         "websocket_client_name, from_extensions, dial_template, enabled, created_at, updated_at) "
                         "VALUES (:id, 'o1', 'c', 'ari', :url, :key, :id, 'x', 'vr3ai', '[]', 'PJSIP/{to}', "
                         "true, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
                    {"id": cid, "url": url, "key": key},
                )
        await upgrade(db)
        async with db.engine.connect() as conn:
            rows = (await conn.execute(
                text("SELECT id, ari_endpoint_url, endpoint_key FROM telephony_configurations ORDER BY id")
            )).all()
        assert [tuple(r) for r in rows] == [
            ("c1", "http://pbx:80", "http://pbx:80"),
            ("c2", "https://[::1]:443", "https://[::1]:443"),
            ("c3", "http://pbx:8088", "http://pbx:8088"),
        ]
    finally:
        await db.dispose()
