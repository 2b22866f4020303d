#!/usr/bin/env bash
# One command: install everything (as root), then run VR3 AI (SQLite + offline voice stack) as the
# unprivileged system user `vr3ai`: a flaw in the server or a library must not own the machine.
#   VR3AI_HOST / VR3AI_PORT choose where to listen (default 0.0.0.0:8000, vr3ai serve's own default, so
#   your Asterisk can reach the media WebSocket; VR3AI_PUBLIC_URL says how it reaches this machine);
#   VR3AI_DATA_DIR where data lives (default /var/lib/vr3ai/data).
#
# Layout, and why. On a fresh Debian 12 /root is 0700 and adduser makes home folders 0700 too, so the
# vr3ai user can reach nothing under a home folder: not a venv in ~/.cache, not this clone, not its
# ./data. So, when nothing else is asked for:
#   /var/cache/vr3ai/venv  the server's venv (root's, world-readable), VR3 AI installed into it as a
#                          copy of this clone rather than a link to it. VR3AI_CACHE / VR3AI_VENV still
#                          choose another place (it must be readable by vr3ai: checked below);
#                          scripts/test.sh keeps ~/.cache/vr3ai, its tests run as root.
#   /var/lib/vr3ai         vr3ai's home (0700); data/ in it is the data folder (0700, owned by vr3ai).
#                          The ./data of earlier versions (the server ran as root in this clone) is
#                          copied there on the first run; the original is left where it was.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" != 0 ]; then exec sudo -E bash "$0" "$@"; fi
RUN_USER=vr3ai
RUN_HOME=/var/lib/vr3ai
die() { echo "run.sh: $*" >&2; exit 1; }
as_user() { setpriv --reuid="$RUN_USER" --regid="$RUN_USER" --init-groups -- "$@"; }

export VR3AI_CACHE=${VR3AI_CACHE:-/var/cache/vr3ai}
# Debian's interpreter (install.sh installs python3): the server user cannot run one under /root.
VENV=$(VR3AI_PYTHON=/usr/bin/python3 bash "$HERE/scripts/install.sh")
# install.sh links the package to this clone (editable), which vr3ai may not be able to read: install
# a copy instead (a few seconds; the dependencies are already there).
"$VENV/bin/pip" install -q --no-deps --no-build-isolation --force-reinstall "$HERE" >&2

# The user (idempotent) and its home.
if ! id -u "$RUN_USER" >/dev/null 2>&1; then
  useradd --system --user-group --home-dir "$RUN_HOME" --shell /usr/sbin/nologin \
    --comment "VR3 AI server" "$RUN_USER"
fi
install -d -m 0700 -o "$RUN_USER" -g "$RUN_USER" "$RUN_HOME"

# The data folder: vr3ai's, nobody else's.
if [ -n "${VR3AI_DATA_DIR:-}" ]; then
  DATA=$(cd "$HERE" && realpath -m -- "$VR3AI_DATA_DIR")  # relative to the clone, as before
else
  DATA=$RUN_HOME/data
  if [ ! -e "$DATA" ] && [ -n "$(ls -A "$HERE/data" 2>/dev/null)" ]; then
    echo "copying the data folder of earlier versions, $HERE/data, to $DATA (the original stays)" >&2
    cp -a "$HERE/data" "$DATA"
  fi
fi
mkdir -p "$DATA"
chown -R "$RUN_USER:$RUN_USER" "$DATA"
chmod -R go-rwx "$DATA"
as_user test -w "$DATA" -a -x "$DATA" ||
  die "user $RUN_USER cannot reach $DATA: a folder above it is closed to it (home folders are 0700 on" \
    "Debian). Choose a VR3AI_DATA_DIR outside home folders, e.g. $RUN_HOME/data."

# The venv must be readable by vr3ai (a root umask of 077 makes it private; a home folder hides it).
if ! as_user "$VENV/bin/python" -c "import vr3ai.cli" 2>/dev/null; then
  chmod -R a+rX "$VENV"
  [ "$VENV" = "$VR3AI_CACHE/venv" ] && chmod a+rx "$VR3AI_CACHE"
  as_user "$VENV/bin/python" -c "import vr3ai.cli" ||
    die "user $RUN_USER cannot run $VENV: a folder above it is closed to it. Set VR3AI_CACHE to a folder" \
      "outside home folders (the default is /var/cache/vr3ai)."
fi
for var in VR3AI_TLS_CERT VR3AI_TLS_KEY VR3AI_MEDIA_TLS_CERT VR3AI_MEDIA_TLS_KEY; do
  file=${!var:-}
  [ -z "$file" ] || as_user test -r "$file" ||
    die "user $RUN_USER cannot read $var=$file (e.g. chgrp $RUN_USER it and chmod 640)."
done

# VR3AI_HOST is left to `vr3ai serve`'s own default (0.0.0.0): one default, not two that can drift.
export VR3AI_PORT=${VR3AI_PORT:-8000} VR3AI_DATA_DIR=$DATA HF_HUB_OFFLINE=1
caps=()
for port in "$VR3AI_PORT" "${VR3AI_MEDIA_TLS_PORT:-0}"; do
  if [ "$port" -gt 0 ] && [ "$port" -lt 1024 ]; then
    # Only this one privilege, for a port below 1024 (e.g. 443 for wss://).
    caps=(--inh-caps=+net_bind_service --ambient-caps=+net_bind_service)
  fi
done
cd "$DATA"
exec setpriv --reuid="$RUN_USER" --regid="$RUN_USER" --init-groups "${caps[@]}" -- \
  env HOME="$RUN_HOME" USER="$RUN_USER" LOGNAME="$RUN_USER" "$VENV/bin/vr3ai" serve "$@"
