#!/usr/bin/env bash
# Install the tools that tests/helm needs, at pinned versions, into one folder:
#
#   ${WALSTREAM_TOOLS_DIR:-<repo>/.tools}/bin/helm                  Helm v3, built with `go install`
#   ${WALSTREAM_TOOLS_DIR:-<repo>/.tools}/bin/kubernetes-validate   Kubernetes schema validator (PyPI package that
#                                                                   bundles the Kubernetes JSON schemas, so it
#                                                                   works offline), in its own virtualenv
#
# Idempotent: a tool already present at the pinned version is left alone. Re-run after changing a pin.
# Needs: Go (GO, default /usr/local/go/bin/go, else `go` on PATH) and Python >= 3.10 with venv (PYTHON, default
# python3), plus network access to the Go module proxy and PyPI.
#
# Usage: bash helm/install-tools.sh
set -Eeuo pipefail

HELM_VERSION="v3.22.0"
KUBERNETES_VALIDATE_VERSION="1.37.0"
# The validator's dependencies, pinned so that every machine validates with the same code.
KUBERNETES_VALIDATE_DEPS=(
    "jsonschema==4.26.0"
    "jsonschema-specifications==2025.9.1"
    "referencing==0.37.0"
    "rpds-py==2026.9.1"
    "attrs==26.1.0"
    "PyYAML==6.0.4"
    "typing-extensions==4.16.0"
    "importlib-resources==7.1.0"
    "packaging==26.4"
)

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${WALSTREAM_TOOLS_DIR:-$REPO_ROOT/.tools}"
BIN_DIR="$TOOLS_DIR/bin"

say() { printf '[install-tools] %s\n' "$*" >&2; }
die() {
    printf '[install-tools] ERROR: %s\n' "$*" >&2
    exit 1
}
trap 'die "stopped: a command failed at line $LINENO of helm/install-tools.sh (see the output above)"' ERR

# Sets GO_BIN to the go command to build with.
find_go() {
    if [[ -n "${GO:-}" ]]; then
        [[ -x "$GO" ]] || die "GO=$GO is not an executable"
        GO_BIN="$GO"
    elif [[ -x /usr/local/go/bin/go ]]; then
        GO_BIN=/usr/local/go/bin/go
    elif command -v go >/dev/null 2>&1; then
        GO_BIN="$(command -v go)"
    else
        die "Go is needed to build helm: install it (or set GO=/path/to/go) and re-run"
    fi
}

# The module version that `go install` stamped into a binary, e.g. v3.22.0 (empty when unknown).
go_binary_version() {
    local go="$1" binary="$2"
    "$go" version -m "$binary" 2>/dev/null | awk '$1 == "mod" && $2 == "helm.sh/helm/v3" { print $3 }'
}

# The Kubernetes version helm assumes without a cluster (`helm template`, `helm lint`): like helm's own Makefile,
# derived from the k8s.io/client-go version helm builds with (v0.37.x -> 1.37). Without it helm assumes 1.20.
helm_kube_version() {
    local go="$1" gomod client_go
    gomod="$("$go" mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
    [[ -f "$gomod" ]] || die "could not fetch helm.sh/helm/v3@$HELM_VERSION from the Go module proxy ($("$go" env GOPROXY))"
    client_go="$(awk '$1 == "k8s.io/client-go" { print $2 }' "$gomod")"
    [[ "$client_go" =~ ^v0\.([0-9]+)\. ]] || die "cannot tell the k8s.io/client-go version of helm $HELM_VERSION (found '$client_go')"
    printf '1.%s\n' "${BASH_REMATCH[1]}"
}

install_helm() {
    local go="$GO_BIN" version kube stamp="$BIN_DIR/.helm.build" want started
    if [[ -x "$BIN_DIR/helm" ]]; then
        version="$(go_binary_version "$go" "$BIN_DIR/helm")"
        if [[ "$version" == "$HELM_VERSION" && -f "$stamp" && "$(cat "$stamp")" == "helm $HELM_VERSION"* ]]; then
            say "helm $HELM_VERSION already installed at $BIN_DIR/helm: skipping"
            return
        fi
        say "helm at $BIN_DIR/helm is ${version:-of unknown version} ($(cat "$stamp" 2>/dev/null || echo 'no build stamp')), want $HELM_VERSION: reinstalling"
    fi
    started=$SECONDS
    say "fetching helm $HELM_VERSION from the Go module proxy"
    kube="$(helm_kube_version "$go")"
    say "building helm $HELM_VERSION (default Kubernetes version $kube) with $("$go" version); the first build takes minutes"
    # A static, stripped build that reports its version like a release build does. The module and build caches
    # are Go's usual ones (go env GOMODCACHE GOCACHE), so a reinstall after a version change is quicker.
    local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    local pkg
    for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
        ldflags+=" -X $pkg.k8sVersionMajor=${kube%%.*} -X $pkg.k8sVersionMinor=${kube#*.}"
    done
    rm -f "$stamp"
    if ! GOBIN="$BIN_DIR" CGO_ENABLED=0 "$go" install -trimpath -ldflags "$ldflags" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"; then
        die "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed: is the Go module proxy reachable ($("$go" env GOPROXY))?"
    fi
    version="$(go_binary_version "$go" "$BIN_DIR/helm")"
    [[ "$version" == "$HELM_VERSION" ]] || die "built helm reports module version '${version}', expected $HELM_VERSION"
    want="$("$BIN_DIR/helm" version --template '{{.Version}}')" || die "the built helm does not run"
    [[ "$want" == "$HELM_VERSION" ]] || die "the built helm says it is '$want', expected $HELM_VERSION"
    printf 'helm %s kube %s\n' "$HELM_VERSION" "$kube" >"$stamp"
    say "helm $HELM_VERSION installed in $((SECONDS - started))s"
}

install_kubernetes_validate() {
    local python="$PYTHON_BIN" venv="$TOOLS_DIR/kubernetes-validate" version started
    if [[ -x "$BIN_DIR/kubernetes-validate" ]]; then
        version="$("$BIN_DIR/kubernetes-validate" --version 2>/dev/null || true)"
        if [[ "$version" == "$KUBERNETES_VALIDATE_VERSION" ]]; then
            say "kubernetes-validate $KUBERNETES_VALIDATE_VERSION already installed at $BIN_DIR/kubernetes-validate: skipping"
            return
        fi
        say "kubernetes-validate is ${version:-of unknown version}, want $KUBERNETES_VALIDATE_VERSION: reinstalling"
    fi
    started=$SECONDS
    say "creating a virtualenv for kubernetes-validate in $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv" || die "'$python -m venv' failed: install Python's venv module (Debian: python3-venv)"
    say "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION from PyPI (about 23 MB: it bundles the schemas)"
    if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "${KUBERNETES_VALIDATE_DEPS[@]}"; then
        die "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION failed: is PyPI reachable?"
    fi
    ln -sfn "$venv/bin/kubernetes-validate" "$BIN_DIR/kubernetes-validate"
    version="$("$BIN_DIR/kubernetes-validate" --version)" || die "the installed kubernetes-validate does not run"
    [[ "$version" == "$KUBERNETES_VALIDATE_VERSION" ]] \
        || die "installed kubernetes-validate reports '$version', expected $KUBERNETES_VALIDATE_VERSION"
    say "kubernetes-validate $KUBERNETES_VALIDATE_VERSION installed in $((SECONDS - started))s"
}

main() {
    local started=$SECONDS
    say "installing into $BIN_DIR"
    mkdir -p "$BIN_DIR" || die "cannot create $BIN_DIR"
    find_go
    PYTHON_BIN="${PYTHON:-python3}"
    command -v "$PYTHON_BIN" >/dev/null 2>&1 || die "Python is needed for kubernetes-validate: set PYTHON=/path/to/python3"
    install_kubernetes_validate
    install_helm
    say "done in $((SECONDS - started))s: $BIN_DIR has helm $HELM_VERSION and kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
}

main "$@"
