"""The real servers of the local stack: Kafka (KRaft), MinIO, Redis and Weaviate on 127.0.0.1, with the exporters
that give Prometheus what the servers do not serve themselves: Kafka's JMX exporter agent and the Redis exporter.

Binaries come from infra/local/install.sh (pinned in infra/local/versions.env); data, logs, pid files and
generated credentials live under one state directory. `make up` uses the default ports; the test fixtures
use free ports and a temporary state directory, so both can run side by side.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import random
import secrets
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

import httpx
import redis
import yaml

from ingest.settings import INBOX_TARGET_DURABLE, INBOX_TARGET_IMMEDIATE
from ragtrace.messaging import ensure_topics, inbox_topics
from ragtrace.settings import KafkaSettings
from ragtrace_tools.devstack.supervisor import Component
from ragtrace_tools.kafka_admin import controller_elected

PortsT = TypeVar("PortsT")

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_INFRA = REPO_ROOT / "infra" / "local"
# The JMX exporter's rules, the same file Kind's Kafka mounts.
KAFKA_JMX_EXPORTER_CONFIG = REPO_ROOT / "monitoring" / "kafka" / "jmx-exporter.yaml"


def cache_dir() -> Path:
    return Path(os.environ.get("RAGTRACE_CACHE_DIR", Path.home() / ".cache" / "ragtrace"))


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (blank lines and # comments skipped); a missing file is empty."""
    if not path.exists():
        return {}
    lines = (line.strip() for line in path.read_text().splitlines())
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def kind_statefulset_args(manifest: Path) -> list[str]:
    """The args of the one container of the one StatefulSet in a Kind manifest file."""
    [statefulset] = [m for m in yaml.safe_load_all(manifest.read_text()) if m and m["kind"] == "StatefulSet"]
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    return list(container["args"])


def localized_args(args: list[str], local: dict[str, str | None], drop: frozenset[str] = frozenset()) -> list[str]:
    """A Kind container's `--flag=value` args for a local process: the flags in `local` take its value (None:
    the flag is left out), those in `drop` are left out, the rest are kept as they are."""
    kept = []
    for arg in args:
        flag, _, value = arg.partition("=")
        if flag in drop or (flag in local and local[flag] is None):
            continue
        kept.append(f"{flag}={local.get(flag) or value}" if value else arg)
    return kept


def pinned_versions() -> dict[str, str]:
    return read_env_file(LOCAL_INFRA / "versions.env")


def free_port() -> int:
    return free_ports(1)[0]


# Ports handed out are drawn from here up to the kernel's ephemeral range (ephemeral_range).
LOWEST_FREE_PORT = 10_000


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    """The ports the kernel gives outgoing connections and bind(0); Linux's default where it cannot be read."""
    try:
        low, high = path.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(count: int, lowest: int = LOWEST_FREE_PORT, below: int | None = None) -> list[int]:
    """Distinct free ports from `lowest` up to `below` (the ephemeral range's start): a port the kernel hands out
    (bind(0)) can be given to any outgoing connection's local end between its choice and its server's bind,
    which CI saw fail a start with EADDRINUSE; below the range only a listener takes one. Every socket stays
    bound until all are chosen, so none is handed out twice."""
    candidates = list(range(lowest, ephemeral_range()[0] if below is None else below))
    random.shuffle(candidates)
    with contextlib.ExitStack() as stack:
        chosen: list[int] = []
        for port in [*candidates, *[0] * count]:  # 0: the kernel's choice, where nothing below the range is free
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            stack.enter_context(sock)
            chosen.append(int(sock.getsockname()[1]))
            if len(chosen) == count:
                break
        return chosen


def with_free_ports(ports_type: type[PortsT]) -> PortsT:
    """A ports dataclass with every field a distinct free port (the test fixtures' stacks)."""
    names = [f.name for f in fields(ports_type)]  # type: ignore[arg-type]
    return ports_type(**dict(zip(names, free_ports(len(names)), strict=True)))


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class StackPorts:
    kafka: int = 9092
    kafka_controller: int = 9093
    kafka_metrics: int = 9404  # the JMX exporter agent inside the broker
    minio: int = 9000
    minio_console: int = 9001
    redis: int = 6379
    redis_exporter: int = 9121
    weaviate_http: int = 8090
    weaviate_grpc: int = 50051
    weaviate_gossip: int = 7946
    weaviate_data: int = 7947
    weaviate_raft: int = 8300
    weaviate_raft_rpc: int = 8301
    vllm: int = 8000  # `make up LLM=vllm` only (devstack/llm.py)

    @classmethod
    def free(cls) -> StackPorts:
        return with_free_ports(cls)


@dataclass(frozen=True)
class StackSecrets:
    """Credentials generated for one state directory; environment variables take precedence."""

    minio_access_key: str
    minio_secret_key: str
    redis_password: str
    weaviate_api_key: str
    api_key: str  # for ragtrace's own APIs (ingest, search)

    @classmethod
    def load_or_create(cls, path: Path) -> StackSecrets:
        stored = read_env_file(path)
        values = {
            f.name: os.environ.get(f"RAGTRACE_{f.name.upper()}") or stored.get(f.name) or secrets.token_urlsafe(24)
            for f in fields(cls)
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        return cls(**values)


class LocalServers:
    """Builds the Component for each real server from ports, secrets and the state directory."""

    def __init__(self, state_dir: Path, ports: StackPorts) -> None:
        self.state_dir = state_dir
        self.ports = ports
        self.secrets = StackSecrets.load_or_create(state_dir / "secrets.env")
        self.versions = pinned_versions()
        self.cache = cache_dir()

    def client_env(self) -> dict[str, str]:
        """The RAGTRACE_* variables a ragtrace process needs to reach these servers (see ragtrace.settings)."""
        p, s = self.ports, self.secrets
        return {
            "RAGTRACE_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{p.kafka}",
            "RAGTRACE_MINIO_ENDPOINT": f"127.0.0.1:{p.minio}",
            "RAGTRACE_MINIO_ACCESS_KEY": s.minio_access_key,
            "RAGTRACE_MINIO_SECRET_KEY": s.minio_secret_key,
            "RAGTRACE_REDIS_URL": f"redis://:{s.redis_password}@127.0.0.1:{p.redis}/0",
            "RAGTRACE_WEAVIATE_HOST": "127.0.0.1",
            "RAGTRACE_WEAVIATE_HTTP_PORT": str(p.weaviate_http),
            "RAGTRACE_WEAVIATE_GRPC_PORT": str(p.weaviate_grpc),
            "RAGTRACE_WEAVIATE_API_KEY": s.weaviate_api_key,
        }

    def components(self) -> list[Component]:
        return [self.kafka(), self.minio(), self.redis(), self.redis_exporter(), self.weaviate()]

    def metrics_addresses(self) -> dict[str, str]:
        """host:port of each server's metrics endpoint, by the Prometheus job that scrapes it."""
        p = self.ports
        return {
            "kafka": f"127.0.0.1:{p.kafka_metrics}",
            "minio": f"127.0.0.1:{p.minio}",
            "redis-exporter": f"127.0.0.1:{p.redis_exporter}",
        }

    def _dir(self, name: str) -> Path:
        path = self.state_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _binary(self, name: str, version_key: str) -> str:
        return str(self.cache / f"{name}-{self.versions[version_key]}" / name)

    # Kafka ------------------------------------------------------------------------------------------

    def kafka(self) -> Component:
        home = self._dir("kafka")
        config = home / "server.properties"
        libs = self.cache / f"kafka-{self.versions['KAFKA_VERSION']}" / "libs"
        java = str(Path(os.environ["JAVA_HOME"]) / "bin" / "java") if "JAVA_HOME" in os.environ else "java"
        agent = self.cache / f"jmx-exporter-{self.versions['JMX_EXPORTER_VERSION']}" / "jmx_prometheus_javaagent.jar"
        bootstrap = f"127.0.0.1:{self.ports.kafka}"

        def prepare() -> None:
            config.write_text(self._kafka_properties(home / "data"))
            if not (home / "data" / "meta.properties").exists():
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
                # "--cluster-id=…" in one word: a base64 id may start with "-", which the tool would read as a flag.
                _run_java(
                    java,
                    libs,
                    ["kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "--config", str(config)],
                )

        return Component(
            name="kafka",
            port=self.ports.kafka,
            argv=[
                java,
                *_JVM_FLAGS,
                f"-javaagent:{agent}=127.0.0.1:{self.ports.kafka_metrics}:{KAFKA_JMX_EXPORTER_CONFIG}",
                f"-Dlog4j2.configurationFile={LOCAL_INFRA / 'kafka' / 'log4j2.properties'}",
                "-cp",
                f"{libs}/*",
                "kafka.Kafka",
                str(config),
            ],
            ready=lambda: kafka_answers_metadata(bootstrap),
            prepare=prepare,
            start_timeout_s=90,
            installs=("kafka",),
        )

    def _kafka_properties(self, data_dir: Path) -> str:
        p = self.ports
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{p.kafka_controller}",
            "listeners": f"PLAINTEXT://127.0.0.1:{p.kafka},CONTROLLER://127.0.0.1:{p.kafka_controller}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{p.kafka}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(data_dir),
            # Topics are created by the application with explicit partitions, never implicitly.
            "auto.create.topics.enable": "false",
            # One broker: internal topics cannot be replicated, and need fewer partitions on a laptop.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        return "".join(f"{k}={v}\n" for k, v in settings.items())

    # MinIO ------------------------------------------------------------------------------------------

    def minio(self) -> Component:
        """MinIO, with the two Kafka notification targets the inbox worker subscribes the watched bucket to
        (ingest/settings.py, ingest/inbox.py). It starts after Kafka, whose inbox topic is created first (the
        broker creates none), so the immediate target has it from the first event."""
        base = f"http://127.0.0.1:{self.ports.minio}"
        kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{self.ports.kafka}")
        notify: dict[str, str] = {}
        for target in (INBOX_TARGET_IMMEDIATE, INBOX_TARGET_DURABLE):
            notify |= {
                f"MINIO_NOTIFY_KAFKA_ENABLE_{target}": "on",
                f"MINIO_NOTIFY_KAFKA_BROKERS_{target}": kafka.bootstrap_servers,
                f"MINIO_NOTIFY_KAFKA_TOPIC_{target}": kafka.inbox_topic,
            }
        notify[f"MINIO_NOTIFY_KAFKA_QUEUE_DIR_{INBOX_TARGET_DURABLE}"] = str(self._dir("minio-events"))
        return Component(
            name="minio",
            port=self.ports.minio,
            argv=[
                self._binary("minio", "MINIO_VERSION"),
                "server",
                "--quiet",
                "--address",
                f"127.0.0.1:{self.ports.minio}",
                "--console-address",
                f"127.0.0.1:{self.ports.minio_console}",
                str(self._dir("minio")),
            ],
            env={
                "MINIO_ROOT_USER": self.secrets.minio_access_key,
                "MINIO_ROOT_PASSWORD": self.secrets.minio_secret_key,
                "MINIO_UPDATE": "off",
                # Its metrics endpoint answers without a token, as Prometheus scrapes it in the cluster.
                "MINIO_PROMETHEUS_AUTH_TYPE": "public",
                **notify,
            },
            ready=lambda: httpx.get(f"{base}/minio/health/ready", timeout=1).status_code == 200,
            prepare=lambda: asyncio.run(ensure_topics(kafka, inbox_topics(kafka))),
            installs=("minio",),
        )

    # Redis ------------------------------------------------------------------------------------------

    def redis(self) -> Component:
        home = self._dir("redis")
        config = home / "redis.conf"
        password = self.secrets.redis_password

        def prepare() -> None:
            # The password goes in a private config file, not on the command line where `ps` shows it.
            config.touch(mode=0o600)
            config.write_text(
                f'bind 127.0.0.1\nport {self.ports.redis}\ndir {home}\nappendonly yes\nsave ""\n'
                f"requirepass {password}\nprotected-mode yes\ndaemonize no\n"
            )

        def ready() -> bool:
            client = redis.Redis(port=self.ports.redis, password=password, socket_timeout=1)
            with client:
                return bool(client.ping())

        return Component(
            name="redis",
            port=self.ports.redis,
            argv=[shutil.which("redis-server") or "redis-server", str(config)],
            ready=ready,
            prepare=prepare,
            installs=("redis",),
        )

    def redis_exporter(self) -> Component:
        """oliver006/redis_exporter against this Redis; the password travels in its environment, not in argv."""
        port = self.ports.redis_exporter
        return Component(
            name="redis-exporter",
            port=port,
            argv=[self._binary("redis_exporter", "REDIS_EXPORTER_VERSION"), "-web.listen-address", f"127.0.0.1:{port}"],
            env={"REDIS_ADDR": f"redis://127.0.0.1:{self.ports.redis}", "REDIS_PASSWORD": self.secrets.redis_password},
            ready=lambda: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200,
            installs=("redis-exporter",),
            deferrable=True,
        )

    # Weaviate ---------------------------------------------------------------------------------------

    def weaviate(self) -> Component:
        p = self.ports
        base = f"http://127.0.0.1:{p.weaviate_http}"
        return Component(
            name="weaviate",
            port=p.weaviate_http,
            argv=[
                self._binary("weaviate-server", "WEAVIATE_VERSION"),
                "--host",
                "127.0.0.1",
                "--port",
                str(p.weaviate_http),
                "--scheme",
                "http",
            ],
            env={
                "PERSISTENCE_DATA_PATH": str(self._dir("weaviate")),
                "DEFAULT_VECTORIZER_MODULE": "none",
                "ENABLE_MODULES": "",
                "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "false",
                "AUTHENTICATION_APIKEY_ENABLED": "true",
                "AUTHENTICATION_APIKEY_ALLOWED_KEYS": self.secrets.weaviate_api_key,
                "AUTHENTICATION_APIKEY_USERS": "ragtrace",
                "GRPC_PORT": str(p.weaviate_grpc),
                "CLUSTER_HOSTNAME": "node1",
                "CLUSTER_ADVERTISE_ADDR": "127.0.0.1",
                "CLUSTER_GOSSIP_BIND_PORT": str(p.weaviate_gossip),
                "CLUSTER_DATA_BIND_PORT": str(p.weaviate_data),
                "RAFT_PORT": str(p.weaviate_raft),
                "RAFT_INTERNAL_RPC_PORT": str(p.weaviate_raft_rpc),
                "RAFT_BOOTSTRAP_EXPECT": "1",
                "RAFT_JOIN": "node1",
                "GO_PROFILING_DISABLE": "true",
                "DISABLE_TELEMETRY": "true",
                "LOG_LEVEL": "info",
                "LOG_FORMAT": "text",
            },
            ready=lambda: httpx.get(f"{base}/v1/.well-known/ready", timeout=1).status_code == 200,
            start_timeout_s=90,
            installs=("weaviate",),
        )


# Small heap and quick start-up for a single-node broker on a laptop-sized machine.
_JVM_FLAGS = ["-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true"]


def _run_java(java: str, libs: Path, args: list[str]) -> None:
    subprocess.run([java, "-cp", f"{libs}/*", *args], check=True, capture_output=True)  # noqa: S603


def kafka_answers_metadata(bootstrap: str) -> bool:
    """True when the broker answers a real Metadata request and names a controller."""
    with _quiet("aiokafka"):  # refused connections while the broker starts are expected, not news
        return asyncio.run(controller_elected(bootstrap))


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
