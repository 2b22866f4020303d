"""Engine and session factory for SQLite (embedded) and PostgreSQL (production).

SQLite takes one writer at a time, and a writer that finds the database locked is put to sleep by
SQLite's busy handler in steps of up to 100 ms, whatever the lock's holder needs: under a burst of
calls, run inserts waited far longer than their transactions took (``python -m bench.setup_burst``;
figures in bench/README.md, "Reading setup_burst.py"). So on SQLite every ``session.begin()`` transaction of this
process first takes an asyncio lock, first come first served: writers queue in our event loop and
each one starts the moment the previous one commits. The gate is re-entrant per task (a
transaction that opens another session in the same task does not deadlock); reads outside
``begin()`` never wait for it (WAL lets them run next to the writer). PostgreSQL needs none of this.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from vr3ai.files import private_dir, private_file


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._file_sqlite = False
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            path = url.split(":///", 1)[1]
            if path and path != ":memory:" and not path.startswith("file:") and "mode=memory" not in url:
                # The database holds transcripts and encrypted credentials: 0600 in a 0700 folder
                # (SQLite gives its -wal and -shm files the database file's mode).
                private_dir(Path(path).parent)
                if "?" not in path and not Path(path).exists():
                    private_file(path)
            # Writers wait for each other instead of failing with "database is locked".
            kwargs["connect_args"] = {"timeout": 30}
            self._file_sqlite = bool(path) and path != ":memory:" and "mode=memory" not in url
            if self._file_sqlite:
                # Enough idle connections (each one an aiosqlite thread) for a burst of calls, so
                # none is opened (thread start, pragmas) or closed on a call's critical path. (An
                # in-memory database has a single static connection instead.)
                kwargs.update(pool_size=_SQLITE_POOL, max_overflow=10)
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        session_class: type[AsyncSession] = AsyncSession
        if self.is_sqlite:
            self.write_gate: WriteGate | None = WriteGate()
            session_class = type("GatedSession", (_GatedSession,), {"gate": self.write_gate})
        else:
            self.write_gate = None
        self.sessionmaker = async_sessionmaker(self.engine, class_=session_class, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as s:
            yield s

    async def warm(self) -> None:
        """Open the SQLite pool's connections now, at start-up, instead of during the first burst."""
        if not self._file_sqlite:
            return
        conns = [await self.engine.connect() for _ in range(_SQLITE_POOL)]
        for c in conns:
            await c.close()

    async def dispose(self) -> None:
        await self.engine.dispose()


_SQLITE_POOL = 8


class WriteGate:
    """A FIFO lock for write transactions, re-entrant within one task."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._depth = 0
        self.waits = 0

    async def acquire(self) -> None:
        task = asyncio.current_task()
        if task is not None and self._owner is task:
            self._depth += 1
            return
        if self._lock.locked():
            self.waits += 1
        await self._lock.acquire()
        self._owner = task
        self._depth = 1

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._owner = None
            self._lock.release()


class _GatedBegin:
    def __init__(self, gate: WriteGate, inner: Any) -> None:
        self._gate = gate
        self._inner = inner

    async def __aenter__(self) -> Any:
        await self._gate.acquire()
        try:
            return await self._inner.__aenter__()
        except BaseException:
            self._gate.release()
            raise

    async def __aexit__(self, *exc: Any) -> Any:
        try:
            return await self._inner.__aexit__(*exc)
        finally:
            self._gate.release()

    def __await__(self) -> Any:  # ``await session.begin()`` without ``async with``: not gated
        return self._inner.__await__()


class _GatedSession(AsyncSession):
    gate: ClassVar[WriteGate]

    def begin(self) -> Any:  # type: ignore[override]
        return _GatedBegin(self.gate, super().begin())


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
