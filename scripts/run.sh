#!/usr/bin/env bash
# One command: install everything, then run VR3 AI (SQLite + offline voice stack) on this machine.
#   VR3AI_HOST / VR3AI_PORT choose where to listen (default 0.0.0.0:8000 so your Asterisk can reach
#   the media WebSocket); VR3AI_DATA_DIR where data lives (default ./data).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" != 0 ]; then exec sudo -E bash "$0" "$@"; fi
VENV=$(bash "$HERE/scripts/install.sh")
cd "$HERE"
export VR3AI_HOST=${VR3AI_HOST:-0.0.0.0} VR3AI_PORT=${VR3AI_PORT:-8000} HF_HUB_OFFLINE=1
exec "$VENV/bin/vr3ai" serve "$@"
