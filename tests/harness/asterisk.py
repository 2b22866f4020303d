"""A real Asterisk 22 (Debian sid chroot) for integration tests and benchmarks.

The harness plays the *outside world* of the platform: the PBX, callers and callees. It never
touches the Stasis app the platform holds (``vr3ai``): callers are originated with a dialplan
``context/extension/priority``, so every ARI event about them reaches the platform exactly as a
real inbound call would.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx
import numpy as np

from . import audio

if TYPE_CHECKING:
    from .wscaller import WebSocketCaller

log = logging.getLogger("vr3ai.tests.harness")

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = Path(__file__).resolve().parent / "conf"
CHROOT_SCRIPT = REPO_ROOT / "scripts" / "asterisk-chroot.sh"
DEFAULT_CHROOT = Path(
    os.environ.get("VR3AI_ASTERISK_CHROOT", Path.home() / ".cache" / "vr3ai" / "asterisk-sid")
)
CACHE_DIR = Path(os.environ.get("VR3AI_HARNESS_CACHE", Path.home() / ".cache" / "vr3ai" / "harness"))

ARI_USER = "vr3ai"
ARI_PASSWORD = "vr3ai-secret"
ARI_USERS: dict[str, str] = {"vr3ai": "vr3ai-secret", "vr3ai2": "other-secret", "intruder": "intruder-secret"}
MEDIA_USER = "vr3ai-media"
MEDIA_PASSWORD = "media-secret"
MEDIA_PATH = "/api/v1/telephony/ws/ari"
PLATFORM_APP = "vr3ai"

# Paths as Asterisk sees them (inside the chroot).
_REC_DIR_IN = "/var/spool/asterisk/monitor"
_SOUND_DIR_IN = "/var/lib/asterisk/vr3ai-test"
_CA_IN = "/etc/asterisk/keys/vr3ai-test-ca.pem"
_CONF_FILES = (
    "http.conf", "ari.conf", "extensions.conf", "websocket_client.conf", "pjsip.conf", "modules.conf",
    "logger.conf", "rtp.conf", "chan_websocket.conf", "manager.conf",
)
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.\-]+$")


class AsteriskLabError(RuntimeError):
    pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _short_id() -> str:
    return uuid.uuid4().hex[:10]


# ---------------------------------------------------------------------------- TLS material


@dataclass(frozen=True)
class TlsMaterial:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def ensure_tls(directory: Path = CACHE_DIR / "tls") -> TlsMaterial:
    """A throw-away CA plus a server certificate for 127.0.0.1 / localhost, made once and reused.

    Regenerated when missing or expiring within a day, so a cache left for months still works.
    """
    d = directory
    tls = TlsMaterial(d / "ca.pem", d / "ca.key", d / "server.pem", d / "server.key")
    if all(p.exists() for p in (tls.ca_cert, tls.ca_key, tls.server_cert, tls.server_key)):
        check = subprocess.run(["openssl", "x509", "-checkend", "86400", "-noout", "-in", str(tls.server_cert)],
                               capture_output=True, timeout=30)
        if check.returncode == 0:
            return tls
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".gen-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365", "-subj", "/CN=vr3ai-test-ca",
        "-keyout", "ca.key", "-out", "ca.pem", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
        "-out", "server.csr")
    (tmp / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
                                 "basicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "365", "-extfile", "ext.cnf", "-out", "server.pem")
    for name in ("ca.pem", "ca.key", "server.pem", "server.key"):
        (tmp / name).replace(d / name)
    shutil.rmtree(tmp, ignore_errors=True)
    return tls


# ---------------------------------------------------------------------------- caller handle


@dataclass
class CallerHandle:
    """A simulated caller placed by `AsteriskLab.call` (Local channel) or `.sip_call` (PJSIP loop).

    `channel_id` is the caller's own leg (runs [harness-caller]); `callee_channel_id` is the leg
    that reaches the far side (for Local calls the ;2 half that enters Stasis; for SIP the inbound
    PJSIP leg, learnt with `wait_callee`).
    """

    lab: AsteriskLab
    exten: str
    channel_id: str
    callee_channel_id: str | None
    rec_name: str | None
    hold_s: float
    kind: str  # "local" or "sip"
    originated_at: float  # time.monotonic() just before the originate POST
    originate_ms: float  # duration of the originate POST
    answered_at: float | None = None
    ended_at: float | None = None
    response: dict[str, Any] = field(default_factory=dict)

    async def channel(self) -> dict[str, Any] | None:
        r = await self.lab.ari("GET", f"/channels/{self.channel_id}", ok=(200, 404))
        return r.json() if r.status_code == 200 else None

    async def is_up(self) -> bool:
        ch = await self.channel()
        return ch is not None

    async def wait_answered(self, timeout_s: float = 10.0, poll_s: float = 0.02) -> float:
        """Wait until the far side answered (caller leg state Up); returns seconds since originate."""
        deadline = time.monotonic() + timeout_s
        async with self.lab.ari_client() as c:
            while time.monotonic() < deadline:
                r = await c.get(f"/channels/{self.channel_id}")
                if r.status_code == 404:
                    raise AsteriskLabError(f"call {self.channel_id} ended before it was answered")
                if r.status_code == 200 and r.json().get("state") == "Up":
                    self.answered_at = time.monotonic()
                    return self.answered_at - self.originated_at
                await asyncio.sleep(poll_s)
        raise TimeoutError(f"call {self.channel_id} not answered within {timeout_s} s")

    async def wait_hangup(self, timeout_s: float | None = None, poll_s: float = 0.05) -> float:
        """Wait until the caller leg is gone (ARI 404); returns seconds since originate.

        Default timeout: the call's hold time plus a margin, since the caller hangs up by itself.
        """
        if timeout_s is None:
            timeout_s = self.hold_s + 15.0
        deadline = time.monotonic() + timeout_s
        async with self.lab.ari_client() as c:
            while time.monotonic() < deadline:
                r = await c.get(f"/channels/{self.channel_id}")
                if r.status_code == 404:
                    if self.ended_at is None:
                        self.ended_at = time.monotonic()
                    return self.ended_at - self.originated_at
                await asyncio.sleep(poll_s)
        raise TimeoutError(f"call {self.channel_id} still up after {timeout_s} s")

    async def hangup(self, reason: str = "normal") -> None:
        await self.lab.ari("DELETE", f"/channels/{self.channel_id}", params={"reason": reason}, ok=(204, 404))

    async def wait_callee(self, timeout_s: float = 5.0) -> str:
        """Id of the far-side leg. For SIP it is found by the shared SIP Call-ID (protocol_id)."""
        if self.callee_channel_id:
            return self.callee_channel_id
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            chans = await self.lab.ari_channels()
            mine = next((c for c in chans if c["id"] == self.channel_id), None)
            if mine and mine.get("protocol_id"):
                for c in chans:
                    if c["id"] != self.channel_id and c.get("protocol_id") == mine["protocol_id"]:
                        self.callee_channel_id = c["id"]
                        return c["id"]
            await asyncio.sleep(0.02)
        raise TimeoutError(f"far-side leg of {self.channel_id} not found within {timeout_s} s")

    def recording_path(self, track: str = "heard") -> Path:
        """Host path of a MixMonitor track: heard (what the caller heard), said, or mix."""
        if not self.rec_name:
            raise AsteriskLabError("this call was placed with record=False")
        if track not in ("heard", "said", "mix"):
            raise ValueError("track must be heard, said or mix")
        return self.lab.host_path(f"{_REC_DIR_IN}/{self.rec_name}-{track}.wav")

    async def recording(self, track: str = "heard", timeout_s: float | None = None) -> np.ndarray:
        """8 kHz mono int16 audio of what the caller heard (or said), once the call has ended."""
        await self.wait_hangup(timeout_s)
        path = await wait_wav_final(self.recording_path(track), timeout_s=10.0)
        return audio.read_wav(path)[0]


async def wait_wav_final(path: Path, timeout_s: float = 10.0) -> Path:
    """Wait until MixMonitor has closed `path`: it rewrites the RIFF sizes only on close, so
    matching sizes mean the file is complete."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _wav_is_final(path):
            return path
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{path} not finalized within {timeout_s} s")


def _wav_is_final(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(44)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return False
    if len(head) < 44 or head[:4] != b"RIFF":
        return False
    riff_size = struct.unpack_from("<I", head, 4)[0]
    data_size = struct.unpack_from("<I", head, 40)[0]
    return riff_size == size - 8 and data_size == size - 44


# ---------------------------------------------------------------------------- ARI event probe


class AriEventProbe:
    """Listens to the ARI events of a *harness-owned* Stasis app (never the platform's `vr3ai`).

    For harness self-tests and for tests that need a stand-in app: a call placed with
    `stasis_app=probe.app` enters Stasis here instead of reaching the platform.
    """

    def __init__(self, lab: AsteriskLab, app: str | None = None, *, subscribe_all: bool = False) -> None:
        self.lab = lab
        self.app = app or f"harness-probe-{_short_id()}"
        _check_id(self.app)
        if self.app == PLATFORM_APP:
            raise ValueError(f"the harness must never take the platform's Stasis app {PLATFORM_APP!r}")
        self.subscribe_all = subscribe_all
        self.events: list[dict[str, Any]] = []
        self._ws: Any = None
        self._task: asyncio.Task[None] | None = None
        self._cond = asyncio.Condition()

    async def __aenter__(self) -> AriEventProbe:
        from websockets.asyncio.client import connect

        user, pw = self.lab.ari_auth
        url = (f"{self.lab.ari_ws_url}/events?app={self.app}&api_key={user}:{pw}"
               f"&subscribeAll={'true' if self.subscribe_all else 'false'}")
        self._ws = await asyncio.wait_for(connect(url, max_size=None, ping_interval=None), 5)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 2)

    async def _read(self) -> None:
        import json

        with contextlib.suppress(Exception):
            async for msg in self._ws:
                ev = json.loads(msg)
                ev["_rx"] = time.monotonic()
                async with self._cond:
                    self.events.append(ev)
                    self._cond.notify_all()

    def find(self, type_: str, channel_id: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == type_
                and (channel_id is None or e.get("channel", {}).get("id") == channel_id)]

    async def wait_for(self, type_: str, channel_id: str | None = None, *, timeout_s: float = 5.0,
                       count: int = 1) -> list[dict[str, Any]]:
        """Wait until `count` events of `type_` (optionally for one channel) have arrived."""
        deadline = time.monotonic() + timeout_s
        async with self._cond:
            while len(found := self.find(type_, channel_id)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [e.get("type") for e in self.events]
                    raise TimeoutError(f"{count} x {type_} for {channel_id} not seen in {timeout_s} s; saw {seen}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._cond.wait(), left)
        return found


# ---------------------------------------------------------------------------- the lab


class AsteriskLab:
    """Owns one Asterisk process in the chroot: config, start/stop, and the simulated outside world.

    Only one harness may drive the chroot at a time: `start()` takes an exclusive lock (waiting up
    to `lock_timeout_s` for another session to finish) and replaces any Asterisk a crashed session
    left behind.
    """

    def __init__(
        self,
        chroot: str | os.PathLike[str] | None = None,
        *,
        media_port: int = 18765,
        tls_media_port: int = 18766,
        caller_ws_port: int | None = None,
        down_port: int | None = None,
        ari_port: int = 8088,
        sip_port: int = 5060,
        rtp_ports: tuple[int, int] = (10000, 10200),
        lock_timeout_s: float = float(os.environ.get("VR3AI_ASTERISK_LOCK_TIMEOUT", "300")),
        verbose: int = 3,
    ) -> None:
        self.chroot = Path(chroot) if chroot else DEFAULT_CHROOT
        self.media_port = media_port
        self.tls_media_port = tls_media_port
        self.caller_ws_port = caller_ws_port or free_port()
        self.down_port = down_port or free_port()
        self.ari_port = ari_port
        self.sip_port = sip_port
        self.rtp_ports = rtp_ports
        self.lock_timeout_s = lock_timeout_s
        self.verbose = verbose
        self.boot_s: float | None = None  # start of process -> core waitfullybooted
        self.ari_ready_s: float | None = None  # start of process -> ARI answers
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._console: IO[bytes] | None = None
        self._extra_ws_sections: dict[str, dict[str, str]] = {}
        self._ws_custom = False
        self._tls: TlsMaterial | None = None
        self._ws_ports_initial = (media_port, tls_media_port)
        _ssl_context()  # built now so the first ARI request's timing is not inflated
        atexit.register(self._atexit)

    # ------------------------------------------------------------------ addresses / paths

    @property
    def ari_url(self) -> str:
        return f"http://127.0.0.1:{self.ari_port}/ari"

    @property
    def ari_ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ari_port}/ari"

    @property
    def ari_auth(self) -> tuple[str, str]:
        return ARI_USER, ARI_PASSWORD

    @property
    def media_url(self) -> str:
        return f"ws://127.0.0.1:{self.media_port}{MEDIA_PATH}"

    @property
    def tls_media_url(self) -> str:
        return f"wss://127.0.0.1:{self.tls_media_port}{MEDIA_PATH}"

    @property
    def tls(self) -> TlsMaterial:
        if self._tls is None:
            self._tls = ensure_tls()
        return self._tls

    @property
    def ca_cert_path(self) -> Path:
        return self.tls.ca_cert

    @property
    def server_cert_path(self) -> Path:
        return self.tls.server_cert

    @property
    def server_key_path(self) -> Path:
        return self.tls.server_key

    @property
    def log_path(self) -> Path:
        """Asterisk's full log (verbose + debug, ms timestamps)."""
        return self.chroot / "var/log/asterisk/full"

    @property
    def console_log_path(self) -> Path:
        return self.chroot / "var/log/asterisk/console.log"

    @property
    def recordings_dir(self) -> Path:
        return self.host_path(_REC_DIR_IN)

    def host_path(self, inside: str) -> Path:
        return self.chroot / inside.lstrip("/")

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-n:])

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> AsteriskLab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> AsteriskLab:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    def ensure_chroot(self) -> None:
        if (self.chroot / ".vr3ai-ready").exists() and (self.chroot / "usr/sbin/asterisk").exists():
            return
        log.warning("building the Asterisk chroot in %s (once per machine, a few minutes)", self.chroot)
        subprocess.run(["bash", str(CHROOT_SCRIPT), str(self.chroot)], check=True, timeout=1800,
                       stdout=subprocess.DEVNULL)
        if not (self.chroot / ".vr3ai-ready").exists():
            raise AsteriskLabError(f"{CHROOT_SCRIPT} did not produce {self.chroot}/.vr3ai-ready")

    def start(self) -> None:
        """Start Asterisk with the harness config (idempotent while this lab's instance runs)."""
        if self._proc is not None and self._proc.poll() is None:
            return
        if os.geteuid() != 0:
            raise AsteriskLabError("the Asterisk lab needs root (chroot, mount)")
        self._acquire_lock()
        try:
            self.ensure_chroot()
            self._stop_foreign()
            self._prepare_tree()
            self.write_config()
            self._spawn_and_wait()
        except BaseException:
            self._kill_own()
            self._release_lock()
            raise

    def stop(self) -> None:
        """`core stop now`, then TERM/KILL the process group if it lingers; releases the lock."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                self.rx("core stop now", timeout=5, check=False)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._kill_own()
        self._proc = None
        if self._console is not None:
            self._console.close()
            self._console = None
        if self._lock_fd is not None:
            self._unmount_proc()
        self._release_lock()

    def restart(self) -> None:
        self.stop()
        self.start()

    def is_running(self) -> bool:
        """True if an Asterisk in this chroot answers its CLI socket."""
        if not (self.chroot / "run/asterisk/asterisk.ctl").exists():
            return False
        try:
            return self._rx_raw("core show uptime", timeout=3).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _atexit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    def _acquire_lock(self) -> None:
        if self._lock_fd is not None:
            return
        # Beside the chroot, not inside: it also serializes building it, and a rebuild replaces the
        # whole directory.
        path = self.chroot.parent / f".{self.chroot.name}.harness.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_timeout_s
        warned = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
            if time.monotonic() > deadline:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                os.close(fd)
                raise AsteriskLabError(
                    f"another session (pid {holder or '?'}) holds the Asterisk lab {path} "
                    f"for more than {self.lock_timeout_s:.0f} s")
            if not warned:
                log.warning("waiting for another session to release the Asterisk lab (%s)", path)
                warned = True
            time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._lock_fd, 0)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
        self._lock_fd = None

    def _daemon_pids(self) -> list[int]:
        """Asterisk daemons (not `-rx` clients) whose root is this chroot, whoever started them."""
        root = os.path.realpath(self.chroot)
        pids: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (entry / "comm").read_text().strip() != "asterisk":
                    continue
                if os.path.realpath(entry / "root") != root:
                    continue
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            if not any(a in (b"-r", b"-rx", b"-R", b"-x") or a.startswith(b"-r") for a in args[1:]):
                pids.append(int(entry.name))
        return pids

    def _stop_foreign(self) -> None:
        """An Asterisk left by an earlier (crashed or killed) session: stop it cleanly, then by force."""
        pids = self._daemon_pids()
        if not pids:
            return
        log.warning("an Asterisk from an earlier session is running in %s (pids %s): restarting it",
                    self.chroot, pids)
        with contextlib.suppress(Exception):
            self._rx_raw("core stop now", timeout=5)
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                pids = [p for p in pids if Path(f"/proc/{p}").exists() and p in self._daemon_pids()]
                if not pids:
                    return
                time.sleep(0.05)
        raise AsteriskLabError(f"could not stop the Asterisk already running in {self.chroot}: {pids}")

    def _prepare_tree(self) -> None:
        c = self.chroot
        for d in ("run/asterisk", "var/spool/asterisk/monitor", "var/log/asterisk", "etc/asterisk/keys",
                  _SOUND_DIR_IN.lstrip("/")):
            (c / d).mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(c / "proc"):
            subprocess.run(["mount", "-t", "proc", "proc", str(c / "proc")], check=True, timeout=30)
        # Debian's original config, kept once so the chroot can be compared or restored by hand.
        if not (c / "etc/asterisk.dist").exists():
            shutil.copytree(c / "etc/asterisk", c / "etc/asterisk.dist", symlinks=True)
        shutil.copyfile(self.tls.ca_cert, c / _CA_IN.lstrip("/"))
        # Old recordings: every run names its own, so they would only pile up.
        for old in (c / _REC_DIR_IN.lstrip("/")).glob("*.wav"):
            old.unlink(missing_ok=True)
        for name in ("full", "messages.log", "console.log"):
            (c / "var/log/asterisk" / name).write_bytes(b"")

    def _unmount_proc(self) -> None:
        p = self.chroot / "proc"
        if os.path.ismount(p) and not self._daemon_pids():
            r = subprocess.run(["umount", str(p)], capture_output=True, timeout=30)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", str(p)], capture_output=True, timeout=30)

    def _spawn_and_wait(self) -> None:
        self._console = self.console_log_path.open("ab")
        t0 = time.monotonic()
        # Root without -U: with -U root Asterisk drops capabilities and cannot read Debian's
        # asterisk-owned 0640 files. Own session so Ctrl-C in the test run does not reach it.
        args = ["chroot", str(self.chroot), "/usr/sbin/asterisk", "-f", "-n"]
        if self.verbose:
            args.append("-" + "v" * self.verbose)
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._console,
                                      stderr=subprocess.STDOUT, start_new_session=True, env=_chroot_env())
        deadline = t0 + 30
        while True:
            if self._proc.poll() is not None:
                raise AsteriskLabError(f"Asterisk exited with {self._proc.returncode} during boot:\n"
                                       + self.console_log_path.read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                raise AsteriskLabError("Asterisk did not finish booting within 30 s:\n" + self.log_tail())
            if (self.chroot / "run/asterisk/asterisk.ctl").exists():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    if self._rx_raw("core waitfullybooted", timeout=10).returncode == 0:
                        break
            time.sleep(0.02)
        self.boot_s = time.monotonic() - t0
        # Another process on these ports would answer in our place (a second Asterisk would even
        # accept the same ARI credentials), so insist the sockets are this process's own.
        socks = self.sockets()
        for proto, port, what in (("tcp", self.ari_port, "ARI/HTTP"), ("udp", self.sip_port, "SIP")):
            if (proto, "127.0.0.1", port) not in socks:
                raise AsteriskLabError(f"Asterisk could not bind {what} on 127.0.0.1:{port} "
                                       f"(another process holds it?):\n{self.log_tail()}")
        with httpx.Client(auth=self.ari_auth, timeout=2.0) as c:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if c.get(f"{self.ari_url}/asterisk/info").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise AsteriskLabError("ARI did not answer within 30 s:\n" + self.log_tail())
                time.sleep(0.01)
        self.ari_ready_s = time.monotonic() - t0
        log.info("Asterisk up: pid %s, booted in %.2f s, ARI after %.2f s", self._proc.pid, self.boot_s,
                 self.ari_ready_s)

    def _kill_own(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=3)
                return
            except subprocess.TimeoutExpired:
                continue

    # ------------------------------------------------------------------ CLI

    def _rx_raw(self, cmd: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["chroot", str(self.chroot), "/usr/sbin/asterisk", "-rx", cmd],
                              capture_output=True, text=True, timeout=timeout, env=_chroot_env())

    def rx(self, cmd: str, *, timeout: float = 10.0, check: bool = True) -> str:
        """Run an Asterisk CLI command (`asterisk -rx`) and return its output."""
        r = self._rx_raw(cmd, timeout)
        if check and r.returncode != 0:
            raise AsteriskLabError(f"asterisk -rx {cmd!r} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r.stdout

    async def arx(self, cmd: str, *, timeout_s: float = 10.0, check: bool = True) -> str:
        return await asyncio.to_thread(self.rx, cmd, timeout=timeout_s, check=check)

    def module_status(self, module: str) -> str | None:
        """'Running', 'Not Running', ... for a loaded module, None if it is not loaded."""
        out = self.rx(f"module show like {module}")
        for line in out.splitlines():
            if line.startswith(module):
                parts = re.split(r"\s{2,}", line.strip())
                for status in ("Running", "Not Running", "Declined", "Failed"):
                    if status in parts:
                        return status
        return None

    def sockets(self) -> list[tuple[str, str, int]]:
        """(proto, local address, port) of every TCP listener and UDP socket Asterisk holds."""
        pid = self.pid or next(iter(self._daemon_pids()), None)
        if pid is None:
            return []
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        out: list[tuple[str, str, int]] = []
        for proto in ("tcp", "tcp6", "udp", "udp6"):
            lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
            for line in lines:
                f = line.split()
                local, state, inode = f[1], f[3], f[9]
                if inode not in inodes or (proto.startswith("tcp") and state != "0A"):  # 0A: LISTEN
                    continue
                addr_hex, port_hex = local.split(":")
                raw = bytes.fromhex(addr_hex)
                # /proc/net prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                fam = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
                out.append((proto, socket.inet_ntop(fam, raw), int(port_hex, 16)))
        return out

    # ------------------------------------------------------------------ configuration

    def _render(self, name: str, **extra: str) -> str:
        text = (CONF_DIR / name).read_text()
        values = {
            "ari_port": str(self.ari_port),
            "sip_port": str(self.sip_port),
            "rtp_start": str(self.rtp_ports[0]),
            "rtp_end": str(self.rtp_ports[1]),
            "media_port": str(self.media_port),
            "tls_media_port": str(self.tls_media_port),
            "down_port": str(self.down_port),
            "caller_ws_port": str(self.caller_ws_port),
            "media_path": MEDIA_PATH,
            "media_user": MEDIA_USER,
            "media_password": MEDIA_PASSWORD,
            "extra_sections": "",
            **extra,
        }
        out = re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], text)
        return out

    def write_config(self) -> None:
        """Render every template into the chroot's /etc/asterisk (takes effect on (re)start/reload)."""
        etc = self.chroot / "etc/asterisk"
        for name in _CONF_FILES:
            if name == "websocket_client.conf":
                text = self._ws_conf_text()
            else:
                text = self._render(name)
            _atomic_write(etc / name, text)

    def _ws_conf_text(self) -> str:
        if self._ws_custom:
            caller = _format_sections({"caller_ws": self._caller_ws_section()})
            return _format_sections(self._extra_ws_sections) + caller
        return self._render("websocket_client.conf", extra_sections=_format_sections(self._extra_ws_sections))

    def _caller_ws_section(self) -> dict[str, str]:
        return {
            "type": "websocket_client", "connection_type": "per_call_config",
            "uri": f"ws://127.0.0.1:{self.caller_ws_port}/harness/caller", "protocols": "media",
            "connection_timeout": "1000", "reconnect_interval": "300", "reconnect_attempts": "2",
            "tls_enabled": "no",
        }

    def set_websocket_clients(
        self,
        *,
        media_port: int | None = None,
        tls_media_port: int | None = None,
        extra_sections: Mapping[str, Mapping[str, str | int | bool]] | None = None,
        reload: bool = True,
    ) -> None:
        """Point the standard sections (vr3ai, vr3ai_auth, vr3ai_tls, vr3ai_down) at other ports and/or
        add sections, then reload res_websocket_client so the next externalMedia call uses them."""
        if media_port is not None:
            self.media_port = media_port
        if tls_media_port is not None:
            self.tls_media_port = tls_media_port
        if extra_sections is not None:
            self._extra_ws_sections = _stringify_sections(extra_sections)
        self._ws_custom = False
        self._apply_ws(reload)

    def write_websocket_client_conf(self, sections: Mapping[str, Mapping[str, str | int | bool]],
                                    *, reload: bool = True) -> None:
        """Replace websocket_client.conf by exactly `sections` (plus the harness' own caller_ws)."""
        self._extra_ws_sections = _stringify_sections(sections)
        self._ws_custom = True
        self._apply_ws(reload)

    def reset_websocket_clients(self, *, reload: bool = True) -> None:
        """Back to the default sections and ports this lab was built with."""
        if not self._ws_custom and not self._extra_ws_sections and self._ws_ports == self._ws_ports_initial:
            return
        self.media_port, self.tls_media_port = self._ws_ports_initial
        self._extra_ws_sections = {}
        self._ws_custom = False
        self._apply_ws(reload)

    @property
    def _ws_ports(self) -> tuple[int, int]:
        return self.media_port, self.tls_media_port

    def websocket_client_conf(self) -> str:
        return self._ws_conf_text()

    def _apply_ws(self, reload: bool) -> None:
        _atomic_write(self.chroot / "etc/asterisk/websocket_client.conf", self._ws_conf_text())
        if reload and self.is_running():
            out = self.rx("module reload res_websocket_client.so")
            if "not found" in out.lower() or "error" in out.lower():
                raise AsteriskLabError(f"reloading res_websocket_client failed: {out}")

    # ------------------------------------------------------------------ sounds / callees

    def install_sound(self, wav: str | os.PathLike[str]) -> str:
        """Copy a WAV into the chroot (as 8 kHz mono 16-bit) and return its Playback() name."""
        src = audio.ensure_8k_wav(wav)
        data = src.read_bytes()
        name = f"snd-{audio._digest(data)}"
        dest = self.host_path(f"{_SOUND_DIR_IN}/{name}.wav")
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(dest)
        return f"{_SOUND_DIR_IN}/{name}"

    def set_callee(self, exten: str, *, wav: str | os.PathLike[str] | None = None,
                   hold_s: float | None = None) -> None:
        """What callee `exten` in [outbound-sim] plays after answering and how long it stays."""
        _check_id(exten)
        self.rx(f"dialplan set global CALLEE_WAV_{exten} {self.install_sound(wav) if wav else ''}")
        self.rx(f"dialplan set global CALLEE_HOLD_{exten} {'' if hold_s is None else f'{hold_s:.3f}'}")
        self.rx(f"dialplan set global CALLEE_CID_{exten} ")

    async def callee_caller_id(self, exten: str) -> str:
        """The caller ID number [outbound-sim] callee `exten` was last shown (empty: not called)."""
        _check_id(exten)
        r = await self.ari("GET", "/asterisk/variable", params={"variable": f"CALLEE_CID_{exten}"})
        return str(r.json().get("value") or "")

    def callee_recordings(self, exten: str, track: str = "heard") -> list[Path]:
        """MixMonitor files of [outbound-sim] callee `exten`, oldest first."""
        files = self.recordings_dir.glob(f"callee-{exten}-*-{track}.wav")
        return sorted(files, key=lambda p: p.stat().st_mtime)

    # ------------------------------------------------------------------ ARI

    def ari_client(self, user: str = ARI_USER, password: str | None = None,
                   timeout: float = 5.0) -> httpx.AsyncClient:
        pw = password if password is not None else ARI_USERS.get(user, "")
        return httpx.AsyncClient(base_url=self.ari_url, auth=(user, pw), timeout=timeout, verify=_ssl_context())

    async def ari(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                  json: Any = None, ok: tuple[int, ...] = (200, 204), timeout_s: float = 5.0) -> httpx.Response:
        async with self.ari_client(timeout=timeout_s) as c:
            r = await c.request(method, path, params=params, json=json)
        if ok and r.status_code not in ok:
            raise AsteriskLabError(f"ARI {method} {path} {dict(params or {})} -> {r.status_code} {r.text}")
        return r

    async def warm_up(self) -> None:
        """One throw-away ARI request: the first request of a process pays ~80 ms of lazy imports
        in httpx, which would otherwise land in the first measured call setup."""
        await self.ari("GET", "/asterisk/info")

    async def ari_channels(self) -> list[dict[str, Any]]:
        return list((await self.ari("GET", "/channels")).json())

    async def ari_bridges(self) -> list[dict[str, Any]]:
        return list((await self.ari("GET", "/bridges")).json())

    async def wait_no_channels(self, timeout_s: float = 5.0, poll_s: float = 0.05) -> list[dict[str, Any]]:
        """Wait until Asterisk has no channels; returns what is left ([] on success)."""
        deadline = time.monotonic() + timeout_s
        chans = await self.ari_channels()
        while chans and time.monotonic() < deadline:
            await asyncio.sleep(poll_s)
            chans = await self.ari_channels()
        return chans

    async def wait_no_bridges(self, timeout_s: float = 5.0, poll_s: float = 0.05) -> list[dict[str, Any]]:
        """Wait until Asterisk has no bridges; returns what is left ([] on success). A call's
        owner deletes its bridge after hanging up the channels, so the channels can be gone a
        round trip before the bridge is."""
        deadline = time.monotonic() + timeout_s
        bridges = await self.ari_bridges()
        while bridges and time.monotonic() < deadline:
            await asyncio.sleep(poll_s)
            bridges = await self.ari_bridges()
        return bridges

    async def hangup_all(self) -> None:
        """Hang up every channel and destroy every bridge (cleanup between tests)."""
        for ch in await self.ari_channels():
            await self.ari("DELETE", f"/channels/{ch['id']}", ok=(204, 404))
        for br in await self.ari_bridges():
            await self.ari("DELETE", f"/bridges/{br['id']}", ok=(204, 404))

    # ------------------------------------------------------------------ callers

    def _caller_vars(self, *, rec_name: str | None, hold_s: float, wav: str | os.PathLike[str] | None,
                     wav_after_s: float, dtmf: str | None, dtmf_after_s: float, dtmf_ms: int,
                     dtmf_gap_ms: int) -> dict[str, str]:
        if dtmf and not re.fullmatch(r"[0-9A-Da-d*#wW]+", dtmf):
            raise ValueError(f"bad DTMF string {dtmf!r}")
        return {
            "HREC": rec_name or "",
            "HOLD": f"{hold_s:.3f}",
            "HWAV": self.install_sound(wav) if wav else "",
            "HWAV_AFTER": _secs(wav_after_s),
            "HDTMF": dtmf or "",
            "HDTMF_AFTER": _secs(dtmf_after_s),
            "HDTMF_MS": str(int(dtmf_ms)),
            "HDTMF_GAP": str(int(dtmf_gap_ms)),
        }

    async def call(
        self,
        exten: str,
        *,
        wav: str | os.PathLike[str] | None = None,
        wav_after_s: float = 0.0,
        hold_s: float = 10.0,
        dtmf: str | None = None,
        dtmf_after_s: float = 0.5,
        dtmf_ms: int = 200,
        dtmf_gap_ms: int = 200,
        caller_id: str = '"VR3AI Test Caller" <15551230001>',
        stasis_app: str | None = None,
        context: str = "from-external",
        record: bool = True,
        answer_timeout_s: int = 30,
        variables: Mapping[str, str] | None = None,
    ) -> CallerHandle:
        """Place a simulated inbound call: `Local/<exten>@<context>` whose ;2 half reaches the
        platform (Stasis) and whose ;1 half is the caller running [harness-caller].

        Timeline after the far side answers: silence frames; `wav` played after `wav_after_s`;
        `dtmf` sent `dtmf_after_s` after the WAV ended (or after answer without WAV); hang up
        `hold_s` after answer. `stasis_app` replaces the Stasis app name for this call only.
        """
        _check_id(exten)
        cid = f"hcall-{_short_id()}"
        rec = cid if record else None
        vars_ = self._caller_vars(rec_name=rec, hold_s=hold_s, wav=wav, wav_after_s=wav_after_s, dtmf=dtmf,
                                  dtmf_after_s=dtmf_after_s, dtmf_ms=dtmf_ms, dtmf_gap_ms=dtmf_gap_ms)
        if stasis_app:
            vars_["STASIS_APP"] = stasis_app
        vars_.update(variables or {})
        params = {
            "endpoint": f"Local/{exten}@{context}",
            "context": "harness-caller", "extension": "s", "priority": "1",
            "callerId": caller_id, "timeout": str(int(answer_timeout_s)),
            "channelId": cid, "otherChannelId": f"{cid}-in",
            # Like a phone on a u-law trunk. Without it the Local pair runs at slin192 and the caller's
            # audio is resampled 8->192->8 kHz (5-7 dB quieter, phase-smeared).
            "formats": "ulaw",
        }
        return await self._originate(params, vars_, exten=exten, cid=cid, callee=f"{cid}-in", rec=rec,
                                     hold_s=hold_s, kind="local")

    async def sip_call(
        self,
        exten: str,
        *,
        wav: str | os.PathLike[str] | None = None,
        wav_after_s: float = 0.0,
        hold_s: float = 10.0,
        dtmf: str | None = None,
        dtmf_after_s: float = 0.5,
        dtmf_ms: int = 200,
        dtmf_gap_ms: int = 200,
        caller_id: str = '"VR3AI SIP Caller" <15551239999>',
        stasis_app: str | None = None,
        context: str | None = None,
        record: bool = True,
        answer_timeout_s: int = 30,
    ) -> CallerHandle:
        """A real SIP/RTP call over loopback: Asterisk INVITEs itself at sip:<exten>@127.0.0.1.

        The inbound leg lands in [pjsip-in] -> from-external (or `context`, for harness self-tests);
        the outgoing leg is the caller and runs [harness-caller] like `call()`.
        """
        _check_id(exten)
        cid = f"hsip-{_short_id()}"
        rec = cid if record else None
        vars_ = self._caller_vars(rec_name=rec, hold_s=hold_s, wav=wav, wav_after_s=wav_after_s, dtmf=dtmf,
                                  dtmf_after_s=dtmf_after_s, dtmf_ms=dtmf_ms, dtmf_gap_ms=dtmf_gap_ms)
        # Originate variables that are dialplan functions are applied before the INVITE is sent.
        if stasis_app:
            _check_id(stasis_app)
            vars_["PJSIP_HEADER(add,X-VR3AI-Stasis-App)"] = stasis_app
        if context:
            _check_id(context)
            vars_["PJSIP_HEADER(add,X-VR3AI-Context)"] = context
        params = {
            "endpoint": f"PJSIP/6001/sip:{exten}@127.0.0.1:{self.sip_port}",
            "context": "harness-caller", "extension": "s", "priority": "1",
            "callerId": caller_id, "timeout": str(int(answer_timeout_s)), "channelId": cid,
        }
        return await self._originate(params, vars_, exten=exten, cid=cid, callee=None, rec=rec, hold_s=hold_s,
                                     kind="sip")

    async def _originate(self, params: dict[str, str], vars_: dict[str, str], *, exten: str, cid: str,
                         callee: str | None, rec: str | None, hold_s: float, kind: str) -> CallerHandle:
        t0 = time.monotonic()
        r = await self.ari("POST", "/channels", params=params, json={"variables": vars_}, ok=(200,))
        dt = (time.monotonic() - t0) * 1000
        return CallerHandle(lab=self, exten=exten, channel_id=cid, callee_channel_id=callee, rec_name=rec,
                            hold_s=hold_s, kind=kind, originated_at=t0, originate_ms=dt, response=r.json())

    def ws_caller(
        self,
        exten: str,
        *,
        context: str = "from-external",
        caller_id: str = '"VR3AI WS Caller" <15551230002>',
        stasis_app: str | None = None,
        variables: Mapping[str, str] | None = None,
        connect_timeout_s: float = 5.0,
    ) -> WebSocketCaller:
        """A real-time caller driven from Python (not started: use `async with` or `await .start()`)."""
        from .wscaller import WebSocketCaller

        return WebSocketCaller(self, exten, context=context, caller_id=caller_id, stasis_app=stasis_app,
                               variables=variables, connect_timeout_s=connect_timeout_s)

    def event_probe(self, app: str | None = None, *, subscribe_all: bool = False) -> AriEventProbe:
        """`async with lab.event_probe() as probe:` a harness-owned Stasis app (never `vr3ai`)."""
        return AriEventProbe(self, app, subscribe_all=subscribe_all)

    async def ws_call(self, exten: str, **kwargs: Any) -> WebSocketCaller:
        """Like `ws_caller(...)`, already connected. Close it with `await caller.close()`."""
        caller = self.ws_caller(exten, **kwargs)
        await caller.start()
        return caller


# ---------------------------------------------------------------------------- helpers


_SSL_CTX: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    # ARI is plain HTTP, but httpx builds a default SSL context per client (tens of ms, loading
    # the CA bundle); one shared context keeps per-request clients cheap and timings honest.
    global _SSL_CTX
    if _SSL_CTX is None:
        _SSL_CTX = ssl.create_default_context()
    return _SSL_CTX


def _chroot_env() -> dict[str, str]:
    # The host environment (venv paths, locale of the CI box) means nothing inside the chroot.
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    tmp.replace(path)


def _stringify_sections(sections: Mapping[str, Mapping[str, str | int | bool]]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, opts in sections.items():
        _check_id(name)
        out[name] = {k: ("yes" if v is True else "no" if v is False else str(v)) for k, v in opts.items()}
    return out


def _format_sections(sections: Mapping[str, Mapping[str, str]]) -> str:
    parts = []
    for name, opts in sections.items():
        body = "\n".join(f"{k} = {v}" for k, v in opts.items())
        parts.append(f"\n[{name}]\n{body}\n")
    return "".join(parts)


def _check_id(value: str) -> None:
    # Anything interpolated into a dial string, CLI command or config section must stay inert.
    if not _SAFE_ID.match(value):
        raise ValueError(f"unsafe identifier {value!r}")


def _secs(v: float) -> str:
    return "0" if v <= 0 else f"{v:.3f}"
