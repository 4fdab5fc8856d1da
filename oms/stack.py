"""The local stack: a real Apache Kafka broker (KRaft, from Maven Central jars) and ClickHouse.

ClickHouse is a local `clickhouse-server` when that binary is installed, otherwise embedded chDB.
Everything lives under `Settings.home`; `down` only stops processes whose pid files it wrote.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from infra.capacity import replication_for
from infra.keystore import TOPIC_CONFIG as KEY_TOPIC_CONFIG
from infra.keystore import ensure_local_master_key
from infra.principals import ensure_local_session_secret
from infra.settings import LOCAL_BOOTSTRAP, PROJECT_ROOT, Settings, Topics
from streams.worker.snapshots import TOPIC_CONFIG as SNAPSHOT_TOPIC_CONFIG

KAFKA_POM = PROJECT_ROOT / "kafka" / "pom.xml"
START_TIMEOUT_S = 90.0


DAY_MS = 24 * 3600 * 1000


def topic_configs(topics: Topics) -> dict[str, dict[str, str]]:
    """How long each topic keeps what it holds (docs/operations.md, "Retention").

    - The order log and the stock ledger are the record, and the agents rebuild their state
      from them: kept forever (`retention.ms=-1`). So is the catalogue, whose updates are
      changes to a location or a product, not whole values a compaction could keep the last
      of.
    - Intake and the agents' command topics hold inputs on their way: 7 days, longer than
      any outage a worker is expected to be restarted within (an input older than that,
      unconsumed, is lost: its channel resends it, or the operator replays the DLQ).
    - Dead letters: 30 days to look at them and replay; notifications: 30 days.
    - The data keys of personal data: compacted (infra/keystore.py, `TOPIC_CONFIG`).
    - The audit trail: kept forever and never compacted, since a chain with an entry gone
      no longer verifies (infra/audit.py).
    - Learned prep-time models: compacted; each is a whole value, and only the newest counts.
    - The outbox of calls to the platforms: compacted by idempotency key, kept forever: the
      newest record of a call (intent, then outcome) is what says it was made.
    - Outbound webhooks: the subscriptions compacted and kept forever (the newest record is
      the subscription); the delivery log compacted by webhook id and kept 30 days.
    - Staff alerts: compacted by (event, sink) key; the alerter tombstones the records of
      events past its window when it starts, so the topic stays small.
    - The carriers' tracking pushes: 7 days, as the other inputs on their way.
    - The agents' snapshots: compacted; a superseded snapshot's chunks are tombstoned by
      the worker that wrote its successor (streams/worker/snapshots.py).
    """
    forever = {"retention.ms": "-1", "cleanup.policy": "delete"}
    week = {"retention.ms": str(7 * DAY_MS), "cleanup.policy": "delete"}
    month = {"retention.ms": str(30 * DAY_MS), "cleanup.policy": "delete"}
    return {
        topics.orders: forever,
        topics.inventory: forever,
        topics.catalogue: forever,
        topics.intake: week,
        topics.order_commands: week,
        topics.stock_commands: week,
        topics.dlq: month,
        topics.notifications: month,
        topics.privacy_keys: KEY_TOPIC_CONFIG,
        topics.audit: forever,
        topics.eta_models: {"cleanup.policy": "compact", "retention.ms": "-1"},
        topics.outbox: {"cleanup.policy": "compact", "retention.ms": "-1"},
        topics.webhook_subscriptions: {"cleanup.policy": "compact", "retention.ms": "-1"},
        topics.webhook_deliveries: {
            "cleanup.policy": "compact,delete",
            "retention.ms": str(30 * DAY_MS),
        },
        topics.staff_alerts: {"cleanup.policy": "compact", "retention.ms": "-1"},
        topics.carrier_updates: week,
        topics.snapshots: SNAPSHOT_TOPIC_CONFIG,
    }


class StackError(RuntimeError):
    """The local stack could not be set up or started; the message says what to do."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    running: bool
    answering: bool
    detail: str = ""


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "localhost", int(port)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], *, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else ""
    raise StackError(f"{what} did not answer within {timeout_s:.0f}s. Last lines of {log}:\n{tail}")


class ServerProcess:
    """A background process known by its pid file; `marker` must appear in its command line."""

    def __init__(self, *, pid_file: Path, marker: str) -> None:
        self.pid_file = pid_file
        self.marker = marker

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            return None
        return pid if self.marker in cmdline else None

    def start(
        self, argv: list[str], *, log: Path, cwd: Path, env: dict[str, str] | None = None
    ) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))

    def stop(self, *, timeout_s: float = 30.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._alive(pid):
            time.sleep(0.2)
        if self._alive(pid):
            os.kill(pid, signal.SIGKILL)
            while self._alive(pid):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    @staticmethod
    def _alive(pid: int) -> bool:
        return process_alive(pid)


def process_alive(pid: int) -> bool:
    """True while `pid` runs; an exited process waiting to be reaped (zombie) counts as gone."""
    with contextlib.suppress(ChildProcessError):  # reap it if it is our own child
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass(frozen=True)
class BrokerTls:
    """The broker's side of TLS: its key and certificate (PKCS12) and the CAs it trusts (PEM)
    when it connects to itself (the single node is its own inter-broker peer)."""

    keystore: Path
    keystore_password: str
    truststore: Path


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft node of the local stack, broker and controller in one process: its id, where
    clients reach it, where the other controllers reach it, and its directory (config, data,
    logs, pid file)."""

    node_id: int
    host: str
    port: int
    controller_port: int
    dir: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def voter(self) -> str:
        return f"{self.node_id}@{self.host}:{self.controller_port}"


# Under HOME/kafka: the nodes of a stack of several brokers and their cluster id, written when
# it is first started (`oms stack up --brokers N`) and kept with their data.
BROKERS_FILE = "brokers.json"
NODE_PORT_STEP = 100  # node i's ports are node 1's + 100·(i-1) unless OMS_KAFKA_BOOTSTRAP lists it


def kafka_nodes(settings: Settings, brokers: int) -> tuple[KafkaNode, ...]:
    """Where `brokers` local nodes listen. One is the stack as it always was: HOME/kafka, the
    first address of OMS_KAFKA_BOOTSTRAP, OMS_KAFKA_CONTROLLER_PORT. With more, node i (from 1)
    lives in HOME/kafka/node-i and listens on the i-th address listed, or else on the first
    one's port + 100·(i-1); its controller on OMS_KAFKA_CONTROLLER_PORT + 100·(i-1)."""
    if brokers < 1:
        raise StackError(f"a Kafka stack has at least one broker, not {brokers}")
    listed = [_host_port(a.strip()) for a in settings.kafka_bootstrap.split(",") if a.strip()]
    host, port = listed[0]
    controller = settings.kafka_controller_port
    if brokers == 1:
        return (KafkaNode(1, host, port, controller, settings.home / "kafka"),)
    nodes = tuple(
        KafkaNode(
            node_id=i + 1,
            host=listed[i][0] if i < len(listed) else host,
            port=listed[i][1] if i < len(listed) else port + NODE_PORT_STEP * i,
            controller_port=controller + NODE_PORT_STEP * i,
            dir=settings.home / "kafka" / f"node-{i + 1}",
        )
        for i in range(brokers)
    )
    ports = [(n.host, n.port) for n in nodes] + [(n.host, n.controller_port) for n in nodes]
    if len(set(ports)) != len(ports):
        raise StackError(
            "two of the brokers' ports are the same: "
            + ", ".join(
                f"node {n.node_id} {n.port} (controller {n.controller_port})" for n in nodes
            )
            + "; list one address per broker in OMS_KAFKA_BOOTSTRAP, away from the controllers"
        )
    return nodes


class KafkaService:
    """One KRaft node (broker + controller) run with `java -cp libs/* kafka.Kafka`: the whole
    single-node stack, or node `node` of a quorum of several (`KafkaCluster`).

    With 3 or more nodes every partition has 3 copies and a write needs 2 of them
    (`replication_for`): `default.replication.factor`, `min.insync.replicas`, the group offsets'
    and transaction state's topics likewise, and no unclean leader election (an out-of-date
    copy never becomes the leader, so an acknowledged write is never lost to one).

    Its client listener speaks `OMS_KAFKA_SECURITY_PROTOCOL`: PLAINTEXT for the development
    stack; with SASL, the SCRAM user of the settings is written into the metadata when the
    storage is formatted (`--add-scram`) and the broker talks to itself as that user; with
    TLS, `tls` gives the broker its keystore. There is then no PLAINTEXT client listener (the
    KRaft controller listener stays PLAINTEXT, on this host only: clients never use it).
    """

    name = "kafka"

    def __init__(
        self,
        settings: Settings,
        *,
        tls: BrokerTls | None = None,
        node: KafkaNode | None = None,
        quorum: Sequence[KafkaNode] = (),
    ) -> None:
        self.settings = settings
        self.tls = tls
        self.node = node or kafka_nodes(settings, 1)[0]
        self.quorum = tuple(quorum) or (self.node,)
        self.dir = self.node.dir
        self.host, self.port = self.node.host, self.node.port
        self.log = self.dir / "logs" / "server.out"
        self.config = self.dir / "server.properties"
        self.process = ServerProcess(pid_file=self.dir / "kafka.pid", marker=str(self.config))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _admin_config(self, bootstrap: str | None = None) -> dict[str, Any]:
        """An admin client's configuration: to this node alone, or to every broker listed."""
        from infra.kafka import admin_config, client_security

        bootstrap = bootstrap or self.settings.kafka_bootstrap
        return admin_config(bootstrap) | client_security(self.settings)

    def _listener_config(self) -> list[str]:
        """The client listener (also the inter-broker one) in the settings' protocol."""
        protocol = self.settings.kafka_security_protocol
        lines = [
            f"inter.broker.listener.name={protocol}",
            f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,{protocol}:{protocol}",
        ]
        if protocol.endswith("SSL"):
            if self.tls is None:
                raise StackError(
                    f"OMS_KAFKA_SECURITY_PROTOCOL={protocol}: the local broker needs a keystore "
                    "(KafkaService(tls=BrokerTls(...))); `oms stack` runs PLAINTEXT or "
                    "SASL_PLAINTEXT, or point OMS_KAFKA_BOOTSTRAP at your TLS brokers"
                )
            lines += [
                "ssl.keystore.type=PKCS12",
                f"ssl.keystore.location={self.tls.keystore}",
                f"ssl.keystore.password={self.tls.keystore_password}",
                f"ssl.key.password={self.tls.keystore_password}",
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={self.tls.truststore}",
                "ssl.client.auth=none",
            ]
        if protocol.startswith("SASL_"):
            mechanism = self.settings.kafka_sasl_mechanism
            username, password = self._scram_user()
            jaas = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{username}" password="{password}";'
            )
            lines += [
                f"sasl.enabled.mechanisms={mechanism}",
                f"sasl.mechanism.inter.broker.protocol={mechanism}",
                f"listener.name.{protocol.lower()}.{mechanism.lower()}.sasl.jaas.config={jaas}",
            ]
        return lines

    def _scram_user(self) -> tuple[str, str]:
        """The SCRAM user the broker is formatted with (and connects to itself as)."""
        from infra.kafka import sasl_credentials

        try:
            username, password = sasl_credentials(self.settings)
        except ValueError as exc:
            raise StackError(str(exc)) from exc
        if self.settings.kafka_sasl_mechanism == "PLAIN":
            raise StackError("the local broker's SASL is SCRAM: set OMS_KAFKA_SASL_MECHANISM")
        if any(c in username + password for c in '"\\,=[]\n'):
            raise StackError(
                "the local broker's SCRAM user name and password may not hold "
                'any of " \\ , = [ ] or a line break'
            )
        return username, password

    def ensure_installed(self) -> None:
        libs = self.settings.kafka_libs_dir
        stamp = libs / ".pom-stamp"
        pom = KAFKA_POM.read_text()
        if stamp.exists() and stamp.read_text() == pom:
            return
        if shutil.which("java") is None or shutil.which("mvn") is None:
            missing = " and ".join(t for t in ("java", "mvn") if shutil.which(t) is None)
            raise StackError(
                f"{missing} not found: install Java 17+ and Maven (Debian: apt-get install -y "
                "openjdk-17-jre-headless maven), or run Kafka and ClickHouse with Docker: "
                "docker compose -f docker-compose.kafka.yml up -d"
            )
        libs.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(KAFKA_POM),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={libs}",
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise StackError(f"mvn could not fetch the Kafka jars:\n{result.stdout[-3000:]}")
        stamp.write_text(pom)

    def _write_config(self, *, cluster_id: str | None = None) -> None:
        """server.properties and log4j.properties; the storage formatted if it is new, with
        `cluster_id` (every node of a quorum has the same) or a new one."""
        data = self.dir / "data"
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        controller = self.node.controller_port
        protocol = self.settings.kafka_security_protocol
        replication = replication_for(len(self.quorum))
        self.config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    f"node.id={self.node.node_id}",
                    f"controller.quorum.voters={','.join(n.voter for n in self.quorum)}",
                    f"listeners={protocol}://{self.host}:{self.port},CONTROLLER://{self.host}:{controller}",
                    f"advertised.listeners={protocol}://{self.host}:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    *self._listener_config(),
                    f"log.dirs={data}",
                    f"num.partitions={self.settings.kafka_partitions}",
                    f"offsets.topic.replication.factor={replication.factor}",
                    "offsets.topic.num.partitions=8",
                    f"transaction.state.log.replication.factor={replication.factor}",
                    f"transaction.state.log.min.isr={replication.min_insync}",
                    f"min.insync.replicas={replication.min_insync}",
                    f"default.replication.factor={replication.factor}",
                    "unclean.leader.election.enable=false",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                    "log.retention.hours=-1",
                    "",
                ]
            )
        )
        self.config.chmod(0o600)  # it may hold the SCRAM password and the keystore's
        (self.dir / "log4j.properties").write_text(
            "\n".join(
                [
                    "log4j.rootLogger=INFO, file",
                    "log4j.appender.file=org.apache.log4j.RollingFileAppender",
                    f"log4j.appender.file.File={self.dir / 'logs' / 'server.log'}",
                    "log4j.appender.file.MaxFileSize=20MB",
                    "log4j.appender.file.MaxBackupIndex=2",
                    "log4j.appender.file.layout=org.apache.log4j.PatternLayout",
                    "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n",
                    "log4j.logger.kafka=INFO",
                    "log4j.logger.org.apache.kafka=INFO",
                    "",
                ]
            )
        )
        if not (data / "meta.properties").exists():
            scram: list[str] = []
            if protocol.startswith("SASL_"):
                username, password = self._scram_user()
                mechanism = self.settings.kafka_sasl_mechanism
                scram = ["--add-scram", f"{mechanism}=[name={username},password={password}]"]
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id or str(uuid.uuid4()),
                "-c",
                str(self.config),
                *scram,
            )

    def _java(self, *args: str) -> None:
        result = subprocess.run(
            [
                "java",
                "-cp",
                f"{self.settings.kafka_libs_dir}/*",
                f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
                *args,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            shown = " ".join("SCRAM-…" if arg.startswith("SCRAM-") else arg for arg in args)
            raise StackError(f"java {shown} failed:\n{result.stdout}{result.stderr}")

    def answering(self) -> bool:
        return self.brokers_seen() > 0

    def brokers_seen(self) -> int:
        """How many brokers this node's metadata names (0 while it does not answer)."""
        if not port_open(self.host, self.port):
            return 0
        from confluent_kafka.admin import AdminClient

        try:
            metadata = AdminClient(self._admin_config(self.address)).list_topics(timeout=3)
        except Exception:  # noqa: BLE001 - any client error just means "not answering yet"
            return 0
        return len(metadata.brokers)

    def up(self) -> str:
        if self.process.pid() is not None and self.answering():
            self.ensure_topics()
            return "already running"
        self.ensure_installed()
        self.ensure_ports_free()
        self.start()
        wait_until(self.answering, timeout_s=START_TIMEOUT_S, what="Kafka", log=self.log)
        self.ensure_topics()
        wait_until(
            self.topics_readable, timeout_s=START_TIMEOUT_S, what="Kafka's topics", log=self.log
        )
        return "started"

    def ensure_ports_free(self) -> None:
        for port in (self.port, self.node.controller_port):
            if port_open(self.host, port):
                raise StackError(
                    f"port {port} is taken by a process this stack did not start; stop it or "
                    "set OMS_KAFKA_BOOTSTRAP to use that broker without `oms stack`"
                )

    def start(self, *, cluster_id: str | None = None) -> None:
        """Write the config (formatting new storage) and start the process; no waiting."""
        self._write_config(cluster_id=cluster_id)
        self.process.start(
            [
                "java",
                "-Xms256m",
                "-Xmx768m",
                "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
                f"-Dkafka.logs.dir={self.dir / 'logs'}",
                "-cp",
                f"{self.settings.kafka_libs_dir}/*",
                "kafka.Kafka",
                str(self.config),
            ],
            log=self.log,
            cwd=self.dir,
        )

    def topics_readable(self) -> bool:
        """Every partition of the stack's topics answers for its offsets. A broker that has just
        started names a leader in its metadata a moment before that leader serves the partition
        (a client asking then gets NOT_LEADER_FOR_PARTITION)."""
        from confluent_kafka import KafkaException, TopicPartition
        from confluent_kafka.admin import AdminClient, OffsetSpec

        admin = AdminClient(self._admin_config())
        try:
            topics = admin.list_topics(timeout=10).topics
            if any(topic not in topics for topic in self.settings.topics.all()):
                return False  # created a moment ago: not in the metadata yet
            wanted = {
                TopicPartition(topic, partition): OffsetSpec.latest()
                for topic in self.settings.topics.all()
                for partition in topics[topic].partitions
            }
            for future in admin.list_offsets(wanted, request_timeout=5).values():
                future.result()
        except KafkaException:
            return False
        return True

    def ensure_topics(self) -> None:
        """Every topic, with its retention (`topic_configs`): created if missing, with
        OMS_KAFKA_PARTITIONS partitions and `Settings.replication_factor` copies; the retention
        set again on topics that exist (a stack started before the policy, or one changed by
        hand). A topic that exists keeps its partitions."""
        from confluent_kafka.admin import (
            AdminClient,
            AlterConfigOpType,
            ConfigEntry,
            ConfigResource,
            NewTopic,
        )

        admin = AdminClient(self._admin_config())
        existing = admin.list_topics(timeout=10).topics
        configs = topic_configs(self.settings.topics)
        wanted = [
            NewTopic(
                t,
                num_partitions=self.settings.kafka_partitions,
                replication_factor=self.settings.replication_factor,
                config=configs[t],
            )
            for t in self.settings.topics.all()
            if t not in existing
        ]
        for topic, future in admin.create_topics(wanted).items() if wanted else []:
            try:
                future.result(timeout=30)
            except Exception as exc:  # noqa: BLE001 - TOPIC_ALREADY_EXISTS from a racing start
                if "already exists" not in str(exc).lower():
                    raise StackError(f"could not create topic {topic}: {exc}") from exc
        kept = [
            ConfigResource(
                ConfigResource.Type.TOPIC,
                topic,
                incremental_configs=[
                    ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
                    for name, value in configs[topic].items()
                ],
            )
            for topic in self.settings.topics.all()
            if topic in existing
        ]
        for resource, future in admin.incremental_alter_configs(kept).items() if kept else []:
            try:
                future.result(timeout=30)
            except Exception as exc:  # noqa: BLE001 - named in the error
                raise StackError(f"could not set the retention of {resource.name}: {exc}") from exc

    def down(self) -> bool:
        return self.process.stop(timeout_s=45)

    def status(self) -> ServiceStatus:
        running = self.process.pid() is not None
        return ServiceStatus(
            self.name,
            self.address,
            running,
            self.answering(),
            "" if running else "not started by oms stack",
        )


class KafkaCluster:
    """The stack's Kafka: one node (the default, `KafkaService` as it always was) or `brokers`
    nodes of one KRaft quorum, each a broker and a controller, formatted with one cluster id
    (`oms stack up --brokers 3`).

    The nodes of a stack of several are kept in HOME/kafka/brokers.json when it is first
    started, and their addresses in HOME/kafka/bootstrap, which is what OMS_KAFKA_BOOTSTRAP
    defaults to: `down`, `status` and every other command then find all of them. Both stay
    with the data; a stack is not resized in place (its quorum is formatted into every node).
    """

    name = "kafka"

    def __init__(
        self,
        settings: Settings,
        *,
        brokers: int | None = None,
        nodes: Sequence[KafkaNode] = (),
        tls: BrokerTls | None = None,
    ) -> None:
        self.dir = settings.home / "kafka"
        self.brokers = brokers
        self.layout = self.dir / BROKERS_FILE
        recorded = self._recorded()
        self.cluster_id = str(recorded.get("cluster_id") or uuid.uuid4())
        chosen = tuple(nodes) or self._recorded_nodes(settings, recorded)
        if not chosen:
            chosen = kafka_nodes(settings, brokers or 1)
        bootstrap = ",".join(node.address for node in chosen)
        self.settings = settings.model_copy(update={"kafka_bootstrap": bootstrap})
        self.nodes = [
            KafkaService(self.settings, tls=tls, node=node, quorum=chosen) for node in chosen
        ]

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap

    def node(self, node_id: int) -> KafkaService:
        (found,) = [n for n in self.nodes if n.node.node_id == node_id]
        return found

    def _recorded(self) -> dict[str, Any]:
        try:
            kept = json.loads(self.layout.read_text())
        except (OSError, ValueError):
            return {}
        return kept if isinstance(kept, dict) else {}

    def _recorded_nodes(self, settings: Settings, kept: dict[str, Any]) -> tuple[KafkaNode, ...]:
        return tuple(
            KafkaNode(
                node_id=int(n["node_id"]),
                host=str(n["host"]),
                port=int(n["port"]),
                controller_port=int(n["controller_port"]),
                dir=self.dir / f"node-{int(n['node_id'])}",
            )
            for n in kept.get("nodes", [])
        )

    def _record(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        nodes = [
            {
                "node_id": n.node.node_id,
                "host": n.host,
                "port": n.port,
                "controller_port": n.node.controller_port,
            }
            for n in self.nodes
        ]
        self.layout.write_text(json.dumps({"cluster_id": self.cluster_id, "nodes": nodes}))
        (self.settings.home / LOCAL_BOOTSTRAP).write_text(self.bootstrap + "\n")

    def up(self) -> str:
        """Start every node not running (all of them at once: a controller needs a majority of
        the quorum to elect a leader), wait until each broker has registered, then the topics."""
        if self.brokers is not None and self.brokers != len(self.nodes):
            raise StackError(
                f"the stack under {self.settings.home} has {len(self.nodes)} "
                f"broker{'s' if len(self.nodes) > 1 else ''}, not {self.brokers}: a stack is "
                f"not resized in place; `oms stack down`, then move {self.dir} away (its data) "
                "or use another OMS_HOME"
            )
        if len(self.nodes) == 1:
            return self.nodes[0].up()
        stopped = [n for n in self.nodes if n.process.pid() is None]
        if not stopped and self.answering():
            self.nodes[0].ensure_topics()
            return f"already running ({len(self.nodes)} brokers: {self.bootstrap})"
        self.nodes[0].ensure_installed()
        for node in stopped:
            node.ensure_ports_free()
        self._record()
        for node in stopped:
            node.start(cluster_id=self.cluster_id)
        for node in self.nodes:
            wait_until(
                functools.partial(self._knows_every_broker, node),
                timeout_s=START_TIMEOUT_S,
                what=f"Kafka node {node.node.node_id} (with all {len(self.nodes)} brokers)",
                log=node.log,
            )
        first = self.nodes[0]
        first.ensure_topics()
        wait_until(
            first.topics_readable, timeout_s=START_TIMEOUT_S, what="Kafka's topics", log=first.log
        )
        started = ", ".join(str(n.node.node_id) for n in stopped)
        return f"started node{'s' if len(stopped) > 1 else ''} {started} ({self.bootstrap})"

    def answering(self) -> bool:
        """Every node answers, and knows every broker."""
        return all(self._knows_every_broker(node) for node in self.nodes)

    def _knows_every_broker(self, node: KafkaService) -> bool:
        return node.brokers_seen() == len(self.nodes)

    def down(self) -> bool:
        """Stop every node, together: one at a time, the last would wait for a quorum gone."""
        if len(self.nodes) == 1:
            return self.nodes[0].down()
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            return any(list(pool.map(lambda node: node.down(), self.nodes)))

    def status(self) -> list[ServiceStatus]:
        """One line per node."""
        if len(self.nodes) == 1:
            return [self.nodes[0].status()]
        return [
            ServiceStatus(
                f"kafka-{n.node.node_id}",
                s.address,
                s.running,
                s.answering,
                s.detail,
            )
            for n in self.nodes
            for s in [n.status()]
        ]

    def running(self) -> bool:
        return any(node.process.pid() is not None for node in self.nodes)


_CLICKHOUSE_CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>{dir}/logs/clickhouse-server.log</log>
        <errorlog>{dir}/logs/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <tcp_port>{tcp_port}</tcp_port>
    <http_port>{http_port}</http_port>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>64</max_concurrent_queries>
    <uncompressed_cache_size>1073741824</uncompressed_cache_size>
    <mark_cache_size>1073741824</mark_cache_size>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <users_config>{dir}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
</yandex>
"""

# Users of the local server: `oms` writes (the projector, migrations), `oms_reader` may only
# read (readonly=1: no INSERT, no DDL, no changing that setting) and is what the read API
# uses; both from this host only, with passwords kept as SHA-256 (CLICKHOUSE_PASSWORDS).
# `default` stays password-less on this host for the development tools that predate them.
_CLICKHOUSE_USERS = """<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <load_balancing>random</load_balancing>
        </default>
        <readonly>
            <max_memory_usage>4000000000</max_memory_usage>
            <load_balancing>random</load_balancing>
            <readonly>1</readonly>
        </readonly>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <oms>
            <password_sha256_hex>{writer_sha256}</password_sha256_hex>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </oms>
        <oms_reader>
            <password_sha256_hex>{reader_sha256}</password_sha256_hex>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>readonly</profile>
            <quota>default</quota>
        </oms_reader>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries><errors>0</errors><result_rows>0</result_rows>
                <read_rows>0</read_rows><execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"""


WRITER, READER = "oms", "oms_reader"
USERS = (WRITER, READER)
CLICKHOUSE_PASSWORDS = "passwords.json"


class ClickHouseService:
    """A local `clickhouse-server` when installed (CI and production-like), else embedded chDB."""

    name = "clickhouse"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.home / "clickhouse"
        self.config = self.dir / "config.xml"
        self.log = self.dir / "logs" / "server.out"
        self.url_marker = self.dir / "url"
        self.read_url_marker = self.dir / "read_url"
        self.process = ServerProcess(pid_file=self.dir / "clickhouse.pid", marker=str(self.config))
        self.binary = shutil.which("clickhouse-server")

    @property
    def url(self) -> str:
        """The writer's URL (user `oms`)."""
        return self._url_as(WRITER)

    @property
    def read_url(self) -> str:
        """The read-only user's URL (`oms_reader`), for the read API."""
        return self._url_as(READER)

    def _url_as(self, user: str) -> str:
        if self.binary is None:
            return f"chdb://{self.settings.home / 'chdb'}"
        password = quote(self.passwords()[user], safe="")
        # The HTTP port is for inserts of rows already in RowBinary (ServerStore.insert_rowbinary).
        return (
            f"clickhouse://{user}:{password}@127.0.0.1:{self.settings.clickhouse_port}/oms"
            f"?http_port={self.settings.clickhouse_http_port}"
        )

    def passwords(self) -> dict[str, str]:
        """The users' passwords, made once (random) and kept beside the data, owner-only."""
        path = self.dir / CLICKHOUSE_PASSWORDS
        if path.exists():
            kept = json.loads(path.read_text())
            if isinstance(kept, dict) and all(isinstance(kept.get(u), str) for u in USERS):
                return {user: str(kept[user]) for user in USERS}
        self.dir.mkdir(parents=True, exist_ok=True)
        made = {user: secrets.token_urlsafe(24) for user in USERS}
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(made, file)
        return made

    def _write_users(self) -> None:
        """users.xml with the users' password hashes; a running server reloads it by itself."""
        digests = {
            user: hashlib.sha256(password.encode()).hexdigest()
            for user, password in self.passwords().items()
        }
        (self.dir / "users.xml").write_text(
            _CLICKHOUSE_USERS.format(writer_sha256=digests[WRITER], reader_sha256=digests[READER])
        )

    def _write_urls(self) -> None:
        for marker, url in ((self.url_marker, self.url), (self.read_url_marker, self.read_url)):
            descriptor = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(url)
            marker.chmod(0o600)  # made before it held a password, it may be readable by all

    def answering(self) -> bool:
        from projections.store import connect

        # While the server starts, the driver would log every refused connection with a trace.
        logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
        try:
            store = connect(self.url)
            try:
                return store.query("SELECT 1") == [(1,)]
            finally:
                store.close()
        except Exception:  # noqa: BLE001 - any failure here means "not answering"
            return False

    def up(self) -> str:
        if self.binary is None:
            (self.settings.home / "chdb").mkdir(parents=True, exist_ok=True)
            if not self.answering():
                raise StackError(
                    "embedded chDB does not answer SELECT 1; is the chdb package installed?"
                )
            return "embedded chDB (no clickhouse-server installed)"
        if self.process.pid() is not None:
            # A server started before its users: it reads the new users.xml within seconds.
            self._write_users()
            wait_until(self.answering, timeout_s=30, what="ClickHouse's users", log=self.log)
            self._write_urls()
            return "already running"
        if port_open("127.0.0.1", self.settings.clickhouse_port):
            raise StackError(
                f"port {self.settings.clickhouse_port} is taken by a process this stack did not "
                "start; stop it or point OMS_CLICKHOUSE_URL at that server"
            )
        for sub in ("data", "tmp", "user_files", "format_schemas", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            _CLICKHOUSE_CONFIG.format(
                dir=self.dir,
                tcp_port=self.settings.clickhouse_port,
                http_port=self.settings.clickhouse_http_port,
            )
        )
        self._write_users()
        self.process.start(
            [self.binary, f"--config-file={self.config}"], log=self.log, cwd=self.dir
        )
        wait_until(self.answering, timeout_s=START_TIMEOUT_S, what="ClickHouse", log=self.log)
        self._write_urls()
        return "started"

    def down(self) -> bool:
        self.url_marker.unlink(missing_ok=True)
        self.read_url_marker.unlink(missing_ok=True)
        return self.process.stop(timeout_s=30)

    def status(self) -> ServiceStatus:
        from projections.store import redacted

        if self.binary is None:
            return ServiceStatus(self.name, self.url, True, self.answering(), "embedded")
        running = self.process.pid() is not None
        return ServiceStatus(
            self.name,
            redacted(self.url),
            running,
            self.answering(),
            "" if running else "not started by oms stack",
        )


class Stack:
    """Both services together, in start order. `brokers`: how many Kafka nodes a new stack
    runs (`KafkaCluster`); one unless asked, and a stack that exists keeps its own."""

    def __init__(self, settings: Settings, *, brokers: int | None = None) -> None:
        settings.home.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.services: list[KafkaCluster | ClickHouseService] = [
            KafkaCluster(settings, brokers=brokers),
            ClickHouseService(settings),
        ]

    def up(self) -> list[tuple[str, str]]:
        """Starts the services; a development master key for personal data is made once,
        unless OMS_MASTER_KEY is set (infra/keystore.py), and a session key unless
        OMS_SESSION_SECRET is (infra/principals.py)."""
        started = [(service.name, service.up()) for service in self.services]
        if not (self.settings.master_key and self.settings.master_key.get_secret_value()):
            path = ensure_local_master_key(self.settings.home)
            started.append(
                ("master key", f"{path} (development; set OMS_MASTER_KEY in production)")
            )
        if not (self.settings.session_secret and self.settings.session_secret.get_secret_value()):
            path = ensure_local_session_secret(self.settings.home)
            started.append(
                ("session key", f"{path} (development; set OMS_SESSION_SECRET in production)")
            )
        return started

    def down(self) -> list[tuple[str, bool]]:
        return [(service.name, service.down()) for service in reversed(self.services)]

    def status(self) -> list[ServiceStatus]:
        found: list[ServiceStatus] = []
        for service in self.services:
            found += service.status() if isinstance(service, KafkaCluster) else [service.status()]
        return found

    def started_by_us(self) -> list[str]:
        return [
            s.name
            for s in self.services
            if (s.running() if isinstance(s, KafkaCluster) else s.process.pid() is not None)
        ]
