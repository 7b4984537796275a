"""How each embedded service is configured, launched and judged ready (by a real client call)."""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from connectors.local import secured
from connectors.local.artifacts import ArtifactCache
from connectors.local.credentials import CLIENT_USER, ELASTICSEARCH_USER, random_password, secrets_of, write_private
from connectors.local.errors import ServiceFailed, StackError
from connectors.local.java import JavaRuntime
from connectors.local.process import Launch, log_tail
from streams.config import LocalStackSettings

HOST = "127.0.0.1"


class Service(ABC):
    """One server of the stack. Its folder under the stack dir holds its config, data and log."""

    name: str

    def __init__(self, settings: LocalStackSettings, java: JavaRuntime) -> None:
        self.settings = settings
        self.java = java
        self.dir = settings.stack_dir / self.name
        #: Only read when the stack is secured; LocalStack.up makes them before any service is prepared.
        self.secrets = secrets_of(settings.stack_dir)

    @property
    def log(self) -> Path:
        return self.dir / f"{self.name}.log"

    @abstractmethod
    def ports(self) -> dict[str, int]:
        """Setting name -> port, for every port the service binds."""

    @property
    @abstractmethod
    def client_port(self) -> int: ...

    @abstractmethod
    def endpoint(self) -> str: ...

    @abstractmethod
    def fetch(self, cache: ArtifactCache) -> None:
        """Make sure the artifacts are in the cache (the only step that may use the network)."""

    @abstractmethod
    def prepare(self, cache: ArtifactCache) -> Launch:
        """Write config files and return how to start the process."""

    @abstractmethod
    def ready(self) -> bool:
        """One quick, real client call; True when it succeeds."""

    def setup(self) -> bool:
        """One-time work once the port answers (Cassandra's roles); True when done. Called until it is."""
        return True

    def _base_env(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "TZ")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env["JAVA_HOME"] = str(self.java.home)
        env["HOME"] = str(self.dir)
        return env


class Kafka(Service):
    name = "kafka"
    #: The settings that hold its client and controller ports (the second region's Kafka names its own).
    port_setting = "kafka_port"
    controller_port_setting = "kafka_controller_port"

    @property
    def port(self) -> int:
        return int(getattr(self.settings, self.port_setting))

    @property
    def controller_port(self) -> int:
        return int(getattr(self.settings, self.controller_port_setting))

    def ports(self) -> dict[str, int]:
        return {self.port_setting: self.port, self.controller_port_setting: self.controller_port}

    @property
    def client_port(self) -> int:
        return self.port

    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    def fetch(self, cache: ArtifactCache) -> None:
        cache.kafka_lib()

    def prepare(self, cache: ArtifactCache) -> Launch:
        lib = cache.kafka_lib()
        s = self.settings
        data = self.dir / "data"
        conf = self.dir / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "log.retention.hours": "168",
        }
        password = self.secrets.password(self.secrets.kafka_password_file) if s.secure else None
        if password is not None:
            props.update(secured.kafka_properties(s, self.secrets, password))
        server_props = conf / "server.properties"
        # Owner-only: when secured it holds the broker's password (its listener's JAAS line).
        write_private(server_props, "".join(f"{k}={v}\n" for k, v in props.items()))
        log4j = conf / "log4j.properties"
        log4j.write_text(
            "log4j.rootLogger=INFO, stdout\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.org.apache.kafka=WARN\n"
            "log4j.logger.kafka.log=WARN\n"
            "log4j.logger.state.change.logger=WARN\n"
            "log4j.logger.kafka.coordinator=WARN\n"
        )
        jvm = [
            str(self.java.java),
            f"-Xms{s.kafka_heap}",
            f"-Xmx{s.kafka_heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{log4j}",
            "-cp",
            f"{lib}/*",
        ]
        if not (data / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            tool = ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(server_props)]
            if password is not None:
                tool += ["--add-scram", secured.kafka_scram_argument(password)]
            # The tool takes SCRAM credentials only as an argument. The java launcher reads its arguments from
            # an @-file, so the password stays in an owner-only file and off every process list.
            argfile = conf / "format.args"
            write_private(argfile, "\n".join(tool) + "\n")
            try:
                fmt = subprocess.run(
                    [*jvm, f"@{argfile}"],
                    capture_output=True,
                    text=True,
                    check=False,
                    env=self._base_env(),
                )
            finally:
                argfile.unlink(missing_ok=True)
            if fmt.returncode != 0:
                output = fmt.stdout + fmt.stderr
                if password is not None:
                    output = output.replace(password, "***")
                raise ServiceFailed(f"formatting Kafka storage in {data} failed:\n{output}")
        return Launch(argv=[*jvm, "kafka.Kafka", str(server_props)], env=self._base_env(), cwd=self.dir, log=self.log)

    def ready(self) -> bool:
        from confluent_kafka.admin import AdminClient

        config: dict[str, str | int | float | bool] = {"bootstrap.servers": self.endpoint(), "log_level": 0}
        if self.settings.secure:
            config.update(secured.kafka_client_config(secured.client_security(self.secrets).kafka))
        admin = AdminClient(config)
        try:
            metadata = admin.list_topics(timeout=2)
        except Exception:  # noqa: BLE001 - any failure simply means "not ready yet"
            return False
        return bool(metadata.brokers)


#: From Cassandra's jvm17-server.options: without these the JVM dies at start on Java 17.
_CASSANDRA_JAVA17_FLAGS = [
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-exports=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.math=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
]


class Cassandra(Service):
    name = "cassandra"

    def ports(self) -> dict[str, int]:
        return {
            "cassandra_port": self.settings.cassandra_port,
            "cassandra_storage_port": self.settings.cassandra_storage_port,
        }

    @property
    def client_port(self) -> int:
        return self.settings.cassandra_port

    def endpoint(self) -> str:
        return f"{HOST}:{self.settings.cassandra_port}"

    def fetch(self, cache: ArtifactCache) -> None:
        cache.cassandra_lib()

    def prepare(self, cache: ArtifactCache) -> Launch:
        lib = cache.cassandra_lib()
        s = self.settings
        conf = self.dir / "conf"
        data = self.dir / "data"
        for sub in ("data", "commitlog", "hints", "saved_caches", "cdc_raw"):
            (data / sub).mkdir(parents=True, exist_ok=True)
        conf.mkdir(parents=True, exist_ok=True)
        yaml_path = conf / "cassandra.yaml"
        # JSON is YAML: this keeps the file free of quoting mistakes.
        config = {
            "cluster_name": "walstream",
            "num_tokens": 1,
            "initial_token": "0",
            "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
            "endpoint_snitch": "SimpleSnitch",
            "seed_provider": [
                {
                    "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                    "parameters": [{"seeds": f"{HOST}:{s.cassandra_storage_port}"}],
                }
            ],
            "listen_address": HOST,
            "rpc_address": HOST,
            "storage_port": s.cassandra_storage_port,
            "native_transport_port": s.cassandra_port,
            "start_native_transport": True,
            "commitlog_sync": "periodic",
            "commitlog_sync_period": "10000ms",
            "data_file_directories": [str(data / "data")],
            "commitlog_directory": str(data / "commitlog"),
            "hints_directory": str(data / "hints"),
            "saved_caches_directory": str(data / "saved_caches"),
            "cdc_raw_directory": str(data / "cdc_raw"),
            "cdc_enabled": False,
            "auto_snapshot": False,
            "snapshot_before_compaction": False,
            "memtable_heap_space": "128MiB",
            "memtable_offheap_space": "128MiB",
            "concurrent_compactors": 1,
            "concurrent_reads": 8,
            "concurrent_writes": 16,
            "authenticator": "AllowAllAuthenticator",
            "authorizer": "AllowAllAuthorizer",
            "disk_failure_policy": "stop",
            "commit_failure_policy": "stop",
            "dynamic_snitch": False,
            "key_cache_size": "16MiB",
            "write_request_timeout": "5000ms",
            "read_request_timeout": "5000ms",
        }
        if s.secure:
            config.update(secured.cassandra_config(self.secrets))
        yaml_path.write_text(json.dumps(config, indent=1))
        logback = conf / "logback.xml"
        logback.write_text(
            '<configuration scan="false">\n'
            '  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">\n'
            "    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>\n"
            "  </appender>\n"
            '  <logger name="org.apache.cassandra" level="INFO"/>\n'
            '  <logger name="com.datastax" level="WARN"/>\n'
            '  <root level="WARN"><appender-ref ref="STDOUT"/></root>\n'
            "</configuration>\n"
        )
        jamm = sorted(lib.glob("jamm-*.jar"))
        if not jamm:
            raise StackError(f"no jamm agent jar in {lib}; delete that folder to resolve Cassandra again")
        argv = [
            str(self.java.java),
            f"-Xms{s.cassandra_heap}",
            f"-Xmx{s.cassandra_heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=300",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.net.preferIPv4Stack=true",
            f"-javaagent:{jamm[-1]}",
            *_CASSANDRA_JAVA17_FLAGS,
            f"-Dcassandra.config=file://{yaml_path}",
            f"-Dcassandra.storagedir={data}",
            f"-Dcassandra.logdir={self.dir}",
            "-Dcassandra-foreground=yes",
            f"-Dlogback.configurationFile={logback}",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.initial_token=0",
            "-Dcassandra.ring_delay_ms=1000",
            "-Dcassandra.load_ring_state=false",
            "-Dio.netty.tryReflectionSetAccessible=true",
            # The default superuser, which creates walstream's role (setup), is otherwise made 10 s after start.
            "-Dcassandra.superuser_setup_delay_ms=0",
            "-cp",
            f"{conf}:{lib}/*",
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        return Launch(argv=argv, env=self._base_env(), cwd=self.dir, log=self.log)

    def ready(self) -> bool:
        password = self.secrets.password(self.secrets.cassandra_password_file) if self.settings.secure else ""
        try:
            session, cluster = self._connect(CLIENT_USER, password)
        except Exception:  # noqa: BLE001 - not ready yet
            return False
        try:
            row = session.execute("SELECT release_version FROM system.local", timeout=2).one()
            return row is not None
        except Exception:  # noqa: BLE001 - not ready yet
            return False
        finally:
            cluster.shutdown()

    def setup(self) -> bool:
        """Secured: make the ``walstream`` superuser role with the default ``cassandra`` superuser, then take
        the default one's login away (its password is known to the world). Done once walstream can log in."""
        if not self.settings.secure:
            return True
        password = self.secrets.password(self.secrets.cassandra_password_file)
        try:
            session, cluster = self._connect(CLIENT_USER, password)
        except Exception:  # noqa: BLE001 - no walstream role yet, or not up yet
            pass
        else:
            try:
                # On a first start the default superuser still has its well-known login: retire it (a random
                # password nobody keeps, and no login), now that walstream's own login is proven.
                row = session.execute("SELECT can_login FROM system_auth.roles WHERE role = 'cassandra'").one()
                if row is not None and row.can_login:
                    session.execute(
                        "ALTER ROLE cassandra WITH PASSWORD = %s AND LOGIN = false", (random_password(),), timeout=10
                    )
                return True
            except Exception:  # noqa: BLE001 - try again on the next round
                return False
            finally:
                cluster.shutdown()
        try:
            # The default superuser appears shortly after the first start (the node makes it on its own).
            session, cluster = self._connect("cassandra", "cassandra")
        except Exception:  # noqa: BLE001 - not there yet
            return False
        try:
            session.execute(
                f"CREATE ROLE IF NOT EXISTS {CLIENT_USER} WITH PASSWORD = %s AND SUPERUSER = true AND LOGIN = true",
                (password,),
                timeout=10,
            )
        except Exception:  # noqa: BLE001 - try again on the next round
            pass
        finally:
            cluster.shutdown()
        return False  # done only when the next round logs in as walstream

    def _connect(self, username: str, password: str) -> tuple[Any, Any]:
        """A session as ``username`` (TLS with the stack's CA when secured); the caller shuts the cluster down."""
        from cassandra.auth import PlainTextAuthProvider

        from connectors.cassandra.sink import new_cluster

        cluster = new_cluster(HOST, self.settings.cassandra_port, timeout=2)
        if self.settings.secure:
            cluster.ssl_context = ssl.create_default_context(cafile=str(self.secrets.ca_file))
            cluster.auth_provider = PlainTextAuthProvider(username=username, password=password)
        try:
            return cluster.connect(), cluster
        except BaseException:
            cluster.shutdown()
            raise


class Elasticsearch(Service):
    name = "elasticsearch"

    def ports(self) -> dict[str, int]:
        return {
            "elasticsearch_port": self.settings.elasticsearch_port,
            "elasticsearch_transport_port": self.settings.elasticsearch_transport_port,
        }

    @property
    def client_port(self) -> int:
        return self.settings.elasticsearch_port

    def endpoint(self) -> str:
        scheme = "https" if self.settings.secure else "http"
        return f"{scheme}://{HOST}:{self.settings.elasticsearch_port}"

    def fetch(self, cache: ArtifactCache) -> None:
        cache.elasticsearch_home()

    def prepare(self, cache: ArtifactCache) -> Launch:
        home = cache.elasticsearch_home()
        s = self.settings
        conf, data, logs, tmp = (self.dir / d for d in ("conf", "data", "logs", "tmp"))
        for d in (conf, data, logs, tmp):
            d.mkdir(parents=True, exist_ok=True)
        for name in ("log4j2.properties", "roles.yml", "role_mapping.yml", "users", "users_roles"):
            src = home / "config" / name
            if src.exists() and not (conf / name).exists():
                shutil.copy(src, conf / name)
        (conf / "elasticsearch.yml").write_text(
            "cluster.name: walstream\n"
            "node.name: walstream-local\n"
            "discovery.type: single-node\n"
            f"network.host: {HOST}\n"
            f"http.port: {s.elasticsearch_port}\n"
            f"transport.port: {s.elasticsearch_transport_port}\n"
            f"path.data: {data}\n"
            f"path.logs: {logs}\n"
            "cluster.routing.allocation.disk.threshold_enabled: false\n"
            "action.destructive_requires_name: false\n" + self._security_yml(home, conf)
        )
        (conf / "jvm.options").write_text(
            "-XX:+UseG1GC\n"
            "-Djava.io.tmpdir=${ES_TMPDIR}\n"
            "-XX:+ExitOnOutOfMemoryError\n"
            "-Xlog:disable\n"
            "-Xlog:all=warning:stderr:utctime,level,tags\n"
        )
        env = self._base_env()
        env.update(
            ES_JAVA_HOME=str(self.java.home),
            ES_PATH_CONF=str(conf),
            ES_TMPDIR=str(tmp),
            ES_JAVA_OPTS=f"-Xms{s.elasticsearch_heap} -Xmx{s.elasticsearch_heap}",
            CLI_JAVA_OPTS="-Xms16m -Xmx64m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
        )
        user = group = None
        if os.getuid() == 0:
            user, group = self._unprivileged_owner()
            for d in (self.dir, conf, data, logs, tmp):
                _chown_tree(d, user, group)
            _check_reachable(home, user, group)
            _check_reachable(self.dir, user, group)
        if s.secure and not (conf / "elasticsearch.keystore").exists():
            self._make_keystore(home, env, user, group)
        return Launch(
            argv=[str(home / "bin" / "elasticsearch")],
            env=env,
            cwd=self.dir,
            log=self.log,
            user=user,
            group=group,
        )

    def _security_yml(self, home: Path, conf: Path) -> str:
        if not (home / "modules" / "x-pack-security").exists():
            if self.settings.secure:
                raise StackError(f"the Elasticsearch in {home} has no security module; the secured stack needs it")
            return ""
        if not self.settings.secure:
            return "xpack.security.enabled: false\n"
        # The node reads only files inside its config folder: it gets its own copies of the PEM files.
        certs = conf / secured.ES_CERTS_DIR
        certs.mkdir(mode=0o700, exist_ok=True)
        for src in (self.secrets.ca_file, self.secrets.cert_file, self.secrets.key_file):
            write_private(certs / src.name, src.read_text())
        return secured.elasticsearch_yml()

    def _make_keystore(self, home: Path, env: dict[str, str], user: int | None, group: int | None) -> None:
        """The ``elastic`` user's first password, as ``bootstrap.password`` in the node's keystore (made as the
        user that runs the node, so it can read it). The password goes in on stdin."""
        made = subprocess.run(
            [str(home / "bin" / "elasticsearch-keystore"), "add", "--force", "--stdin", "bootstrap.password"],
            input=self.secrets.password(self.secrets.elasticsearch_password_file) + "\n",
            capture_output=True,
            text=True,
            check=False,
            env=env,
            cwd=self.dir,
            user=user,
            group=group,
            extra_groups=[] if user is not None else None,
        )
        if made.returncode != 0:
            raise ServiceFailed(f"elasticsearch-keystore could not store the bootstrap password: {made.stderr}")

    def _unprivileged_owner(self) -> tuple[int, int]:
        """Elasticsearch refuses root: as root, run it as a system user that owns only its own folders."""
        name = self.settings.elasticsearch_user
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            useradd = shutil.which("useradd") or "/usr/sbin/useradd"
            made = subprocess.run(
                [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name],
                capture_output=True,
                text=True,
                check=False,
            )
            if made.returncode != 0:
                raise StackError(
                    f"Elasticsearch cannot run as root and creating the system user {name!r} failed: "
                    f"{made.stderr.strip()}. Create it yourself or set WALSTREAM_ELASTICSEARCH_USER."
                ) from None
            entry = pwd.getpwnam(name)
        return entry.pw_uid, entry.pw_gid

    def ready(self) -> bool:
        url = f"{self.endpoint()}/_cluster/health?wait_for_status=yellow&timeout=1s"
        request = urllib.request.Request(url)
        context = None
        if self.settings.secure:
            context = ssl.create_default_context(cafile=str(self.secrets.ca_file))
            password = self.secrets.password(self.secrets.elasticsearch_password_file)
            token = base64.b64encode(f"{ELASTICSEARCH_USER}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=3, context=context) as resp:
                health = json.load(resp)
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return health.get("status") in {"yellow", "green"} and not health.get("timed_out", False)


class ElasticMQ(Service):
    """The SQS-compatible server. Its SQL storage (an H2 file in its folder, written at once) keeps the queues and
    their messages, so a restart loses no queue and no message the server acknowledged."""

    name = "elasticmq"

    def ports(self) -> dict[str, int]:
        return {"sqs_port": self.settings.sqs_port}

    @property
    def client_port(self) -> int:
        return self.settings.sqs_port

    def endpoint(self) -> str:
        return f"http://{HOST}:{self.settings.sqs_port}"

    def fetch(self, cache: ArtifactCache) -> None:
        cache.elasticmq_lib()

    def prepare(self, cache: ArtifactCache) -> Launch:
        lib = cache.elasticmq_lib()
        s = self.settings
        conf, data = self.dir / "conf", self.dir / "data"
        conf.mkdir(parents=True, exist_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        hocon = conf / "elasticmq.conf"
        hocon.write_text(
            'include classpath("application.conf")\n'
            f'node-address {{ protocol = "http", host = "{HOST}", port = {s.sqs_port}, context-path = "" }}\n'
            f'rest-sqs {{ enabled = true, bind-port = {s.sqs_port}, bind-hostname = "{HOST}", sqs-limits = strict }}\n'
            "generate-node-address = false\n"
            "messages-storage {\n"
            "  enabled = true\n"
            '  driver-class = "org.h2.Driver"\n'
            # WRITE_DELAY=0: H2 commits every change to its file at once, not half a second later.
            f'  uri = "jdbc:h2:{data / "messages"};WRITE_DELAY=0"\n'
            '  username = ""\n  password = ""\n  prune-data-on-init = false\n'
            "}\n"
            'aws { region = "us-east-1", accountId = "000000000000" }\n'
            "pekko.loglevel = INFO\n"
        )
        logback = conf / "logback.xml"
        logback.write_text(
            '<configuration scan="false">\n'
            '  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">\n'
            "    <encoder><pattern>%d{ISO8601} %-5level %logger{20} - %msg%n</pattern></encoder>\n"
            "  </appender>\n"
            '  <logger name="org.elasticmq" level="INFO"/>\n'
            '  <root level="WARN"><appender-ref ref="STDOUT"/></root>\n'
            "</configuration>\n"
        )
        argv = [
            str(self.java.java),
            f"-Xms{s.sqs_heap}",
            f"-Xmx{s.sqs_heap}",
            "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError",
            f"-Dconfig.file={hocon}",
            f"-Dlogback.configurationFile={logback}",
            "-cp",
            f"{lib}/*",
            "org.elasticmq.server.Main",
        ]
        return Launch(argv=argv, env=self._base_env(), cwd=self.dir, log=self.log)

    def ready(self) -> bool:
        url = f"{self.endpoint()}/?Action=ListQueues"
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _check_reachable(path: Path, uid: int, gid: int) -> None:
    """Every folder above ``path`` must let the unprivileged user through."""
    for parent in path.parents:
        st = parent.stat()
        if st.st_uid == uid:
            continue
        if not st.st_mode & 0o001:
            raise StackError(
                f"Elasticsearch runs as an unprivileged user when started by root, and {parent} is not "
                "traversable by others. Point WALSTREAM_CACHE_DIR and WALSTREAM_STACK_DIR at folders "
                "outside it (the root defaults are under /var)."
            )


class KafkaWest(Kafka):
    """The second region's Kafka: the same recipe on its own ports and data folder (open stacks only)."""

    name = "kafka-west"
    port_setting = "kafka_west_port"
    controller_port_setting = "kafka_west_controller_port"


#: The local stack's regions: the first one's Kafka is ``kafka``, the second one's ``kafka-west``.
LOCAL_REGIONS = ("east", "west")
#: What MirrorMaker 2 replicates: the namespaces' logs ``wal.<ns>`` and nothing else (a namespace name has no
#: dot, so retry tiers, DLQ, CDC, changelogs and topics already replicated, ``east.wal.<ns>``, never match).
MIRRORED_TOPICS = r"wal\.[a-z][a-z0-9_-]*"


class MirrorMaker(Service):
    """Apache Kafka's MirrorMaker 2 in its dedicated mode, replicating the logs east -> west and west -> east.

    The default replication policy names a replicated topic after its source region (``east.wal.orders`` in
    west) and never replicates such a topic back, so an entry never loops. It binds no port; it is ready once
    each region's heartbeats have arrived in the other region."""

    name = "mirrormaker"

    def ports(self) -> dict[str, int]:
        return {}

    @property
    def client_port(self) -> int:
        return self.settings.kafka_west_port

    def endpoint(self) -> str:
        east, west = LOCAL_REGIONS
        return f"{east}<->{west}"

    def fetch(self, cache: ArtifactCache) -> None:
        cache.mirror_lib()

    def properties(self) -> dict[str, str]:
        s = self.settings
        east, west = LOCAL_REGIONS
        props = {
            "clusters": f"{east}, {west}",
            f"{east}.bootstrap.servers": f"{HOST}:{s.kafka_port}",
            f"{west}.bootstrap.servers": f"{HOST}:{s.kafka_west_port}",
            f"{east}->{west}.enabled": "true",
            f"{west}->{east}.enabled": "true",
            "topics": MIRRORED_TOPICS,
            "groups.exclude": ".*",
            "emit.checkpoints.enabled": "false",
            "sync.group.offsets.enabled": "false",
            "sync.topic.acls.enabled": "false",
            "emit.heartbeats.interval.seconds": "1",
            "refresh.topics.interval.seconds": "5",
            "tasks.max": "1",
            "replication.factor": "1",
        }
        for internal in ("checkpoints.topic", "heartbeats.topic", "offset-syncs.topic"):
            props[f"{internal}.replication.factor"] = "1"
        for cluster in LOCAL_REGIONS:
            # An aborted WriteBatch must never be replicated; committed ones arrive whole, entry by entry.
            props[f"{cluster}.consumer.isolation.level"] = "read_committed"
            props[f"{cluster}.producer.linger.ms"] = "5"
            props[f"{cluster}.producer.enable.idempotence"] = "true"
            props[f"{cluster}.producer.acks"] = "all"
            for store in ("offset.storage", "status.storage", "config.storage"):
                props[f"{cluster}.{store}.replication.factor"] = "1"
        return props

    def prepare(self, cache: ArtifactCache) -> Launch:
        lib = cache.mirror_lib()
        conf = self.dir / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        props = conf / "mm2.properties"
        props.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        log4j = conf / "log4j.properties"
        log4j.write_text(
            "log4j.rootLogger=INFO, stdout\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.org.apache.kafka.clients=WARN\n"
            "log4j.logger.org.apache.kafka.common=WARN\n"
            "log4j.logger.org.reflections=ERROR\n"
        )
        argv = [
            str(self.java.java),
            f"-Xms{self.settings.mirror_heap}",
            f"-Xmx{self.settings.mirror_heap}",
            "-XX:+UseG1GC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{log4j}",
            "-cp",
            f"{lib}/*",
            "org.apache.kafka.connect.mirror.MirrorMaker",
            str(props),
        ]
        return Launch(argv=argv, env=self._base_env(), cwd=self.dir, log=self.log)

    def ready(self) -> bool:
        """Each region's heartbeats have been replicated into the other one (both directions run)."""
        from confluent_kafka.admin import AdminClient

        east, west = LOCAL_REGIONS
        s = self.settings
        for port, wanted in ((s.kafka_port, f"{west}.heartbeats"), (s.kafka_west_port, f"{east}.heartbeats")):
            admin = AdminClient({"bootstrap.servers": f"{HOST}:{port}", "log_level": 0})
            try:
                metadata = admin.list_topics(timeout=2)
            except Exception:  # noqa: BLE001 - not ready yet
                return False
            topic = metadata.topics.get(wanted)
            if topic is None or topic.error is not None:
                return False
        return True


def all_services(settings: LocalStackSettings, java: JavaRuntime) -> list[Service]:
    return [
        Kafka(settings, java),
        Cassandra(settings, java),
        Elasticsearch(settings, java),
        ElasticMQ(settings, java),
        KafkaWest(settings, java),
        MirrorMaker(settings, java),
    ]


def describe_failure(service: Service, why: str) -> ServiceFailed:
    return ServiceFailed(f"{service.name} {why}. Last lines of {service.log}:\n{log_tail(service.log)}")
