#!/usr/bin/env bash
# Install everything VR3 AI needs on Debian 12 (run as root or through sudo):
#   Debian packages, a Python venv with the platform and the offline voice stack, cached under
#   ~/.cache/vr3ai so a second run takes seconds.
#   usage: scripts/install.sh [--test]   (--test also installs PostgreSQL and the Asterisk chroot)
# Python packages come from requirements/prod.txt (the platform and the voice stack) or, with --test,
# requirements/test.txt (+ the test tools): exact versions with sha256 hashes, installed with
# --require-hashes, so a file that differs from the one the tests ran on is refused. scripts/lock.sh
# regenerates both after a change to pyproject.toml.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${VR3AI_CACHE:-$HOME/.cache/vr3ai}
VENV=${VR3AI_VENV:-$CACHE/venv}
WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1
mkdir -p "$CACHE"

need_pkgs=(python3 python3-venv python3-dev gcc flite sox espeak-ng openssl curl ca-certificates)
[ "$WITH_TEST" = 1 ] && need_pkgs+=(postgresql debootstrap chromium)  # chromium: tests/browser
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# VR3AI_PYTHON: the interpreter the venv is built on. run.sh sets Debian's /usr/bin/python3, since its
# server user cannot reach an interpreter under /root (pyenv); a venv built on another one is rebuilt.
PY=${VR3AI_PYTHON:-python3}
if [ -n "${VR3AI_PYTHON:-}" ] && [ -f "$VENV/pyvenv.cfg" ] &&
  ! grep -qx "home = $(dirname "$(command -v "$PY")")" "$VENV/pyvenv.cfg"; then
  echo "rebuilding venv $VENV on $PY" >&2
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating venv $VENV" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip wheel setuptools >&2
fi
LOCK="$HERE/requirements/prod.txt"
[ "$WITH_TEST" = 1 ] && LOCK="$HERE/requirements/test.txt"
lock_names() { sed -n 's/^\([A-Za-z0-9._-]*\)==.*/\1/p' "$1" | tr 'A-Z_.' 'a-z--' | sort -u; }
# Re-run pip only when the dependency list changed (pip's own cache makes a re-install offline-fast).
stamp="$VENV/.vr3ai-deps-$(cat "$HERE/pyproject.toml" "$LOCK" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "installing Python dependencies from ${LOCK#"$HERE"/} (first run: several minutes)" >&2
  "$VENV/bin/pip" install -q --require-hashes -r "$LOCK" >&2
  if [ "$WITH_TEST" = 1 ]; then
    # Also whatever pyproject.toml gained since the lock was made, so the tests still run (unhashed;
    # tests/security/test_pinned_dependencies.py fails until scripts/lock.sh is run).
    "$VENV/bin/pip" install -q --no-build-isolation -e "$HERE[voice,dev]" >&2
  else
    # Production carries nothing only the tests need, even in a venv that ran them before.
    dev_only=$(comm -23 <(lock_names "$HERE/requirements/test.txt") <(lock_names "$HERE/requirements/prod.txt"))
    installed=$("$VENV/bin/pip" list --format=freeze 2>/dev/null | sed 's/==.*//' | tr 'A-Z_.' 'a-z--' | sort -u)
    remove=$(comm -12 <(echo "$dev_only") <(echo "$installed"))
    if [ -n "$remove" ]; then
      echo "removing test-only packages: $(echo $remove)" >&2
      # shellcheck disable=SC2086  # one argument per package name
      "$VENV/bin/pip" uninstall -q -y $remove >&2
    fi
    "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$HERE" >&2
  fi
  rm -f "$VENV"/.vr3ai-deps-*; touch "$stamp"
else
  # The package itself is installed editable; point it at this clone (CI uses a fresh clone).
  "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$HERE" >&2
fi
if [ "$WITH_TEST" = 1 ]; then
  bash "$HERE/scripts/asterisk-chroot.sh" >/dev/null
fi
echo "$VENV"
