#!/usr/bin/env bash
# `make image`: builds the walstream image with podman, offline.
#   image/build.sh <name:tag> <python of the project's virtualenv>
# 1. The base image is a minimal Debian bookworm with Python 3.11, made by mmdebstrap from Debian's packages and
#    imported into podman (once; `podman rmi localhost/walstream-base:bookworm` makes it again).
# 2. The wheelhouse: walstream's wheel and one wheel per dependency, at the versions the project's virtualenv
#    resolved from pyproject.toml's pins, prepared on this host.
# 3. `podman build --network=none --no-cache` installs from that wheelhouse alone (`pip --no-index`); no cached
#    layer, since a layer cache would not see a changed wheelhouse.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE_REF="${1:?usage: image/build.sh <name:tag> <python>}"
PYTHON="${2:?usage: image/build.sh <name:tag> <python>}"
BASE_REF="localhost/walstream-base:bookworm"

bash "$REPO/image/deps.sh"
# shellcheck source=image/podman.sh
source "$REPO/image/podman.sh"
started=$SECONDS

if ! podman image exists "$BASE_REF"; then
  echo "[image] making the base image $BASE_REF from Debian packages (mmdebstrap, about a minute)" >&2
  rm -f "$IMAGE_DIR/base.tar"
  # Documentation, manual pages and translations are left out: nothing in the image reads them.
  $SUDO mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    bookworm "$IMAGE_DIR/base.tar"
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$IMAGE_DIR/base.tar" "$BASE_REF" >/dev/null
  rm -f "$IMAGE_DIR/base.tar"
fi

bash "$REPO/image/wheelhouse.sh" "$PYTHON"

echo "[image] building $IMAGE_REF on $BASE_REF, with no network" >&2
previous=$(podman image inspect --format '{{.Id}}' "$IMAGE_REF" 2>/dev/null || true)
podman build --quiet --no-cache --network=none --build-arg "PYTHON_IMAGE=$BASE_REF" --tag "$IMAGE_REF" \
  --file "$REPO/Dockerfile" "$REPO" >/dev/null

# The image this build replaced would stay behind untagged: remove it (unless a container still uses it).
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$IMAGE_REF")" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
size=$(podman image inspect --format '{{.Size}}' "$IMAGE_REF")
echo "[image] built $IMAGE_REF: $((size / 1000000)) MB, in $((SECONDS - started)) s" >&2
