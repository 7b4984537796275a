# The two commands: `make run` and `make test`. Everything they need is installed by the targets below.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WALSTREAM := $(VENV)/bin/walstream
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup run test unit lint stack-up stack-down stack-status tools clean wheelhouse image image-test

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/system-deps.sh schemas/proto/walstream/v1/wal.proto
	bash scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m streams.api.codegen
	touch $(STAMP)

# Tools the chart tests need (helm and a Kubernetes schema validator), installed into .tools/.
tools:
	@if [ -f helm/install-tools.sh ]; then bash helm/install-tools.sh; fi

run: setup
	$(WALSTREAM) run

test: setup tools
	$(PY) -m pytest $(PYTEST_ARGS)

unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check streams connectors tests bench examples
	$(VENV)/bin/ruff format --check streams connectors tests bench examples
	$(VENV)/bin/mypy

stack-up: setup
	$(WALSTREAM) stack up

stack-down: setup
	$(WALSTREAM) stack down

stack-status: setup
	$(WALSTREAM) stack status

# The container image, built offline with podman (image/build.sh says how); its tag is the chart's appVersion, so
# the chart's default values name it.
IMAGE ?= walstream
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' helm/walstream/Chart.yaml)

wheelhouse: setup
	bash image/wheelhouse.sh $(PY)

image: setup
	bash image/build.sh $(IMAGE):$(IMAGE_TAG) $(PY)

# The image on the local stack, configured exactly as the chart renders its pods (tests/image).
image-test: image tools
	$(PY) -m pytest tests/image --image $(IMAGE):$(IMAGE_TAG) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache .image
