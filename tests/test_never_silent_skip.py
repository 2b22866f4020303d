"""Issue 14 item 12: under CI a missing prerequisite fails the run with the reason; elsewhere it skips.

Each case is a real pytest run in a subprocess, loading the suite's own ``tests/conftest.py`` (so the
wiring is tested, not just the hook), with a prerequisite really missing: ``PATH`` without ``chroot``,
``mount`` and ``openssl``, which the real-Asterisk lab fixture needs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAB_TEST = '''
def test_needs_the_lab(asterisk_lab):
    raise AssertionError("the lab cannot start without chroot")
'''
PLAIN_SKIP = '''
import pytest

@pytest.mark.skipif(True, reason="a tool this test needs is missing")
def test_marked():
    pass

@pytest.mark.xfail(reason="known bug", strict=True)
def test_xfail():
    raise AssertionError

def test_fine():
    pass
'''


def _pytest(tmp_path: Path, source: str, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_case.py").write_text(source)
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "VR3AI_SKIP_ASTERISK")}
    env.update(PATH=str(empty), PYTHONPATH=str(ROOT))
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "tests.conftest", "-p", "no:cacheprovider", "test_case.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("ci", ["true"])
def test_missing_prerequisite_fails_under_ci_with_the_reason(tmp_path: Path, ci: str) -> None:
    done = _pytest(tmp_path, LAB_TEST, ci)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "a prerequisite is missing" in out and "need `chroot` on PATH" in out, out
    assert " skipped" not in done.stdout.strip().splitlines()[-1], out


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_the_same_test_skips(tmp_path: Path, ci: str | None) -> None:
    done = _pytest(tmp_path, LAB_TEST, ci)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "1 skipped" in out and "need `chroot` on PATH" in out, out


def test_skipif_marks_fail_under_ci_and_xfail_is_left_alone(tmp_path: Path) -> None:
    done = _pytest(tmp_path, PLAIN_SKIP, "true")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    summary = done.stdout.strip().splitlines()[-1]
    assert "1 failed" in summary or "1 error" in summary, out
    assert "1 passed" in summary and "1 xfailed" in summary, out
    assert "a tool this test needs is missing" in out, out


def test_scripts_test_sh_runs_under_ci() -> None:
    """scripts/test.sh cannot be run here (it reinstalls the shared venv): its pytest line must run
    with CI set unless the caller chose otherwise."""
    text = (ROOT / "scripts" / "test.sh").read_text()
    export = next(line for line in text.splitlines() if line.startswith("export ") and "CI=" in line)
    assert "CI=${CI:-true}" in export
    assert text.index(export) < text.index("-m pytest")
