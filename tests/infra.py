"""Real Kafka, MinIO, Redis and Weaviate for the tests, from the first source that applies:

1. servers named by environment variables (RAGTRACE_KAFKA_BOOTSTRAP_SERVERS set: the RAGTRACE_* settings
   of ragtrace.settings are used as they are), or RAGTRACE_TEST_INFRA=env;
2. testcontainers, when a Docker engine answers (or RAGTRACE_TEST_INFRA=docker);
3. the project's local binaries (infra/local/install.sh) on free ports with a temporary state directory,
   stopped at the end of the session (or RAGTRACE_TEST_INFRA=local).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ragtrace.settings import KafkaSettings, MinioSettings, RedisSettings, WeaviateSettings
from ragtrace_tools.devstack import LocalStack, StackPorts

SettingsT = TypeVar("SettingsT")

_ENV_NAMES = (
    "RAGTRACE_KAFKA_BOOTSTRAP_SERVERS",
    "RAGTRACE_MINIO_ENDPOINT",
    "RAGTRACE_MINIO_ACCESS_KEY",
    "RAGTRACE_MINIO_SECRET_KEY",
    "RAGTRACE_REDIS_URL",
    "RAGTRACE_WEAVIATE_HOST",
    "RAGTRACE_WEAVIATE_HTTP_PORT",
    "RAGTRACE_WEAVIATE_GRPC_PORT",
    "RAGTRACE_WEAVIATE_API_KEY",
)


@dataclass(frozen=True)
class Infra:
    """Where the real servers are. `env` is what a ragtrace process needs; `stack` is set when we run them."""

    source: str
    env: dict[str, str]
    stack: LocalStack | None = None

    @property
    def notifies_kafka(self) -> bool:
        """Does MinIO publish bucket events to Kafka (the inbox worker's)? Those the local stack starts do, as does
        `make up`'s; testcontainers' MinIO has no Kafka target."""
        return self.source != "docker"

    def _read(self, settings_type: type[SettingsT]) -> SettingsT:
        with _environment(self.env):
            return settings_type()

    @property
    def kafka(self) -> KafkaSettings:
        return self._read(KafkaSettings)

    @property
    def minio(self) -> MinioSettings:
        return self._read(MinioSettings)

    @property
    def redis(self) -> RedisSettings:
        return self._read(RedisSettings)

    @property
    def weaviate(self) -> WeaviateSettings:
        return self._read(WeaviateSettings)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _docker_answers() -> bool:
    try:
        import docker  # installed with testcontainers

        docker.from_env(timeout=2).ping()
    except Exception:  # no engine, no socket, no permission: all mean "not this path"
        return False
    return True


def _choose_source() -> str:
    forced = os.environ.get("RAGTRACE_TEST_INFRA")
    if forced:
        return forced
    if os.environ.get("RAGTRACE_KAFKA_BOOTSTRAP_SERVERS"):
        return "env"
    return "docker" if _docker_answers() else "local"


@contextlib.contextmanager
def provide_infra(state_dir: Path) -> Iterator[Infra]:
    source = _choose_source()
    if source == "env":
        yield Infra("env", {name: os.environ[name] for name in _ENV_NAMES if name in os.environ})
    elif source == "docker":
        with _containers() as env:
            yield Infra("docker", env)
    elif source == "local":
        stack = LocalStack(state_dir, StackPorts.free(), with_services=False)
        try:
            stack.up()
            yield Infra("local", stack.client_env(), stack)
        finally:
            stack.down()
    else:
        raise ValueError(f"RAGTRACE_TEST_INFRA={source!r}: expected env, docker or local")


@contextlib.contextmanager
def _containers() -> Iterator[dict[str, str]]:
    """The same servers as containers, at the versions pinned in infra/local/versions.env."""
    import secrets

    from testcontainers.kafka import KafkaContainer
    from testcontainers.minio import MinioContainer
    from testcontainers.redis import RedisContainer
    from testcontainers.weaviate import WeaviateContainer

    from ragtrace_tools.devstack.servers import pinned_versions

    versions = pinned_versions()
    password, api_key = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    weaviate_env = {
        "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "false",
        "AUTHENTICATION_APIKEY_ENABLED": "true",
        "AUTHENTICATION_APIKEY_ALLOWED_KEYS": api_key,
        "AUTHENTICATION_APIKEY_USERS": "ragtrace",
    }
    with (
        KafkaContainer(f"apache/kafka:{versions['KAFKA_VERSION']}").with_kraft() as kafka,
        MinioContainer(access_key="ragtrace", secret_key=password) as minio,
        RedisContainer(password=password) as redis_container,
        WeaviateContainer(
            f"cr.weaviate.io/semitechnologies/weaviate:{versions['WEAVIATE_VERSION'].lstrip('v')}",
            env_vars=weaviate_env,
        ) as weaviate,
    ):
        minio_config = minio.get_config()
        yield {
            "RAGTRACE_KAFKA_BOOTSTRAP_SERVERS": kafka.get_bootstrap_server(),
            "RAGTRACE_MINIO_ENDPOINT": minio_config["endpoint"],
            "RAGTRACE_MINIO_ACCESS_KEY": minio_config["access_key"],
            "RAGTRACE_MINIO_SECRET_KEY": minio_config["secret_key"],
            "RAGTRACE_REDIS_URL": (
                f"redis://:{password}@{redis_container.get_container_host_ip()}:{redis_container.get_exposed_port(6379)}/0"
            ),
            "RAGTRACE_WEAVIATE_HOST": weaviate.get_container_host_ip(),
            "RAGTRACE_WEAVIATE_HTTP_PORT": str(weaviate.get_exposed_port(8080)),
            "RAGTRACE_WEAVIATE_GRPC_PORT": str(weaviate.get_exposed_port(50051)),
            "RAGTRACE_WEAVIATE_API_KEY": api_key,
        }
