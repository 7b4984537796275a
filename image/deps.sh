#!/usr/bin/env bash
# Installs what `make image` needs from Debian: podman, runc and mmdebstrap (the base image is made from Debian
# packages; nothing is pulled from a registry). Idempotent: only acts on what is missing.
set -euo pipefail

missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
[ ${#missing[@]} -eq 0 ] && exit 0
# uidmap: podman's helpers for user namespaces, which it looks for even when rootful.
exec bash "$(dirname "${BASH_SOURCE[0]}")/../scripts/apt-install.sh" "${missing[@]}" uidmap
