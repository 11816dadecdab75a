"""`make cluster-check`: each overlay applied to a real Kubernetes control plane on simulated nodes.

kwokctl, kwok's own cluster manager (built by infra/local/install.sh with kwok), runs etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok's controller on 127.0.0.1 with its binary runtime: the control
plane infra/local/install.sh builds at the version of infra/kind/cluster.yaml's node image and Debian's etcd, with
kwokctl's own certificates, ports and stages, in a temporary directory. What is ragtrace's own stays here: nodes
shaped like the Kind cluster (a tainted control plane and two workers sharing the CPU and memory
docs/kubernetes.md tells Kind users to give Docker; under the gpu overlay the second worker is a GPU node as
docs/kubernetes.md describes it); a small provisioner that plays Kind's default storage class (`standard`,
rancher's local-path, WaitForFirstConsumer): a volume of the claimed size on the node the scheduler chose,
refused when the node's disk is full. The overlay is applied by infra/kind/apply.sh, the code `make
cluster-start` runs, and the check waits (bounded) until every Deployment is Available, StatefulSet and
DaemonSet Ready, Job Complete, Service has ready endpoints for each of its ports, HPA targets a workload that
exists and no Pod is Pending; otherwise it names each object that is not, with its conditions and the
scheduler's or controllers' events.

Containers never run: kwok marks scheduled pods Running and Ready (and Job pods Succeeded). Images, container
starts and probes are not checked here.

Usage: python infra/kind/clustercheck.py [--overlay cpu|gpu ...] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from ragtrace_tools.devstack.servers import cache_dir, pinned_versions

ROOT = Path(__file__).resolve().parents[2]
KIND = ROOT / "infra" / "kind"
OVERLAYS = ("cpu", "gpu")
Obj = dict[str, Any]

# What docs/kubernetes.md tells Kind users to give Docker, per overlay (CPUs, GiB of memory, GiB of disk, GPUs). The
# numbers there are these (tests/test_cluster_check.py holds them together); they come from the sums of
# requests this check prints.
DOCKER: dict[str, tuple[int, int, int, int]] = {"cpu": (6, 12, 80, 0), "gpu": (8, 28, 120, 3)}
# Kind's nodes share Docker's disk; the images (the ragtrace image with torch is several GB, loaded into every
# node, vLLM's about 10 GB) take about half of it, local-path volumes may take the other half.
VOLUME_SHARE = 0.5
# Kind's own control plane (API server, etcd, controllers, CoreDNS) lives on the tainted control-plane node:
# this much of Docker's share is its, the workers split the rest.
CONTROL_PLANE_SHARE = (1, 2)
# The label and taint of the GPU worker: the NVIDIA device plugin's resource, the label GPU operators set,
# and the taint GPU nodes commonly carry (the gpu overlay's GPU pods tolerate it; nothing else may land there).
GPU_RESOURCE = "nvidia.com/gpu"
GPU_LABEL = "nvidia.com/gpu.present"
STORAGE_CLASS = "standard"
LOCAL_PATH = "rancher.io/local-path"
GIB = 1024**3
# Kind's service range (kwokctl's default is 10.0.0.0/24).
SERVICE_RANGE = "10.96.0.0/16"


def log(message: str) -> None:
    print(f"\033[1m[cluster-check]\033[0m {message}", file=sys.stderr, flush=True)


def binaries() -> dict[str, Path]:
    """Every program the check runs; a clear message when `make install` has not built them."""
    versions = pinned_versions()
    kubernetes = cache_dir() / f"kubernetes-{versions['KUBERNETES_VERSION']}"
    kwok = cache_dir() / f"kwok-{versions['KWOK_VERSION']}"
    found = {
        name: kubernetes / name for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
    }
    found |= {name: kwok / name for name in ("kwok", "kwokctl")}
    found["etcd"] = Path(shutil.which("etcd") or "/usr/bin/etcd")
    missing = [str(path) for path in found.values() if not path.exists()]
    if missing:
        raise SystemExit(
            f"missing {', '.join(missing)}: run `make install` (infra/local/install.sh kubernetes etcd kwok)"
        )
    return found


# Quantities ------------------------------------------------------------------------------------------------

_SUFFIXES = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: str | int | float) -> float:
    text = str(value)
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * _SUFFIXES[suffix]
    return float(text)


# Nodes ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeShape:
    name: str
    cpu: float
    memory_gib: float
    disk_gib: float
    gpus: int = 0
    control_plane: bool = False


def node_shapes(overlay: str, cluster: str = "ragtrace") -> list[NodeShape]:
    """Kind's three nodes (its names), Docker's resources divided among them."""
    cpus, memory, disk, gpus = DOCKER[overlay]
    plane_cpu, plane_memory = CONTROL_PLANE_SHARE
    worker_cpu, worker_memory = (cpus - plane_cpu) / 2, (memory - plane_memory) / 2
    # Every Kind node sees all of Docker's disk (they share it).
    return [
        NodeShape(f"{cluster}-control-plane", plane_cpu, plane_memory, disk, control_plane=True),
        NodeShape(f"{cluster}-worker", worker_cpu, worker_memory, disk),
        NodeShape(f"{cluster}-worker2", worker_cpu, worker_memory, disk, gpus=gpus),
    ]


def node_object(shape: NodeShape) -> Obj:
    labels = {
        "kubernetes.io/hostname": shape.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
    }
    taints = []
    if shape.control_plane:
        labels["node-role.kubernetes.io/control-plane"] = ""
        taints.append({"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"})
    resources = {
        "cpu": f"{int(shape.cpu * 1000)}m",
        "memory": f"{int(shape.memory_gib * 1024)}Mi",
        "ephemeral-storage": f"{int(shape.disk_gib)}Gi",
        "pods": "110",
    }
    if shape.gpus:
        labels[GPU_LABEL] = "true"
        taints.append({"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"})
        resources[GPU_RESOURCE] = str(shape.gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": shape.name, "labels": labels},
        "spec": {"taints": taints},
        "status": {"capacity": resources, "allocatable": resources},
    }


# The cluster -------------------------------------------------------------------------------------------------


def kwokctl_configuration(tools: dict[str, Path]) -> Obj:
    """kwokctl's binary runtime with the locally built programs, on 127.0.0.1 only."""
    return {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "options": {
            "runtime": "binary",
            "bindAddress": "127.0.0.1",
            "etcdBinary": str(tools["etcd"]),
            "kubeApiserverBinary": str(tools["kube-apiserver"]),
            "kubeControllerManagerBinary": str(tools["kube-controller-manager"]),
            "kubeSchedulerBinary": str(tools["kube-scheduler"]),
            "kwokControllerBinary": str(tools["kwok"]),
        },
        "componentsPatches": [
            {"name": "kube-apiserver", "extraArgs": [{"key": "service-cluster-ip-range", "value": SERVICE_RANGE}]}
        ],
    }


@dataclass
class KwokCluster:
    """A kwokctl cluster with Kind's nodes for one overlay, in a temporary directory of its own (so clusters side
    by side share nothing); `with` deletes the cluster and the directory, whatever happened."""

    overlay: str
    cluster: str = "ragtrace"
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ragtrace-cluster-check-")))
    components: list[str] = field(default_factory=list)
    _provisioner: LocalPathProvisioner | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    def __enter__(self) -> KwokCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def kwokctl(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        # Debian's etcd 3.4 cannot serve the watch-progress requests of client-go's streaming lists: the
        # components (which inherit kwokctl's environment) use plain list and watch instead of retrying the stream.
        env = os.environ | {"KWOK_WORKDIR": str(self.directory), "KUBE_FEATURE_WatchListClient": "false"}
        return subprocess.run(  # noqa: S603
            [
                str(binaries()["kwokctl"]),
                f"--config={self.directory / 'kwokctl.yaml'}",
                f"--name={self.cluster}",
                *args,
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=timeout,
        )

    def start(self) -> None:
        (self.directory / "kwokctl.yaml").write_text(yaml.safe_dump(kwokctl_configuration(binaries())))
        created = self.kwokctl("create", "cluster", f"--kubeconfig={self.kubeconfig}", "--wait=90s")
        if created.returncode:
            raise RuntimeError(f"kwokctl create cluster failed:\n{created.stderr[-3000:]}")
        self.components = self.kwokctl("get", "components").stdout.split()
        nodes = [node_object(shape) for shape in node_shapes(self.overlay, self.cluster)]
        self.kubectl("apply", "-f", "-", stdin=as_list([*nodes, storage_class()]), check=True)
        self._provisioner = LocalPathProvisioner(self)
        ready = self.kubectl("wait", "--for=condition=Ready", "nodes", "--all", "--timeout=60s")
        if ready.returncode:
            raise RuntimeError(f"kwok did not make the simulated nodes Ready: {ready.stderr}")

    def processes(self) -> list[psutil.Process]:
        """The processes running a program of this cluster (kwokctl starts each from its directory's bin/)."""
        found = []
        for process in psutil.process_iter(["cmdline"]):
            command = process.info["cmdline"] or []
            if command and command[0].startswith(f"{self.directory}{os.sep}"):
                found.append(process)
        return found

    def alive(self) -> None:
        """Raises, naming the component and with the end of its log, when one has exited."""
        running = {Path(process.info["cmdline"][0]).name for process in self.processes()}
        for component in self.components:
            if component not in running:
                tail = self.kwokctl("logs", component).stdout[-3000:]
                raise RuntimeError(f"{component} exited:\n{tail}")

    def stop(self) -> None:
        if self._provisioner:
            self._provisioner.stop()
        keep = bool(os.environ.get("RAGTRACE_CLUSTER_CHECK_KEEP"))
        # Both kill every component; `delete` also removes kwokctl's directory of the cluster (its logs).
        self.kwokctl("stop" if keep else "delete", "cluster", *(() if keep else (f"--kubeconfig={self.kubeconfig}",)))
        if keep:
            log(f"kept {self.directory} (logs: KWOK_WORKDIR={self.directory} kwokctl --name={self.cluster} logs ...)")
        else:
            shutil.rmtree(self.directory, ignore_errors=True)

    def kubectl_command(self, *args: str) -> list[str]:
        return [str(binaries()["kubectl"]), f"--kubeconfig={self.kubeconfig}", *args]

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(  # noqa: S603
            self.kubectl_command(*args),
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and result.returncode:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def get(self, kinds: str, namespace: str | None = None) -> list[Obj]:
        """`kubectl get KINDS -o json`, in one namespace or all of them."""
        scope = ("--namespace", namespace) if namespace else ("--all-namespaces",)
        items: list[Obj] = json.loads(self.kubectl("get", kinds, *scope, "--output=json", check=True).stdout)["items"]
        return items

    def apply_overlay(self, overlay: str, kind_dir: Path = KIND) -> subprocess.CompletedProcess[str]:
        """infra/kind/apply.sh, as `make cluster-start` runs it, with this cluster's kubectl."""
        env = os.environ | {"PATH": f"{binaries()['kubectl'].parent}{os.pathsep}{os.environ['PATH']}"}
        return subprocess.run(  # noqa: S603
            [str(kind_dir / "apply.sh"), "apply", overlay, f"--kubeconfig={self.kubeconfig}"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=300,
        )


def as_list(objects: Sequence[Obj]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})


class LocalPathProvisioner:
    """rancher's local-path provisioner, as Kind runs it: a PersistentVolume of the claimed size on the node the
    scheduler chose (WaitForFirstConsumer), bound to the claim; refused, with an event on the claim, when all the
    volumes together would exceed their share of Docker's disk. Each change to a claim (a `kubectl get --watch`)
    wakes it."""

    def __init__(self, cluster: KwokCluster) -> None:
        self.cluster = cluster
        self.watch = subprocess.Popen(  # noqa: S603
            cluster.kubectl_command("get", "persistentvolumeclaims", "--all-namespaces", "--watch", "--output=name"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.thread = threading.Thread(target=self._run, name="local-path", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for _ in self.watch.stdout or ():
            # A control plane going away ends the watch; a failed pass is retried on the next change.
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.provision()

    def stop(self) -> None:
        self.watch.terminate()
        self.watch.wait(timeout=10)
        self.thread.join(timeout=10)

    def provision(self) -> None:
        budget = VOLUME_SHARE * DOCKER[self.cluster.overlay][2] * GIB
        found = self.cluster.get("persistentvolumes,persistentvolumeclaims")
        used = sum(quantity(v["spec"]["capacity"]["storage"]) for v in found if v["kind"] == "PersistentVolume")
        for claim in (c for c in found if c["kind"] == "PersistentVolumeClaim"):
            meta, spec = claim["metadata"], claim["spec"]
            node = meta.get("annotations", {}).get("volume.kubernetes.io/selected-node")
            if spec.get("storageClassName") != STORAGE_CLASS or spec.get("volumeName") or not node:
                continue
            size = quantity(spec["resources"]["requests"]["storage"])
            if used + size > budget:
                message = (
                    f"claim {meta['namespace']}/{meta['name']} asks for {size / GIB:.1f} GiB but the volumes have "
                    f"{(budget - used) / GIB:.1f} GiB left of their {budget / GIB:.0f} GiB share of Docker's disk"
                )
                # Refused again at each change of the claim: the first event stays (AlreadyExists after it).
                self.cluster.kubectl("create", "-f", "-", stdin=json.dumps(refusal(claim, message)))
                continue
            # A volume already made for the claim (its name is the claim's uid) is refused as AlreadyExists.
            self.cluster.kubectl("create", "-f", "-", stdin=json.dumps(local_path_volume(claim, node)))
            used += size


def refusal(claim: Obj, message: str) -> Obj:
    meta = claim["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.provisioningfailed", "namespace": meta["namespace"]},
        "involvedObject": {
            "kind": "PersistentVolumeClaim",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
        },
        "reason": "ProvisioningFailed",
        "message": message,
        "type": "Warning",
        "source": {"component": LOCAL_PATH},
    }


def storage_class() -> Obj:
    """Kind's default StorageClass, as Kind installs it."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": LOCAL_PATH,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    }


def local_path_volume(claim: Obj, node: str) -> Obj:
    meta, spec = claim["metadata"], claim["spec"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{meta['uid']}",
            "annotations": {"pv.kubernetes.io/provisioned-by": LOCAL_PATH, "ragtrace.dev/node": node},
        },
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec["accessModes"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "volumeMode": spec.get("volumeMode", "Filesystem"),
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "hostPath": {"path": f"/var/local-path-provisioner/pvc-{meta['uid']}", "type": "DirectoryOrCreate"},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}
                    ]
                }
            },
        },
    }


# What "up" means ---------------------------------------------------------------------------------------------

CHECKED = ("Deployment", "StatefulSet", "DaemonSet", "Job", "Service", "HorizontalPodAutoscaler")
# One `kubectl get` of everything the checks read.
SNAPSHOT = "deployments,statefulsets,daemonsets,jobs,services,horizontalpodautoscalers,endpointslices,pods"


@dataclass
class Snapshot:
    """The cluster's workloads, Services, HPAs, EndpointSlices and pods at one moment."""

    objects: dict[tuple[str, str, str], Obj]
    slices: list[Obj]
    pods: list[Obj]

    @classmethod
    def of(cls, cluster: KwokCluster) -> Snapshot:
        items = cluster.get(SNAPSHOT)
        return cls(
            objects={(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in items},
            slices=[o for o in items if o["kind"] == "EndpointSlice"],
            pods=[o for o in items if o["kind"] == "Pod"],
        )

    def pods_matching(self, namespace: str, selector: dict[str, str]) -> list[Obj]:
        return [
            p
            for p in self.pods
            if p["metadata"]["namespace"] == namespace
            and selector.items() <= (p["metadata"].get("labels") or {}).items()
        ]


def _condition(obj: Obj, kind: str) -> str:
    for condition in obj.get("status", {}).get("conditions", []) or []:
        if condition["type"] == kind:
            status: str = condition["status"]
            return status
    return "Unknown"


def _conditions(obj: Obj) -> str:
    return "; ".join(
        f"{c['type']}={c['status']}" + (f" ({c.get('reason', '')}: {c['message']})" if c.get("message") else "")
        for c in obj.get("status", {}).get("conditions", []) or []
    )


def _problem(cluster: KwokCluster, now: Snapshot, obj: Obj) -> str | None:
    """Why this object of the overlay is not up yet (None when it is)."""
    kind, meta = obj["kind"], obj["metadata"]
    namespace, name = meta.get("namespace", "default"), meta["name"]
    live = now.objects.get((kind, namespace, name))
    if live is None:
        return "does not exist"
    status, spec = live.get("status", {}), live["spec"]
    if kind == "Deployment":
        if _condition(live, "Available") != "True" or status.get("availableReplicas", 0) < spec.get("replicas", 1):
            return f"{status.get('availableReplicas', 0)}/{spec.get('replicas', 1)} available; {_conditions(live)}"
    elif kind == "StatefulSet":
        if status.get("readyReplicas", 0) < spec.get("replicas", 1):
            return f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)} ready"
    elif kind == "DaemonSet":
        desired = status.get("desiredNumberScheduled", 0)
        workers = [n for n in node_shapes(cluster.overlay, cluster.cluster) if not n.control_plane]
        if desired < len(workers) or status.get("numberReady", 0) < desired:
            return f"{status.get('numberReady', 0)}/{desired} ready, for {len(workers)} workers (tolerations?)"
    elif kind == "Job":
        if _condition(live, "Complete") != "True":
            return f"not complete; {_conditions(live) or 'no conditions'}"
    elif kind == "Service":
        return _service_problem(now, live)
    elif kind == "HorizontalPodAutoscaler":
        target = spec["scaleTargetRef"]
        if (target["kind"], namespace, target["name"]) not in now.objects:
            return f"its scaleTargetRef {target['kind']}/{target['name']} does not exist"
    return None


def _service_problem(now: Snapshot, service: Obj) -> str | None:
    if not service["spec"].get("selector"):
        return None
    namespace, name = service["metadata"]["namespace"], service["metadata"]["name"]
    slices = [
        s
        for s in now.slices
        if s["metadata"]["namespace"] == namespace
        and (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == name
    ]
    ready = {
        port.get("name", ""): sum(
            1 for e in s.get("endpoints") or [] if e.get("conditions", {}).get("ready") and e.get("addresses")
        )
        for s in slices
        for port in s.get("ports") or []
    }
    missing = [
        f"{port.get('name', '')}({port.get('targetPort', port['port'])})"
        for port in service["spec"]["ports"]
        if not ready.get(port.get("name", ""), 0)
    ]
    if not missing:
        return None
    pods = now.pods_matching(namespace, service["spec"]["selector"])
    return (
        f"no ready endpoints for port {', '.join(missing)}; its selector {service['spec']['selector']} "
        f"matches {len(pods)} pod(s)" + (f" whose containers' ports are {sorted(_port_names(pods))}" if pods else "")
    )


def _port_names(pods: list[Obj]) -> set[str]:
    return {
        f"{port.get('name', '')}:{port['containerPort']}"
        for pod in pods
        for container in pod["spec"]["containers"]
        for port in container.get("ports", [])
    }


def _pending_pods(now: Snapshot, namespaces: set[str]) -> list[tuple[str, str, str, list[str]]]:
    """(namespace, name, why, its claims) of every Pending pod."""
    problems = []
    for pod in now.pods:
        namespace = pod["metadata"]["namespace"]
        if namespace in namespaces and pod["status"].get("phase") == "Pending":
            scheduled: Obj = next((c for c in pod["status"].get("conditions", []) if c["type"] == "PodScheduled"), {})
            why = scheduled.get("message") or "not scheduled yet"
            claims = [
                v["persistentVolumeClaim"]["claimName"]
                for v in pod["spec"].get("volumes", [])
                if "persistentVolumeClaim" in v
            ]
            problems.append((namespace, pod["metadata"]["name"], why, claims))
    return sorted(problems)


# The HPAs' complaints that the metrics API is not served: true of every HPA here (no metrics-server runs).
NO_METRICS = ("FailedGetResourceMetric", "FailedComputeMetricsReplicas")


def _events(events: list[Obj], name: str, also: Sequence[str] = ()) -> list[str]:
    """Warnings about the object, what it owns (its ReplicaSets and pods: names that start with its own) and the
    objects named in `also` (a pod's claims)."""
    lines = []
    for event in events:
        involved = event["involvedObject"].get("name", "")
        if event.get("reason") in NO_METRICS:
            continue
        if event.get("type") == "Warning" and (involved in (name, *also) or involved.startswith(f"{name}-")):
            source = event.get("source", {}).get("component") or event.get("reportingComponent", "")
            lines.append(
                f"    {event['involvedObject']['kind']}/{involved}: {event['reason']} ({source}): {event['message']}"
            )
    return sorted(set(lines))


def checked(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in CHECKED]


def wait_until_up(cluster: KwokCluster, objects: list[Obj], timeout: float) -> list[str]:
    """Look every second until everything is up or the time is over; then what is not, each with its events."""
    namespaces = {o["metadata"]["namespace"] for o in checked(objects) if o["metadata"].get("namespace")}

    def look() -> tuple[dict[tuple[str, str, str], str], list[tuple[str, str, str, list[str]]]]:
        cluster.alive()
        now = Snapshot.of(cluster)
        problems = {
            (o["kind"], o["metadata"].get("namespace", "default"), o["metadata"]["name"]): problem
            for o in checked(objects)
            if (problem := _problem(cluster, now, o))
        }
        return problems, _pending_pods(now, namespaces)

    problems, pending = Retrying(
        retry=retry_if_result(lambda seen: bool(seen[0] or seen[1])),
        stop=stop_after_delay(timeout),
        wait=wait_fixed(1),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else ({}, []),
    )(look)
    if not problems and not pending:
        return []
    events = {namespace: cluster.get("events", namespace) for namespace in namespaces | {"default"}}
    report = []
    for (kind, namespace, name), problem in sorted(problems.items()):
        report.append(f"{kind} {namespace}/{name}: {problem}")
        report.extend(_events(events[namespace], name))
    for namespace, name, why, claims in pending:
        report.append(f"Pod {namespace}/{name}: Pending: {why}")
        phases = {c["metadata"]["name"]: c["status"].get("phase") for c in cluster.get("pvc", namespace)}
        report.extend(f"    PersistentVolumeClaim/{claim}: {phases.get(claim) or 'not created'}" for claim in claims)
        report.extend(_events(events[namespace], name, claims))
    return report


# Sums of requests ------------------------------------------------------------------------------------------


def pod_count(obj: Obj, nodes: list[NodeShape]) -> int:
    """Pods of a workload at its starting size (a DaemonSet: one per node it tolerates, the workers here)."""
    if obj["kind"] == "DaemonSet":
        tolerated = {t.get("key") for t in obj["spec"]["template"]["spec"].get("tolerations", [])}
        return sum(
            1
            for n in nodes
            if (not n.control_plane or "node-role.kubernetes.io/control-plane" in tolerated)
            and (not n.gpus or GPU_RESOURCE in tolerated)
        )
    if obj["kind"] == "Job":
        return int(obj["spec"].get("parallelism", 1))
    return int(obj["spec"].get("replicas", 1))


def resource_sums(objects: list[Obj], nodes: list[NodeShape]) -> dict[str, dict[str, float]]:
    """CPU (cores), memory (GiB) and GPUs, requested and limited, over every pod the overlay starts with."""
    sums = {bound: {"cpu": 0.0, "memory": 0.0, GPU_RESOURCE: 0.0} for bound in ("requests", "limits")}
    for obj in objects:
        if obj["kind"] not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            continue
        count = pod_count(obj, nodes)
        for container in obj["spec"]["template"]["spec"]["containers"]:
            for bound, values in sums.items():
                given = container.get("resources", {}).get(bound, {})
                values["cpu"] += count * quantity(given.get("cpu", 0))
                values["memory"] += count * quantity(given.get("memory", 0)) / GIB
                values[GPU_RESOURCE] += count * quantity(given.get(GPU_RESOURCE, 0))
    return sums


def describe_sums(overlay: str, sums: dict[str, dict[str, float]]) -> str:
    request, limit = sums["requests"], sums["limits"]
    # GPUs are given as limits only (an extended resource's request is its limit).
    gpus = f", {limit[GPU_RESOURCE]:.0f} GPUs" if limit[GPU_RESOURCE] else ""
    return (
        f"overlay {overlay}: requests {request['cpu']:.2f} CPU, {request['memory']:.1f} GiB{gpus}; "
        f"limits {limit['cpu']:.2f} CPU, {limit['memory']:.1f} GiB"
    )


def gpu_pods_on_gpu_nodes(cluster: KwokCluster, expected: float) -> bool:
    """Every pod that asks for a GPU runs on a node that advertises them, as many as the overlay asks for."""
    gpu_nodes = {n["metadata"]["name"] for n in cluster.get("nodes") if n["status"]["allocatable"].get(GPU_RESOURCE)}
    placed = {
        f"{p['metadata']['namespace']}/{p['metadata']['name']}": p["spec"].get("nodeName", "")
        for p in cluster.get("pods")
        for c in p["spec"]["containers"]
        if c.get("resources", {}).get("limits", {}).get(GPU_RESOURCE)
    }
    if placed:
        log("GPU pods: " + ", ".join(f"{pod} on {node}" for pod, node in sorted(placed.items())))
    wrong = {pod: node for pod, node in placed.items() if node not in gpu_nodes}
    if wrong or len(placed) != expected:
        log(f"FAIL: {len(placed)} GPU pods for {expected:.0f} GPUs asked; not on a GPU node: {wrong}")
        return False
    return True


def render(overlay: str, kind_dir: Path = KIND) -> list[Obj]:
    result = subprocess.run(  # noqa: S603
        [str(kind_dir / "apply.sh"), "render", overlay], capture_output=True, text=True, check=False, timeout=120
    )
    if result.returncode:
        raise RuntimeError(f"rendering {overlay} failed:\n{result.stderr}")
    return [o for o in yaml.safe_load_all(result.stdout) if o]


def check_overlay(overlay: str, timeout: float) -> bool:
    objects = render(overlay)
    shapes = node_shapes(overlay)
    log(describe_sums(overlay, resource_sums(objects, shapes)))
    log(
        "simulated nodes: "
        + ", ".join(
            f"{s.name} {s.cpu:g} CPU {s.memory_gib:g} GiB" + (f" {s.gpus} GPU" if s.gpus else "") for s in shapes
        )
    )
    started = time.monotonic()
    with KwokCluster(overlay) as cluster:
        log(f"control plane up in {time.monotonic() - started:.0f} s; applying {overlay} with infra/kind/apply.sh")
        applied = cluster.apply_overlay(overlay)
        if applied.returncode:
            log(f"FAIL {overlay}: kubectl apply failed:\n{applied.stderr}")
            return False
        report = wait_until_up(cluster, objects, timeout)
        if report:
            log(f"FAIL {overlay}: not up after {timeout:.0f} s:\n" + "\n".join(report))
            return False
        if not gpu_pods_on_gpu_nodes(cluster, resource_sums(objects, shapes)["limits"][GPU_RESOURCE]):
            return False
        log(f"PASS {overlay}: {len(checked(objects))} objects up in {time.monotonic() - started:.0f} s")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--overlay", action="append", choices=OVERLAYS, help="default: every overlay")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for everything to be up")
    arguments = parser.parse_args(argv)
    results = [check_overlay(overlay, arguments.timeout) for overlay in arguments.overlay or OVERLAYS]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
