#!/usr/bin/env bash
# Regenerate requirements/prod.txt (the platform + offline voice stack) and requirements/test.txt
# (+ the dev tools) with exact versions and sha256 hashes, pinned to the versions installed in the
# venv the tests ran on (default ~/.cache/vr3ai/venv). Run it after changing a dependency in
# pyproject.toml and installing it there; commit the result with the change. Uses pip-tools from a
# venv of its own, so the project's venv gets nothing extra.
#   usage: scripts/lock.sh [VENV]
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${VR3AI_CACHE:-$HOME/.cache/vr3ai}
VENV=${1:-${VR3AI_VENV:-$CACHE/venv}}
TOOLS=$CACHE/pip-tools
if [ ! -x "$TOOLS/bin/pip-compile" ]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q "pip-tools==7.6.2"
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$VENV/bin/pip" freeze --exclude-editable >"$tmp/tested-versions.txt"
cd "$HERE"
lock() {  # lock OUTPUT EXTRA...
  local out=$1; shift
  local extras=()
  for e in "$@"; do extras+=(--extra "$e"); done
  CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" "$TOOLS/bin/pip-compile" -q --generate-hashes --allow-unsafe \
    --strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
    "${extras[@]}" -c "$tmp/tested-versions.txt" -o "$out" pyproject.toml
  # The constraint file is temporary: keep the "via" lines that name real requirers only.
  sed -i -e "\|^    #   -c $tmp/|d" -e "s|^    # via -c $tmp/tested-versions.txt\$|    # via the tested venv|" "$out"
}
mkdir -p requirements
lock requirements/prod.txt voice
lock requirements/test.txt voice dev
echo "requirements/prod.txt and requirements/test.txt pinned to $VENV" >&2
