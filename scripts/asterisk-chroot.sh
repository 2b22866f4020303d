#!/usr/bin/env bash
# Build (once per machine) a Debian sid chroot with Debian's own Asterisk 22 packages, for the
# test suite and the benchmarks. Cached outside the clone so a second run costs nothing.
#   usage: scripts/asterisk-chroot.sh [DIR]      (default: ~/.cache/vr3ai/asterisk-sid)
# Needs root (debootstrap, chroot). Prints the chroot path on success.
set -euo pipefail
DIR=${1:-${VR3AI_ASTERISK_CHROOT:-$HOME/.cache/vr3ai/asterisk-sid}}
STAMP="$DIR/.vr3ai-ready"
if [ -f "$STAMP" ] && [ -x "$DIR/usr/sbin/asterisk" ]; then echo "$DIR"; exit 0; fi

if ! command -v debootstrap >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
fi
# The Debian mirror apt already uses on this machine.
MIRROR=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
  | awk '{print $2}' | head -1 || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
echo "building Asterisk chroot in $DIR from $MIRROR (once per machine)" >&2
rm -rf "$DIR.partial"; mkdir -p "$(dirname "$DIR")"
debootstrap --variant=minbase sid "$DIR.partial" "$MIRROR" >&2
chroot "$DIR.partial" apt-get -o Acquire::Check-Valid-Until=false update -qq >&2
chroot "$DIR.partial" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  asterisk asterisk-modules >&2
chroot "$DIR.partial" apt-get clean
rm -rf "$DIR"; mv "$DIR.partial" "$DIR"
chroot "$DIR" /usr/sbin/asterisk -V >&2
touch "$STAMP"
echo "$DIR"
