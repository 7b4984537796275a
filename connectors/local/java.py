"""Finds a Java runtime of the feature version the embedded services need."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from connectors.local.errors import JavaNotFound

_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


@dataclass(frozen=True, slots=True)
class JavaRuntime:
    home: Path
    feature: int

    @property
    def java(self) -> Path:
        return self.home / "bin" / "java"


def feature_version(java: Path) -> int | None:
    """The feature version ``java -version`` reports (8 for 1.8), or None when it does not run."""
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION.search(out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def _candidates(java_home: Path | None) -> Iterable[Path]:
    if java_home is not None:
        yield java_home
    if os.environ.get("JAVA_HOME"):
        yield Path(os.environ["JAVA_HOME"])
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        yield from sorted(p for p in jvm.iterdir() if p.is_dir() and not p.is_symlink())
    on_path = shutil.which("java")
    if on_path:
        yield Path(on_path).resolve().parent.parent


def find_java(feature: int, java_home: Path | None = None) -> JavaRuntime:
    """The first runtime of exactly ``feature``: the configured home, $JAVA_HOME, /usr/lib/jvm, then PATH."""
    seen: dict[Path, int | None] = {}
    for home in _candidates(java_home):
        if home in seen or not (home / "bin" / "java").exists():
            continue
        seen[home] = feature_version(home / "bin" / "java")
        if seen[home] == feature:
            return JavaRuntime(home=home, feature=feature)
    if java_home is not None and java_home not in seen:
        found = f"WALSTREAM_JAVA_HOME={java_home} has no bin/java"
    elif seen:
        found = "found " + ", ".join(f"{home} (Java {v or '?'})" for home, v in seen.items())
    else:
        found = "no Java was found at all"
    raise JavaNotFound(
        f"Java {feature} is required to run the embedded Kafka, Cassandra and Elasticsearch; {found}. "
        f"Install it (Debian: apt-get install openjdk-{feature}-jdk-headless) or point WALSTREAM_JAVA_HOME at it."
    )
