#!/usr/bin/env bash
# Sourced by the image scripts: podman with a configuration of the project's own (never the machine's global
# files), in the checkout's .image/ folder. It suits the rootful podman of a VM with cgroup v1 and no systemd:
#   - the cgroupfs cgroup manager and the file events logger (no systemd to talk to);
#   - runc as the OCI runtime (crun refuses hybrid cgroup v1/v2 hierarchies);
#   - explicit open-file and process limits no higher than this shell's own hard limits (podman's defaults ask
#     for more, and raising a hard limit is refused where the VM withholds that right).
set -euo pipefail

IMAGE_DIR="${IMAGE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.image}"
mkdir -p "$IMAGE_DIR"

_limit() {  # the lower of the hard limit and $2
  local hard
  hard=$(ulimit -H "$1")
  if [ "$hard" = unlimited ] || [ "$hard" -gt "$2" ]; then echo "$2"; else echo "$hard"; fi
}
nofile=$(_limit -n 65536)
nproc=$(_limit -u 8192)

cat > "$IMAGE_DIR/containers.conf" <<CONF
# written by image/podman.sh; see there why
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"

[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]
CONF
export CONTAINERS_CONF="$IMAGE_DIR/containers.conf"

if ! command -v podman >/dev/null; then
  echo "error: podman is not installed: run \`bash image/deps.sh\` (as root, or with sudo)" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=""
fi
podman() { $SUDO env CONTAINERS_CONF="$CONTAINERS_CONF" podman "$@"; }
