# syntax=docker/dockerfile:1
# walstream image: `walstream` is the entrypoint; the Helm chart passes `api ...`, `worker ...` or `namespaces apply`.
#
# The build installs from a wheelhouse prepared on the host, never from the network:
#   make image                       # podman, a base image made from Debian packages, the project's pins
# or, with a registry at hand:
#   make wheelhouse && docker build -t walstream:0.1.0 .
#
# Runs as uid/gid 10001 with a read-only root filesystem: writable state goes to /tmp and /var/lib/walstream (the
# working directory and Faust data dir), which the chart mounts as emptyDirs.

# Any Debian-like image with Python 3.11 and its venv module: `make image` passes one made from Debian packages.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/walstream \
    PATH=/opt/walstream/bin:$PATH \
    HOME=/var/lib/walstream
RUN groupadd --gid 10001 walstream \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/walstream --no-create-home \
        --shell /usr/sbin/nologin walstream \
    && mkdir -p /var/lib/walstream /etc/walstream/namespaces \
    && chown 10001:10001 /var/lib/walstream
# The wheelhouse (.image/wheelhouse: walstream and every dependency) is bind-mounted, so it never becomes a layer.
RUN --mount=type=bind,source=.image/wheelhouse,target=/wheels \
    python3 -m venv "$VIRTUAL_ENV" \
    && pip install --no-index --find-links=/wheels walstream \
    && python -m streams.api.codegen \
    && walstream --help >/dev/null

WORKDIR /var/lib/walstream
USER 10001:10001
EXPOSE 50051 9100
ENTRYPOINT ["walstream"]
CMD ["--help"]
