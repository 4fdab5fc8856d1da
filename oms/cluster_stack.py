"""A local replicated ClickHouse: ZooKeeper and N `clickhouse-server` replicas of one shard.

What `oms project --migrate --cluster NAME` and a cluster rebuild run against on one machine
(docs/operations.md, "A replicated ClickHouse"). Both come from Debian packages
(`zookeeper` 3.8, run here with `java` on a `zoo.cfg` of our own, never the system service;
`clickhouse-server` 18.16, which has no clickhouse-keeper). Every replica has its own ports,
data directory and config, and the same `<remote_servers>` naming all of them as one shard;
`down` only stops processes whose pid files `up` wrote. The `default` user, without a password,
is allowed from this host only: it is what the replicas use to reach each other.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from oms.stack import (
    START_TIMEOUT_S,
    ServerProcess,
    ServiceStatus,
    StackError,
    port_open,
    wait_until,
)

ZOOKEEPER_JARS = Path("/usr/share/java")
LAYOUT_FILE = "cluster.json"


@dataclass(frozen=True)
class ReplicaPorts:
    tcp: int
    http: int
    interserver: int


@dataclass(frozen=True)
class ClusterLayout:
    """Where everything of one local cluster listens; kept in `cluster.json` beside it."""

    name: str
    zookeeper_port: int
    replicas: tuple[ReplicaPorts, ...]

    @classmethod
    def starting_at(cls, base_port: int, *, name: str, replicas: int) -> ClusterLayout:
        """ZooKeeper on `base_port`, replica i (from 1) on base + 10·i (native), +1 (HTTP) and
        +2 (the replicas' own fetches of parts)."""
        return cls(
            name=name,
            zookeeper_port=base_port,
            replicas=tuple(
                ReplicaPorts(base_port + 10 * i, base_port + 10 * i + 1, base_port + 10 * i + 2)
                for i in range(1, replicas + 1)
            ),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterLayout:
        kept = json.loads(text)
        return cls(
            name=str(kept["name"]),
            zookeeper_port=int(kept["zookeeper_port"]),
            replicas=tuple(ReplicaPorts(**ports) for ports in kept["replicas"]),
        )


def _answers(url: str) -> bool:
    """The server at `url` answers `SELECT 1`."""
    from projections.store import connect

    # While the server starts, the driver would log every refused connection with a trace.
    logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
    try:
        store = connect(url)
        try:
            return store.query("SELECT 1") == [(1,)]
        finally:
            store.close()
    except Exception:  # noqa: BLE001 - any failure here means "not answering"
        return False


class ZooKeeperService:
    """A standalone ZooKeeper (`ZooKeeperServerMain`) on 127.0.0.1, data under `directory`."""

    name = "zookeeper"

    def __init__(self, *, directory: Path, port: int) -> None:
        self.dir = directory
        self.port = port
        self.config = directory / "zoo.cfg"
        self.log = directory / "zookeeper.out"
        self.process = ServerProcess(pid_file=directory / "zookeeper.pid", marker=str(self.config))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def answering(self) -> bool:
        """ZooKeeper's `ruok` answered with `imok`."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"ruok")
                return sock.recv(4) == b"imok"
        except OSError:
            return False

    def up(self) -> str:
        if self.process.pid() is not None and self.answering():
            return "already running"
        jar = ZOOKEEPER_JARS / "zookeeper.jar"
        if not jar.exists() or shutil.which("java") is None:
            raise StackError(
                f"{jar} or java not found: install Debian's zookeeper (apt-get install -y "
                "zookeeper; `make test` does, as root)"
            )
        if port_open("127.0.0.1", self.port):
            raise StackError(f"port {self.port} is taken by a process this stack did not start")
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "\n".join(
                [
                    "tickTime=2000",
                    f"dataDir={self.dir / 'data'}",
                    f"clientPort={self.port}",
                    "clientPortAddress=127.0.0.1",
                    "maxClientCnxns=0",
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=ruok,srvr",
                    "",
                ]
            )
        )
        # The jar's manifest names its dependencies; slf4j-simple (same Debian package as the
        # slf4j API it depends on) sends ZooKeeper's log to the output file.
        classpath = [jar, ZOOKEEPER_JARS / "slf4j-simple.jar"]
        self.process.start(
            [
                "java",
                "-Xmx256m",
                "-Djava.awt.headless=true",
                "-Dzookeeper.jmx.log4j.disable=true",
                "-cp",
                ":".join(str(path) for path in classpath if path.exists()),
                "org.apache.zookeeper.server.ZooKeeperServerMain",
                str(self.config),
            ],
            log=self.log,
            cwd=self.dir,
        )
        wait_until(self.answering, timeout_s=START_TIMEOUT_S, what="ZooKeeper", log=self.log)
        return "started"

    def down(self) -> bool:
        return self.process.stop(timeout_s=20)

    def status(self) -> ServiceStatus:
        running = self.process.pid() is not None
        return ServiceStatus(self.name, self.address, running, self.answering())


_REPLICA_CONFIG = """<?xml version="1.0"?>
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
    <interserver_http_port>{interserver_port}</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>64</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <users_config>{dir}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <remote_servers>
        <{cluster}>
            <shard>
                <internal_replication>true</internal_replication>
{replicas}
            </shard>
        </{cluster}>
    </remote_servers>
    <zookeeper>
        <node><host>127.0.0.1</host><port>{zookeeper_port}</port></node>
        <session_timeout_ms>30000</session_timeout_ms>
    </zookeeper>
    <macros>
        <shard>01</shard>
        <replica>{replica}</replica>
    </macros>
    <distributed_ddl>
        <path>/clickhouse/task_queue/ddl</path>
    </distributed_ddl>
</yandex>
"""

_REPLICA_USERS = """<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>2000000000</max_memory_usage>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
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


class ClickHouseReplica:
    """One `clickhouse-server` of the cluster: macros shard 01 and replica `replica-N`."""

    def __init__(self, *, directory: Path, number: int, layout: ClusterLayout, binary: str) -> None:
        self.dir = directory
        self.number = number
        self.layout = layout
        self.ports = layout.replicas[number - 1]
        self.binary = binary
        self.name = f"replica-{number}"
        self.config = directory / "config.xml"
        self.log = directory / "logs" / "server.out"
        self.process = ServerProcess(pid_file=directory / "clickhouse.pid", marker=str(self.config))

    def url(self, database: str = "oms") -> str:
        return f"clickhouse://127.0.0.1:{self.ports.tcp}/{database}?http_port={self.ports.http}"

    def answering(self) -> bool:
        return _answers(self.url())

    def up(self) -> str:
        if self.process.pid() is not None and self.answering():
            return "already running"
        if port_open("127.0.0.1", self.ports.tcp):
            raise StackError(
                f"port {self.ports.tcp} is taken by a process this stack did not start"
            )
        for sub in ("data", "tmp", "user_files", "format_schemas", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        peers = "\n".join(
            f"                <replica><host>127.0.0.1</host><port>{ports.tcp}</port></replica>"
            for ports in self.layout.replicas
        )
        self.config.write_text(
            _REPLICA_CONFIG.format(
                dir=self.dir,
                tcp_port=self.ports.tcp,
                http_port=self.ports.http,
                interserver_port=self.ports.interserver,
                cluster=self.layout.name,
                replicas=peers,
                zookeeper_port=self.layout.zookeeper_port,
                replica=self.name,
            )
        )
        (self.dir / "users.xml").write_text(_REPLICA_USERS)
        self.process.start(
            [self.binary, f"--config-file={self.config}"], log=self.log, cwd=self.dir
        )
        return "started"

    def wait(self) -> None:
        wait_until(
            self.answering, timeout_s=START_TIMEOUT_S, what=f"ClickHouse {self.name}", log=self.log
        )

    def down(self) -> bool:
        return self.process.stop(timeout_s=30)

    def status(self) -> ServiceStatus:
        running = self.process.pid() is not None
        return ServiceStatus(
            f"clickhouse {self.name}", f"127.0.0.1:{self.ports.tcp}", running, self.answering()
        )


class ClickHouseCluster:
    """ZooKeeper and the replicas, under `directory` (`$OMS_HOME/cluster` for `oms stack
    cluster`, a temporary directory in tests). The layout of a cluster once started is read
    back from `cluster.json`, so `down` and `status` need no ports."""

    def __init__(self, *, directory: Path, layout: ClusterLayout | None = None) -> None:
        self.dir = directory
        kept = directory / LAYOUT_FILE
        if layout is None:
            if not kept.exists():
                raise StackError(
                    f"no cluster at {directory}: start one with `oms stack cluster up`"
                )
            layout = ClusterLayout.from_json(kept.read_text())
        self.layout = layout
        binary = shutil.which("clickhouse-server")
        if binary is None:
            raise StackError(
                "clickhouse-server not found: a replicated cluster needs the server "
                "(apt-get install -y clickhouse-server clickhouse-client)"
            )
        self.zookeeper = ZooKeeperService(
            directory=directory / "zookeeper", port=layout.zookeeper_port
        )
        self.replicas = [
            ClickHouseReplica(
                directory=directory / f"replica-{number}",
                number=number,
                layout=layout,
                binary=binary,
            )
            for number in range(1, len(layout.replicas) + 1)
        ]

    @property
    def name(self) -> str:
        return self.layout.name

    def urls(self, database: str = "oms") -> list[str]:
        return [replica.url(database) for replica in self.replicas]

    def up(self) -> list[tuple[str, str]]:
        """ZooKeeper, then every replica (started together, then waited for)."""
        kept = self.dir / LAYOUT_FILE
        if kept.exists() and ClusterLayout.from_json(kept.read_text()) != self.layout:
            raise StackError(
                f"a cluster with another layout was started at {self.dir}: "
                "`oms stack cluster down` it first"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        kept.write_text(self.layout.to_json())
        started = [(self.zookeeper.name, self.zookeeper.up())]
        outcomes = [replica.up() for replica in self.replicas]
        for replica, outcome in zip(self.replicas, outcomes, strict=True):
            replica.wait()
            started.append((f"clickhouse {replica.name}", f"{outcome} ({replica.url()})"))
        return started

    def down(self) -> list[tuple[str, bool]]:
        """Every replica, then ZooKeeper; the data stays (remove the directory to forget it)."""
        stopped = [(f"clickhouse {r.name}", r.down()) for r in reversed(self.replicas)]
        stopped.append((self.zookeeper.name, self.zookeeper.down()))
        (self.dir / LAYOUT_FILE).unlink(missing_ok=True)
        return stopped

    def status(self) -> list[ServiceStatus]:
        return [self.zookeeper.status(), *(replica.status() for replica in self.replicas)]
