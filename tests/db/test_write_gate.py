"""SQLite's in-process write gate: write transactions queue first come first served in our event
loop instead of in SQLite's sleeping busy handler, re-entrant within a task, reads never wait."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import func, select

from vr3ai.core.orgs import create_organization
from vr3ai.db.migrate import upgrade
from vr3ai.db.models import Organization
from vr3ai.db.session import Database, WriteGate


async def test_gate_is_fifo_and_reentrant() -> None:
    gate = WriteGate()
    order: list[int] = []
    await gate.acquire()

    async def writer(i: int) -> None:
        await gate.acquire()
        await gate.acquire()  # the same task again: no deadlock
        order.append(i)
        await asyncio.sleep(0)
        gate.release()
        gate.release()

    tasks = [asyncio.create_task(writer(i)) for i in range(6)]
    await asyncio.sleep(0.01)
    assert order == [] and gate.waits == 6
    gate.release()
    await asyncio.gather(*tasks)
    assert order == list(range(6))


async def test_concurrent_write_transactions_on_sqlite(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'gate.db'}")
    try:
        await upgrade(db)
        await db.warm()
        assert db.write_gate is not None
        # 40 organisations created at once: every transaction commits, none waits on SQLite's lock.
        await asyncio.gather(*(create_organization(db, f"Org {i}") for i in range(40)))
        async with db.session() as s:
            assert await s.scalar(select(func.count()).select_from(Organization)) == 40
        assert db.write_gate.waits > 0  # they really queued at the gate

        # Nested transactions in one task (outer one only read so far) do not deadlock.
        async with db.session() as outer, outer.begin():
            await outer.scalar(select(func.count()).select_from(Organization))
            async with db.session() as inner, inner.begin():
                inner.add(Organization(name="Nested"))
        # A reader outside begin() does not wait for a writer holding the gate.
        await db.write_gate.acquire()
        try:
            async with db.session() as s:
                n = await asyncio.wait_for(s.scalar(select(func.count()).select_from(Organization)), 2)
            assert n == 41
        finally:
            db.write_gate.release()
    finally:
        await db.dispose()


async def test_postgres_has_no_gate() -> None:
    assert Database("postgresql+asyncpg://u:p@127.0.0.1:1/x").write_gate is None
