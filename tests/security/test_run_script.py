"""Issue 12, item 8 (a): ``scripts/run.sh`` installs as root, then runs the server as a system user.

The script itself runs, with two stand-ins so that nothing is downloaded and nothing system-wide
keeps a trace: ``install.sh`` is replaced by one that makes a venv of three tiny scripts (private,
as a root umask of 077 would make it), and the user, home and cache names get a random suffix
(removed afterwards). The clone lives in a 0700 folder under /root, as on a fresh Debian machine,
with a ``data/`` folder of an earlier version. On main the "server" ran as root in the clone.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKE_INSTALL = r"""#!/usr/bin/env bash
set -euo pipefail
CACHE=${VR3AI_CACHE:-$HOME/.cache/vr3ai}; VENV=${VR3AI_VENV:-$CACHE/venv}
# Never anywhere near a real venv (e.g. the test suite's own, if run.sh forgot to choose a cache).
case "$VENV" in /var/cache/vr3t*) ;; *) echo "fake install.sh: refusing $VENV" >&2; exit 1 ;; esac
umask 077
mkdir -p "$VENV/bin"
printf '#!/bin/sh\nexit 0\n' > "$VENV/bin/pip"
printf '#!/bin/sh\nexit 0\n' > "$VENV/bin/python"
cat > "$VENV/bin/vr3ai" <<'EOS'
#!/bin/sh
echo "user=$(id -un) euid=$(id -u) cwd=$(pwd) home=$HOME data=$VR3AI_DATA_DIR args=$*"
grep '^CapEff' /proc/self/status
EOS
chmod 700 "$VENV/bin/"*
echo "$VENV"
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="run.sh runs as root (scripts/test.sh runs as root)")


@pytest.fixture
def clone() -> Iterator[tuple[Path, str]]:
    suffix = secrets.token_hex(3)
    user = f"vr3t{suffix}"
    top = Path(f"/root/vr3ai-runsh-{suffix}")
    (top / "scripts").mkdir(parents=True)
    top.chmod(0o700)
    text = (ROOT / "scripts/run.sh").read_text()
    text = text.replace("RUN_USER=vr3ai\n", f"RUN_USER={user}\n")
    text = text.replace("RUN_HOME=/var/lib/vr3ai\n", f"RUN_HOME=/var/lib/{user}\n")
    text = text.replace("${VR3AI_CACHE:-/var/cache/vr3ai}", f"${{VR3AI_CACHE:-/var/cache/{user}}}")
    (top / "scripts/run.sh").write_text(text)
    (top / "scripts/install.sh").write_text(FAKE_INSTALL)
    (top / "data").mkdir()
    (top / "data/vr3ai.db").write_text("old database")
    (top / "data/secret.key").write_text("old key")
    try:
        yield top, user
    finally:
        subprocess.run(["userdel", user], capture_output=True)
        subprocess.run(["groupdel", user], capture_output=True)
        for path in (top, Path(f"/var/lib/{user}"), Path(f"/var/cache/{user}")):
            shutil.rmtree(path, ignore_errors=True)


def _run(top: Path, **env: str) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("VR3AI_")}
    e.update(env)
    cmd = ["bash", str(top / "scripts/run.sh"), "--port", "8123"]
    return subprocess.run(cmd, env=e, cwd="/", capture_output=True, text=True, timeout=60)


def test_run_sh_runs_the_server_as_a_system_user_with_a_private_data_folder(clone: tuple[Path, str]) -> None:
    top, user = clone
    first = _run(top)
    assert first.returncode == 0, first.stderr
    data = Path(f"/var/lib/{user}/data")
    line = next(x for x in first.stdout.splitlines() if x.startswith("user="))
    assert f"user={user} " in line and "euid=0 " not in line, line
    assert f"cwd={data} " in line and f"home=/var/lib/{user} " in line and f"data={data} " in line
    assert line.endswith("args=serve --port 8123")
    assert re.search(r"CapEff:\s+0+$", first.stdout, re.M), first.stdout  # no privilege left at all
    # The data of the earlier version, copied (the original stays), the vr3ai user's only.
    assert (data / "vr3ai.db").read_text() == "old database" and (top / "data/vr3ai.db").exists()
    st = data.stat()
    assert st.st_mode & 0o777 == 0o700 and st.st_uid != 0
    assert (data / "secret.key").stat().st_mode & 0o077 == 0
    assert Path(f"/var/lib/{user}").stat().st_mode & 0o777 == 0o700
    shell = subprocess.run(["getent", "passwd", user], capture_output=True, text=True).stdout
    assert shell.strip().endswith("/usr/sbin/nologin")

    # Again (idempotent): same user, the data folder is not copied over a second time.
    (top / "data/vr3ai.db").write_text("changed in the clone")
    again = _run(top, VR3AI_PORT="443")
    assert again.returncode == 0, again.stderr
    assert (data / "vr3ai.db").read_text() == "old database"
    # A port below 1024 gets exactly CAP_NET_BIND_SERVICE (bit 10), nothing else.
    assert re.search(r"CapEff:\s+0+400$", again.stdout, re.M), again.stdout


def test_run_sh_refuses_a_data_folder_the_user_cannot_reach(clone: tuple[Path, str]) -> None:
    top, _user = clone
    r = _run(top, VR3AI_DATA_DIR=str(top / "elsewhere"))
    assert r.returncode != 0
    assert "cannot reach" in r.stderr and "outside home folders" in r.stderr
    assert "user=" not in r.stdout
