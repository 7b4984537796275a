# syntax=docker/dockerfile:1
# walstream image: `walstream` is the entrypoint; the Helm chart passes `api ...`, `worker ...` or `namespaces apply`.
#   docker build -t walstream:0.1.0 .
# Runs as uid/gid 10001 with a read-only root filesystem in mind: writable state goes to /tmp and
# /var/lib/walstream (the working directory and Faust data dir), which the chart mounts as emptyDirs.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: wheels of walstream and of every dependency -------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# A compiler for any dependency that ships no wheel for this platform (for example cassandra-driver's extensions).
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# .dockerignore lets in only what the wheel is built from: pyproject.toml, README.md and the packages.
COPY . .
RUN pip wheel --wheel-dir /wheels .

# --- runtime: the wheels installed into a virtualenv, nothing else --------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/walstream \
    PATH=/opt/walstream/bin:$PATH \
    HOME=/var/lib/walstream
RUN groupadd --system --gid 10001 walstream \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/walstream --no-create-home \
        --shell /usr/sbin/nologin walstream \
    && mkdir -p /var/lib/walstream /etc/walstream/namespaces \
    && chown 10001:10001 /var/lib/walstream
# The wheels are bind-mounted from the builder, so they never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv "$VIRTUAL_ENV" \
    && pip install --no-index --find-links=/wheels walstream \
    && python -m streams.api.codegen \
    && walstream --help >/dev/null

WORKDIR /var/lib/walstream
USER 10001:10001
EXPOSE 50051 9100
ENTRYPOINT ["walstream"]
CMD ["--help"]
