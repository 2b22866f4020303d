"""A throw-away PostgreSQL server for tests, from Debian's packages.

``PostgresServer.start()`` runs ``initdb`` into a fresh temp directory and ``pg_ctl start`` on
127.0.0.1 and a free port (Unix socket in the same temp directory, trust authentication, fsync off:
nothing here needs to survive a crash). ``stop()`` kills it and deletes the directory. As root the
binaries run as the ``postgres`` OS user (PostgreSQL refuses to run as root). If the binaries are
missing and we are root, ``apt-get install postgresql`` is tried once.

Set ``VR3AI_TEST_SKIP_POSTGRES=1`` to skip PostgreSQL-backed tests instead of failing them when no
server can be started (a laptop without PostgreSQL); CI must not set it.
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg


class PostgresUnavailable(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _find_bindir() -> Path | None:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
        reverse=True,
    )
    if candidates:
        return Path(candidates[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _install() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PostgresUnavailable("PostgreSQL binaries not found and cannot apt-get install them (not root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise PostgresUnavailable(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")


class PostgresServer:
    def __init__(self, bindir: Path, root: Path, port: int) -> None:
        self.bindir = bindir
        self.root = root
        self.port = port
        self.data = root / "data"
        self.user = "postgres"
        self._running = False

    # -- lifecycle ----------------------------------------------------------------------------

    @classmethod
    def start(cls) -> PostgresServer:
        bindir = _find_bindir()
        if bindir is None:
            _install()
            bindir = _find_bindir()
            if bindir is None:
                raise PostgresUnavailable("postgresql installed but initdb not found")
        # As root, TMPDIR may point somewhere the postgres user cannot enter (under /root): use /tmp.
        root = Path(tempfile.mkdtemp(prefix="vr3ai-pg-", dir="/tmp" if os.geteuid() == 0 else None))
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as e:
                raise PostgresUnavailable("running as root but there is no 'postgres' OS user") from e
            os.chown(root, pw.pw_uid, pw.pw_gid)
        last_error = ""
        for _attempt in range(3):  # the free port can be taken between probing and binding
            server = cls(bindir, root, _free_port())
            try:
                server._initdb_once()
                server._pg_ctl_start()
            except PostgresUnavailable as e:
                last_error = str(e)
                continue
            atexit.register(server.stop)
            return server
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresUnavailable(last_error)

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def _initdb_once(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        proc = self._run(
            "initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"
        )
        if proc.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {proc.stderr[-2000:]}")

    def _pg_ctl_start(self) -> None:
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.root}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=300",
                "-c shared_buffers=64MB",
            ]
        )
        proc = self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )
        if proc.returncode != 0:
            log = (
                (self.root / "server.log").read_text(errors="replace")[-2000:]
                if (self.root / "server.log").exists()
                else ""
            )
            raise PostgresUnavailable(f"pg_ctl start failed: {proc.stderr[-1000:]} {log}")
        self._running = True

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop", timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases ----------------------------------------------------------------------------

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{database}"

    async def _admin(self) -> asyncpg.Connection:
        deadline = time.monotonic() + 10
        while True:
            try:
                return await asyncpg.connect(host="127.0.0.1", port=self.port, user=self.user, database="postgres")
            except (OSError, asyncpg.CannotConnectNowError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def create_database(self, name: str | None = None, template: str | None = None) -> str:
        """Create a database (optionally a copy of ``template``) and return its name."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        conn = await self._admin()
        try:
            sql = f'CREATE DATABASE "{name}"'
            if template:
                # PG 15's default WAL_LOG strategy clones a small template in ~40 ms; FILE_COPY
                # checkpoints twice and takes ~250 ms.
                sql += f' TEMPLATE "{template}"'
            await conn.execute(sql)
        finally:
            await conn.close()
        return name

    async def execute(self, database: str, sql: str) -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=self.port, user=self.user, database=database)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def has_database(self, name: str) -> bool:
        conn = await self._admin()
        try:
            return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
        finally:
            await conn.close()
