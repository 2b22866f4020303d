"""Item 9 (Low) and issue 13 item 3: every dependency is pinned to the range the tests ran on, the
installs use exact versions with sha256 hashes, and the production install has no test tools."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PROD_LOCK = ROOT / "requirements" / "prod.txt"
TEST_LOCK = ROOT / "requirements" / "test.txt"
ENTRY_RE = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)((?:\s*\\\s*--hash=sha256:[0-9a-f]{64})+)\s*$")


def _requirements(*groups: str) -> list[Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["dependencies"]]
    for group in groups:
        reqs += [Requirement(r) for r in PYPROJECT["optional-dependencies"][group]]
    return reqs


def _lock(path: Path) -> dict[str, Version]:
    """name → pinned version; fails on any entry that is not ``name==version`` with sha256 hashes."""
    text = re.sub(r"\\\n", "\\\n", path.read_text())
    entries: dict[str, Version] = {}
    for block in re.split(r"\n(?=\S)", text):
        first = block.split("\n    #")[0].strip()
        if not first or first.startswith("#"):
            continue
        joined = " ".join(line.strip() for line in first.splitlines())
        m = ENTRY_RE.match(joined)
        assert m, f"{path.name}: not an exact, hashed pin: {joined[:120]}"
        entries[canonicalize_name(m.group(1))] = Version(m.group(2))
    return entries


def test_pyproject_ranges_are_bounded_and_hold_the_tested_versions() -> None:
    for req in _requirements("voice", "dev"):
        ops = {spec.operator for spec in req.specifier}
        assert "==" in ops or ("<" in ops and ">=" in ops), f"{req}: needs a lower and an upper bound"
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            pytest.fail(f"{req.name} is not installed in the environment the tests run in")
        assert req.specifier.contains(installed, prereleases=True), f"tests run on {req.name} {installed}, not {req}"


@pytest.mark.parametrize(("lock", "groups"), [(PROD_LOCK, ("voice",)), (TEST_LOCK, ("voice", "dev"))])
def test_locks_pin_every_requirement_with_hashes(lock: Path, groups: tuple[str, ...]) -> None:
    pins = _lock(lock)
    for req in _requirements(*groups):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in {lock.name}: run scripts/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), f"{lock.name} pins {name}=={pins[name]}"


def test_test_lock_is_what_the_tests_run_on() -> None:
    for name, pinned in _lock(TEST_LOCK).items():
        try:
            installed = Version(version(name))
        except PackageNotFoundError:
            pytest.fail(f"{name} is locked but not installed")
        assert installed == pinned, f"tests run on {name} {installed}, requirements/test.txt pins {pinned}"


def test_production_lock_has_no_test_tools() -> None:
    prod, test = _lock(PROD_LOCK), _lock(TEST_LOCK)
    for req in (Requirement(r) for r in PYPROJECT["optional-dependencies"]["dev"]):
        assert canonicalize_name(req.name) not in prod, f"{req.name} (a test tool) in the production lock"
    # The production set is the test set minus the tools, at the same versions.
    assert {n: v for n, v in test.items() if n in prod} == prod


def test_production_install_uses_hashes_and_no_dev_extras(tmp_path: Path) -> None:
    """Run scripts/install.sh (no --test) against a stub venv whose pip records its arguments."""
    venv, bin_dir = tmp_path / "venv", tmp_path / "stub-bin"
    (venv / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    log = tmp_path / "pip.log"
    pip = venv / "bin" / "pip"
    # `pip list` reports a venv that ran the tests before: pytest and ruff are installed.
    pip.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        'if [ "$1" = list ]; then printf "pytest==9.2.0\\nRuff==0.17.6\\nfastapi==0.165.0\\n"; fi\n'
    )
    (venv / "bin" / "python").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "dpkg-query").write_text("#!/bin/sh\necho 'install ok installed'\n")
    (bin_dir / "apt-get").write_text("#!/bin/sh\necho 'apt-get must not run' >&2; exit 1\n")
    for f in (pip, venv / "bin" / "python", bin_dir / "dpkg-query", bin_dir / "apt-get"):
        f.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "VR3AI_CACHE": str(tmp_path / "cache"),
        "VR3AI_VENV": str(venv),
    }
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(venv)
    calls = log.read_text().splitlines()
    installs = [c for c in calls if c.startswith("install")]
    assert any("--require-hashes" in c and c.endswith(str(PROD_LOCK)) for c in installs), calls
    assert not any("dev]" in c or "test.txt" in c for c in installs), calls
    # The package itself comes without dependencies (they all came hashed from the lock).
    assert any("--no-deps" in c and c.endswith(f"-e {ROOT}") for c in installs), calls
    uninstall = next(c for c in calls if c.startswith("uninstall"))
    assert set(uninstall.split()[3:]) == {"pytest", "ruff"}, uninstall
