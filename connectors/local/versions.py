"""The one place where the embedded stack's server versions are pinned."""

from __future__ import annotations

from typing import Final

#: Kafka in KRaft mode (one combined broker and controller). 3.9 keeps the widest client compatibility.
KAFKA_VERSION: Final = "3.9.2"
#: Kafka 3.9 ships no slf4j binding; reload4j is the one its own distribution uses.
SLF4J_VERSION: Final = "1.7.36"
#: Cassandra 5.0 runs on Java 17 (never on 21+).
CASSANDRA_VERSION: Final = "5.0.8"
#: The integ-test-zip distribution: no bundled JDK, only the modules a REST node needs.
#: The Python client's major version (pyproject.toml) must match this major.
ELASTICSEARCH_VERSION: Final = "8.19.7"
#: The SQS-compatible server of the local stack (Scala 2.13 build; runs on Java 17).
ELASTICMQ_VERSION: Final = "1.7.1"

#: The Java feature version every service above is run on.
JAVA_FEATURE_VERSION: Final = 17
