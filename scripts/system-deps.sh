#!/usr/bin/env bash
# Installs what walstream needs from the OS: Python >= 3.11 with venv, Java 17 and Maven.
# Idempotent: it only acts on what is missing, and only with apt-get (as root, or through sudo).
set -euo pipefail

missing=()
py_ok() { python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
java17_ok() {
  for j in "${WALSTREAM_JAVA_HOME:-}" "${JAVA_HOME:-}" /usr/lib/jvm/*17*; do
    [ -n "$j" ] && [ -x "$j/bin/java" ] && "$j/bin/java" -version 2>&1 | grep -q 'version "17' && return 0
  done
  command -v java >/dev/null && java -version 2>&1 | grep -q 'version "17'
}

py_ok || missing+=(python3 python3-venv)
java17_ok || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v openssl >/dev/null || missing+=(openssl)  # the TLS tests make their certificates with it
command -v unzip >/dev/null || true  # not needed: the stack unpacks archives itself

exec bash "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" "${missing[@]}"
