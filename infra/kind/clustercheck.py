"""`make cluster-check`: each overlay applied to a real Kubernetes control plane on simulated nodes.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler (built by infra/local/install.sh at the version
of infra/kind/cluster.yaml's node image) run on 127.0.0.1 with a temporary data directory and certificates made
for the run. kwok registers nodes shaped like the Kind cluster: a tainted control plane and two workers sharing
the CPU and memory docs/kubernetes.md tells Kind users to give Docker; under the gpu overlay the second worker is a GPU
node as docs/kubernetes.md describes it. A small provisioner plays Kind's default storage class (`standard`, rancher's
local-path, WaitForFirstConsumer): a volume of the claimed size on the node the scheduler chose, refused when
the node's disk is full. The overlay is applied by infra/kind/apply.sh, the code `make cluster-start` runs, and
the check waits (bounded) until every Deployment is Available, StatefulSet and DaemonSet Ready, Job Complete,
Service has ready endpoints for each of its ports, HPA targets a workload that exists and no Pod is Pending;
otherwise it names each object that is not, with its conditions and the scheduler's or controllers' events.

Containers never run: kwok marks scheduled pods Running and Ready (and Job pods Succeeded). Images, container
starts and probes are not checked here.

Usage: python infra/kind/clustercheck.py [--overlay cpu|gpu ...] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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


def log(message: str) -> None:
    print(f"\033[1m[cluster-check]\033[0m {message}", file=sys.stderr, flush=True)


def binaries() -> dict[str, Path]:
    """Every program the check runs; a clear message when `make install` has not built them."""
    versions = pinned_versions()
    kubernetes = cache_dir() / f"kubernetes-{versions['KUBERNETES_VERSION']}"
    kwok = cache_dir() / f"kwok-{versions['KWOK_VERSION']}"
    found = {name: kubernetes / name for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")}
    found |= {"kubectl": kubernetes / "kubectl", "kwok": kwok / "kwok", "stages": kwok / "stage"}
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
        "metadata": {"name": shape.name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
        "spec": {"taints": taints},
        "status": {"capacity": resources, "allocatable": resources},
    }


# Certificates -----------------------------------------------------------------------------------------------


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _certificate(
    subject: x509.Name, key: rsa.RSAPrivateKey, issuer: x509.Name, signer: rsa.RSAPrivateKey, ca: bool
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )


def make_certificates(directory: Path) -> None:
    """A CA, the API server's serving certificate, an admin client certificate (system:masters) and the
    service-account signing key pair: made for this run only, deleted with its directory."""
    import ipaddress

    ca_key, ca_name = _key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ragtrace-cluster-check-ca")])
    ca = _certificate(ca_name, ca_key, ca_name, ca_key, ca=True).sign(ca_key, hashes.SHA256())
    server_key = _key()
    names = [x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")]
    addresses = [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "10.96.0.1")]
    server = (
        _certificate(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]), server_key, ca_name, ca_key, False
        )
        .add_extension(x509.SubjectAlternativeName([*names, *addresses]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    admin_key = _key()
    admin_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, "admin"),
        ]
    )
    admin = (
        _certificate(admin_name, admin_key, ca_name, ca_key, False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    for name, cert, key in (("ca", ca, ca_key), ("apiserver", server, server_key), ("admin", admin, admin_key)):
        (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(directory / f"{name}.key", key)
    service_accounts = _key()
    _write_key(directory / "sa.key", service_accounts)
    (directory / "sa.pub").write_bytes(
        service_accounts.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# The control plane ------------------------------------------------------------------------------------------


@dataclass
class ControlPlane:
    """etcd, the three control-plane programs and kwok on 127.0.0.1; `with` stops them all and deletes the
    temporary directory, whatever happened."""

    overlay: str
    cluster: str = "ragtrace"
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ragtrace-cluster-check-")))
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    url: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _provisioner: threading.Thread | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self, name: str, command: Sequence[str | Path]) -> None:
        out = (self.directory / f"{name}.log").open("wb")
        # Debian's etcd 3.4 cannot serve the watch-progress requests of client-go's streaming lists: the
        # clients use plain list and watch instead of retrying the stream.
        env = os.environ | {"KUBE_FEATURE_WatchListClient": "false"}
        self.processes.append((name, subprocess.Popen([str(c) for c in command], stdout=out, stderr=out, env=env)))  # noqa: S603

    def start(self) -> None:
        tools = binaries()
        certs = self.directory / "pki"
        certs.mkdir()
        make_certificates(certs)
        etcd, peer, api = free_port(), free_port(), free_port()
        self.url = f"https://127.0.0.1:{api}"
        self._write_kubeconfig(certs)
        self._run(
            "etcd",
            [
                tools["etcd"],
                *("--name", "check", "--data-dir", self.directory / "etcd"),
                *(
                    "--listen-client-urls",
                    f"http://127.0.0.1:{etcd}",
                    "--advertise-client-urls",
                    f"http://127.0.0.1:{etcd}",
                ),
                *("--listen-peer-urls", f"http://127.0.0.1:{peer}"),
                *("--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}"),
                *("--initial-cluster", f"check=http://127.0.0.1:{peer}"),
            ],
        )
        self._run(
            "kube-apiserver",
            [
                tools["kube-apiserver"],
                f"--etcd-servers=http://127.0.0.1:{etcd}",
                *("--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api}"),
                f"--cert-dir={self.directory / 'apiserver'}",
                f"--tls-cert-file={certs / 'apiserver.crt'}",
                f"--tls-private-key-file={certs / 'apiserver.key'}",
                f"--client-ca-file={certs / 'ca.crt'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={certs / 'sa.pub'}",
                f"--service-account-signing-key-file={certs / 'sa.key'}",
                # Kind's service range and authorization; the kubernetes Service's endpoint cannot be loopback.
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
        )
        self._wait_ready()
        common = [f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--profiling=false"]
        self._run(
            "kube-controller-manager",
            [
                tools["kube-controller-manager"],
                *common,
                f"--secure-port={free_port()}",
                "--bind-address=127.0.0.1",
                f"--service-account-private-key-file={certs / 'sa.key'}",
                f"--root-ca-file={certs / 'ca.crt'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                # Kind's pod range (node IPAM off: kwok gives pods their addresses).
                "--cluster-cidr=10.244.0.0/16",
            ],
        )
        self._run(
            "kube-scheduler",
            [tools["kube-scheduler"], *common, f"--secure-port={free_port()}", "--bind-address=127.0.0.1"],
        )
        stages = tools["stages"]
        self._run(
            "kwok",
            [
                tools["kwok"],
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                # Node leases (as kubelets renew them): without them the node controller marks nodes NotReady.
                "--node-lease-duration-seconds=40",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--server-address=127.0.0.1:{free_port()}",
                *(
                    f"--config={path}"
                    for part in ("node/fast", "node/heartbeat-with-lease", "pod/fast")
                    for path in sorted((stages / part).glob("*.yaml"))
                    if path.name != "kustomization.yaml"
                ),
            ],
        )
        for shape in node_shapes(self.overlay, self.cluster):
            self.request("POST", "/api/v1/nodes", node_object(shape))
        self.request("POST", "/apis/storage.k8s.io/v1/storageclasses", storage_class())
        self._provisioner = threading.Thread(target=self._provision, name="local-path", daemon=True)
        self._provisioner.start()
        self._wait_nodes_ready()

    def _write_kubeconfig(self, certs: Path) -> None:
        context = f"kind-{self.cluster}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": context, "cluster": {"server": self.url, "certificate-authority": str(certs / "ca.crt")}}
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate": str(certs / "admin.crt"),
                        "client-key": str(certs / "admin.key"),
                    },
                }
            ],
            "contexts": [{"name": context, "context": {"cluster": context, "user": "admin"}}],
            "current-context": context,
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self._ssl = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        self._ssl.load_cert_chain(str(certs / "admin.crt"), str(certs / "admin.key"))

    def request(self, method: str, path: str, body: Obj | None = None) -> Obj:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 (https to our own API server)
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, context=self._ssl, timeout=30) as response:  # noqa: S310
            answer: Obj = json.loads(response.read())
            return answer

    def items(self, path: str) -> list[Obj]:
        found: list[Obj] = self.request("GET", path)["items"]
        return found

    def _alive(self) -> None:
        for name, process in self.processes:
            if process.poll() is not None:
                tail = (self.directory / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._alive()
            try:
                with urllib.request.urlopen(self.url + "/readyz", context=self._ssl, timeout=5) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"kube-apiserver not ready after {timeout:.0f} s (log: {self.directory})")
            time.sleep(0.5)

    def _wait_nodes_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._alive()
            nodes = self.items("/api/v1/nodes")
            if nodes and all(_condition(n, "Ready") == "True" for n in nodes):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("kwok did not make the simulated nodes Ready")
            time.sleep(0.5)

    def _provision(self) -> None:
        """rancher's local-path provisioner, as Kind runs it: a PersistentVolume of the claimed size on the node
        the scheduler chose (WaitForFirstConsumer), bound to the claim; refused, with an event on the claim,
        when all the volumes together would exceed their share of Docker's disk."""
        while not self._stop.wait(0.5):
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, KeyError):
                self._provision_once()

    def _provision_once(self) -> None:
        budget = VOLUME_SHARE * DOCKER[self.overlay][2] * GIB
        used = sum(quantity(v["spec"]["capacity"]["storage"]) for v in self.items("/api/v1/persistentvolumes"))
        for claim in self.items("/api/v1/persistentvolumeclaims"):
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
                self._event(claim, "ProvisioningFailed", message)
                continue
            self.request("POST", "/api/v1/persistentvolumes", local_path_volume(claim, node))
            used += size

    def _event(self, claim: Obj, reason: str, message: str) -> None:
        meta = claim["metadata"]
        name = f"{meta['name']}.{reason.lower()}"
        with contextlib.suppress(urllib.error.HTTPError):  # already reported
            self.request(
                "POST",
                f"/api/v1/namespaces/{meta['namespace']}/events",
                {
                    "metadata": {"name": name, "namespace": meta["namespace"]},
                    "involvedObject": {
                        "kind": "PersistentVolumeClaim",
                        "namespace": meta["namespace"],
                        "name": meta["name"],
                        "uid": meta["uid"],
                    },
                    "reason": reason,
                    "message": message,
                    "type": "Warning",
                    "source": {"component": LOCAL_PATH},
                },
            )

    def stop(self) -> None:
        self._stop.set()
        if self._provisioner:
            self._provisioner.join(timeout=5)
        # Nothing here needs a graceful shutdown (the API server's takes many seconds): a short grace, then kill.
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for _, process in reversed(self.processes):
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        if os.environ.get("RAGTRACE_CLUSTER_CHECK_KEEP"):
            log(f"kept {self.directory} (logs, kubeconfig)")
        else:
            shutil.rmtree(self.directory, ignore_errors=True)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603
            [str(binaries()["kubectl"]), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def apply_overlay(self, overlay: str, kind_dir: Path = KIND) -> subprocess.CompletedProcess[str]:
        """infra/kind/apply.sh, as `make cluster-start` runs it, with this control plane's kubectl."""
        env = os.environ | {"PATH": f"{binaries()['kubectl'].parent}{os.pathsep}{os.environ['PATH']}"}
        return subprocess.run(  # noqa: S603
            [str(kind_dir / "apply.sh"), "apply", overlay, f"--kubeconfig={self.kubeconfig}"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=300,
        )


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

_PATHS = {
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
    "StatefulSet": "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}",
    "DaemonSet": "/apis/apps/v1/namespaces/{ns}/daemonsets/{name}",
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
    "Service": "/api/v1/namespaces/{ns}/services/{name}",
    "HorizontalPodAutoscaler": "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/{name}",
}


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


def _get(plane: ControlPlane, kind: str, namespace: str, name: str) -> Obj | None:
    try:
        return plane.request("GET", _PATHS[kind].format(ns=namespace, name=name))
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def _problem(plane: ControlPlane, obj: Obj) -> str | None:
    """Why this object of the overlay is not up yet (None when it is)."""
    kind, meta = obj["kind"], obj["metadata"]
    namespace, name = meta.get("namespace", "default"), meta["name"]
    live = _get(plane, kind, namespace, name)
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
        workers = [n for n in node_shapes(plane.overlay, plane.cluster) if not n.control_plane]
        if desired < len(workers) or status.get("numberReady", 0) < desired:
            return f"{status.get('numberReady', 0)}/{desired} ready, for {len(workers)} workers (tolerations?)"
    elif kind == "Job":
        if _condition(live, "Complete") != "True":
            return f"not complete; {_conditions(live) or 'no conditions'}"
    elif kind == "Service":
        return _service_problem(plane, live)
    elif kind == "HorizontalPodAutoscaler":
        target = spec["scaleTargetRef"]
        if _get(plane, target["kind"], namespace, target["name"]) is None:
            return f"its scaleTargetRef {target['kind']}/{target['name']} does not exist"
    return None


def _service_problem(plane: ControlPlane, service: Obj) -> str | None:
    if not service["spec"].get("selector"):
        return None
    namespace, name = service["metadata"]["namespace"], service["metadata"]["name"]
    selector = urllib.parse.quote(f"kubernetes.io/service-name={name}")
    slices = plane.items(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices?labelSelector={selector}")
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
    pods = _pods(plane, namespace, service["spec"]["selector"])
    return (
        f"no ready endpoints for port {', '.join(missing)}; its selector {service['spec']['selector']} "
        f"matches {len(pods)} pod(s)" + (f" whose containers' ports are {sorted(_port_names(pods))}" if pods else "")
    )


def _pods(plane: ControlPlane, namespace: str, selector: dict[str, str]) -> list[Obj]:
    query = urllib.parse.quote(",".join(f"{k}={v}" for k, v in selector.items()))
    return plane.items(f"/api/v1/namespaces/{namespace}/pods?labelSelector={query}")


def _port_names(pods: list[Obj]) -> set[str]:
    return {
        f"{port.get('name', '')}:{port['containerPort']}"
        for pod in pods
        for container in pod["spec"]["containers"]
        for port in container.get("ports", [])
    }


def _pending_pods(plane: ControlPlane, namespaces: set[str]) -> list[tuple[str, str, str, list[str]]]:
    """(namespace, name, why, its claims) of every Pending pod."""
    problems = []
    for namespace in sorted(namespaces):
        for pod in plane.items(f"/api/v1/namespaces/{namespace}/pods"):
            if pod["status"].get("phase") == "Pending":
                scheduled: Obj = next(
                    (c for c in pod["status"].get("conditions", []) if c["type"] == "PodScheduled"), {}
                )
                why = scheduled.get("message") or "not scheduled yet"
                claims = [
                    v["persistentVolumeClaim"]["claimName"]
                    for v in pod["spec"].get("volumes", [])
                    if "persistentVolumeClaim" in v
                ]
                problems.append((namespace, pod["metadata"]["name"], why, claims))
    return problems


# The HPAs' complaints that the metrics API is not served: true of every HPA here (no metrics-server runs).
NO_METRICS = ("FailedGetResourceMetric", "FailedComputeMetricsReplicas")


def _events(plane: ControlPlane, namespace: str, name: str, also: Sequence[str] = ()) -> list[str]:
    """Warnings about the object, what it owns (its ReplicaSets and pods: names that start with its own) and the
    objects named in `also` (a pod's claims)."""
    lines = []
    for event in plane.items(f"/api/v1/namespaces/{namespace}/events"):
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
    return [o for o in objects if o["kind"] in _PATHS]


def wait_until_up(plane: ControlPlane, objects: list[Obj], timeout: float) -> list[str]:
    """Poll until everything is up or the time is over; then what is not, each with its events."""
    namespaces = {o["metadata"]["namespace"] for o in checked(objects) if o["metadata"].get("namespace")}
    deadline = time.monotonic() + timeout
    while True:
        plane._alive()
        problems = {
            (o["kind"], o["metadata"].get("namespace", "default"), o["metadata"]["name"]): problem
            for o in checked(objects)
            if (problem := _problem(plane, o))
        }
        pending = _pending_pods(plane, namespaces)
        if not problems and not pending:
            return []
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    report = []
    for (kind, namespace, name), problem in sorted(problems.items()):
        report.append(f"{kind} {namespace}/{name}: {problem}")
        report.extend(_events(plane, namespace, name))
    for namespace, name, why, claims in pending:
        report.append(f"Pod {namespace}/{name}: Pending: {why}")
        for claim in claims:
            try:
                path = f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}"
                phase = plane.request("GET", path)["status"].get("phase", "Pending")
            except urllib.error.HTTPError as error:
                phase = f"cannot be read ({error.code})"
            report.append(f"    PersistentVolumeClaim/{claim}: {phase}")
        report.extend(_events(plane, namespace, name, claims))
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


def gpu_pods_on_gpu_nodes(plane: ControlPlane, expected: float) -> bool:
    """Every pod that asks for a GPU runs on a node that advertises them, as many as the overlay asks for."""
    gpu_nodes = {
        n["metadata"]["name"] for n in plane.items("/api/v1/nodes") if n["status"]["allocatable"].get(GPU_RESOURCE)
    }
    placed = {
        f"{p['metadata']['namespace']}/{p['metadata']['name']}": p["spec"].get("nodeName", "")
        for p in plane.items("/api/v1/pods")
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
    with ControlPlane(overlay) as plane:
        log(f"control plane up in {time.monotonic() - started:.0f} s; applying {overlay} with infra/kind/apply.sh")
        applied = plane.apply_overlay(overlay)
        if applied.returncode:
            log(f"FAIL {overlay}: kubectl apply failed:\n{applied.stderr}")
            return False
        report = wait_until_up(plane, objects, timeout)
        if report:
            log(f"FAIL {overlay}: not up after {timeout:.0f} s:\n" + "\n".join(report))
            return False
        if not gpu_pods_on_gpu_nodes(plane, resource_sums(objects, shapes)["limits"][GPU_RESOURCE]):
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
