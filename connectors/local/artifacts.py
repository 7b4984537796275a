"""Resolves the pinned server artifacts from Maven Central into a cache that survives between runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from connectors.local import versions
from connectors.local.errors import DiskFull, MavenUnavailable

Progress = Callable[[str], None]

_MIN_FREE_BYTES = 1 << 30  # resolving and unpacking all three needs well under 1 GiB
_COMPLETE = ".complete"


@dataclass(frozen=True, slots=True)
class Coordinate:
    group: str
    artifact: str
    version: str
    packaging: str = "jar"

    def dependency_xml(self) -> str:
        type_line = f"<type>{self.packaging}</type>" if self.packaging != "jar" else ""
        return (
            f"<dependency><groupId>{escape(self.group)}</groupId>"
            f"<artifactId>{escape(self.artifact)}</artifactId>"
            f"<version>{escape(self.version)}</version>{type_line}</dependency>"
        )


KAFKA = (
    Coordinate("org.apache.kafka", "kafka_2.13", versions.KAFKA_VERSION),
    Coordinate("org.slf4j", "slf4j-reload4j", versions.SLF4J_VERSION),
)
#: MirrorMaker 2 (Kafka Connect's mirror connectors and their runtime), at the brokers' version.
MIRROR = (
    Coordinate("org.apache.kafka", "connect-mirror", versions.KAFKA_VERSION),
    Coordinate("org.slf4j", "slf4j-reload4j", versions.SLF4J_VERSION),
)
CASSANDRA = (Coordinate("org.apache.cassandra", "cassandra-all", versions.CASSANDRA_VERSION),)
ELASTICMQ = (Coordinate("org.elasticmq", "elasticmq-server_2.13", versions.ELASTICMQ_VERSION),)
ELASTICSEARCH = Coordinate(
    "org.elasticsearch.distribution.integ-test-zip", "elasticsearch", versions.ELASTICSEARCH_VERSION, "zip"
)


def render_pom(name: str, dependencies: Sequence[Coordinate]) -> str:
    """A throwaway pom whose only job is to let Maven resolve ``dependencies`` and their runtime closure."""
    deps = "\n    ".join(d.dependency_xml() for d in dependencies)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>walstream.local</groupId>
  <artifactId>{escape(name)}</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    {deps}
  </dependencies>
</project>
"""


class ArtifactCache:
    """One folder per service and version under the cache dir; a marker file says the folder is whole."""

    def __init__(self, cache_dir: Path, progress: Progress = lambda _msg: None) -> None:
        self.root = cache_dir
        self._progress = progress

    def kafka_lib(self) -> Path:
        return self._resolve_jars(f"kafka-{versions.KAFKA_VERSION}", KAFKA)

    def mirror_lib(self) -> Path:
        return self._resolve_jars(f"mirrormaker-{versions.KAFKA_VERSION}", MIRROR)

    def cassandra_lib(self) -> Path:
        return self._resolve_jars(f"cassandra-{versions.CASSANDRA_VERSION}", CASSANDRA)

    def elasticmq_lib(self) -> Path:
        return self._resolve_jars(f"elasticmq-{versions.ELASTICMQ_VERSION}", ELASTICMQ)

    def elasticsearch_home(self) -> Path:
        """The unpacked distribution (read-only for the running node: its config lives in the stack dir)."""
        target = self.root / f"elasticsearch-{versions.ELASTICSEARCH_VERSION}"
        if (target / _COMPLETE).exists():
            return target / "dist"
        work = self._fresh(target)
        (work / "pom.xml").write_text(render_pom("elasticsearch", [ELASTICSEARCH]))
        self._mvn(
            "elasticsearch",
            work,
            ["dependency:copy-dependencies", "-DincludeTypes=zip", f"-DoutputDirectory={work / 'zip'}"],
        )
        archives = list((work / "zip").glob("*.zip"))
        if len(archives) != 1:
            raise MavenUnavailable(f"expected one Elasticsearch zip in {work / 'zip'}, found {archives}")
        self._progress(f"unpacking Elasticsearch {versions.ELASTICSEARCH_VERSION}")
        _unzip_keeping_modes(archives[0], work / "unpacked")
        (inner,) = (work / "unpacked").iterdir()
        inner.rename(work / "dist")
        shutil.rmtree(work / "unpacked")
        archives[0].unlink()
        return self._publish(work, target) / "dist"

    def _resolve_jars(self, name: str, coordinates: Sequence[Coordinate]) -> Path:
        target = self.root / name
        if (target / _COMPLETE).exists():
            return target / "lib"
        work = self._fresh(target)
        (work / "pom.xml").write_text(render_pom(name, coordinates))
        self._mvn(
            name,
            work,
            ["dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={work / 'lib'}"],
        )
        return self._publish(work, target) / "lib"

    def _fresh(self, target: Path) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        free = shutil.disk_usage(self.root).free
        if free < _MIN_FREE_BYTES:
            raise DiskFull(
                f"only {free >> 20} MiB free in {self.root}; the server artifacts need about 1 GiB. "
                "Free some space or point WALSTREAM_CACHE_DIR elsewhere."
            )
        work = target.with_name(target.name + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        return work

    def _publish(self, work: Path, target: Path) -> Path:
        (work / _COMPLETE).write_text("ok\n")
        shutil.rmtree(target, ignore_errors=True)
        work.rename(target)
        return target

    def _mvn(self, name: str, work: Path, goals: list[str]) -> None:
        mvn = shutil.which("mvn")
        if mvn is None:
            raise MavenUnavailable(
                "Maven (mvn) is required to fetch the Kafka, Cassandra and Elasticsearch artifacts; "
                "install it (Debian: apt-get install maven) or use WALSTREAM_STACK_MODE=external."
            )
        log_path = work / "mvn.log"
        self._progress(f"resolving {name} from Maven Central (log: {log_path})")
        downloaded = 0
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [mvn, "-B", "-f", str(work / "pom.xml"), *goals],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=work,
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if "Downloaded from" in line:
                    downloaded += 1
                    if downloaded % 20 == 0:
                        self._progress(f"  {name}: {downloaded} files downloaded")
            code = proc.wait()
        if code != 0:
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
            hint = (
                "Maven Central looks unreachable (check the network or a proxy in ~/.m2/settings.xml)"
                if any(s in tail for s in ("Could not transfer", "UnknownHost", "Connection refused", "timed out"))
                else "Maven failed"
            )
            raise MavenUnavailable(f"{hint} while resolving {name}; last lines of {log_path}:\n{tail}")
        self._progress(f"  {name}: resolved ({downloaded} files downloaded)")


def _unzip_keeping_modes(archive: Path, dest: Path) -> None:
    """Unpack like unzip(1): Python's zipfile drops the exec bits the launcher scripts need."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = Path(zf.extract(info, dest))
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(path, mode)
