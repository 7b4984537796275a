#!/usr/bin/env bash
# Installs what `make image` needs from Debian: podman, runc and mmdebstrap (the base image is made from Debian
# packages; nothing is pulled from a registry). Idempotent: only acts on what is missing.
set -euo pipefail

missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "error: install ${missing[*]} with your package manager (no apt-get here)" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "error: run as root or install ${missing[*]} yourself" >&2
    exit 1
  fi
fi
echo "installing ${missing[*]} with apt-get" >&2
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" uidmap
