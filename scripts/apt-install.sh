#!/usr/bin/env bash
# Installs the Debian packages named as arguments with apt-get, as root or through sudo; says clearly what to do
# where neither works. The callers decide what is missing: scripts/system-deps.sh, image/deps.sh.
set -euo pipefail

[ $# -eq 0 ] && exit 0
echo "system packages missing: $*" >&2
if ! command -v apt-get >/dev/null; then
  echo "error: install $* with your package manager (no apt-get here)" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "error: run as root or install $* yourself" >&2
    exit 1
  fi
fi
echo "installing $* with apt-get" >&2
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "$@"
