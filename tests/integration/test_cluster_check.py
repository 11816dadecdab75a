"""`make cluster-check` in make test: each overlay applied by infra/kind/apply.sh to a real control plane (etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, run by kwokctl) on kwok's simulated nodes comes up;
broken copies of its objects (a selector, a Service's target port, a claim's size, a request) fail, naming the
object."""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Iterator

import psutil
import pytest

from infra.kind import clustercheck
from infra.kind.clustercheck import GPU_RESOURCE, KwokCluster, Obj, as_list
from tests.metrics import ROOT
from tests.pipeline import wait_until

pytestmark = pytest.mark.timeout(600)
UP_WITHIN = 150  # seconds; the cpu overlay is up in about 10 s on 2 busy cores


@pytest.fixture(scope="module")
def cpu_objects() -> list[Obj]:
    return clustercheck.render("cpu")


@pytest.fixture(scope="module")
def cpu_plane(cpu_objects: list[Obj]) -> Iterator[KwokCluster]:
    """One cluster for the cpu overlay, stopped (each of its processes, and its directory gone) at the end."""
    with KwokCluster("cpu") as cluster:
        started = cluster.processes()
        assert {p.name() for p in started} >= {"etcd", "kube-apiserver", "kube-scheduler"}, started
        yield cluster
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not alive and not cluster.directory.exists(), "everything stopped and removed"


def test_the_cpu_overlay_comes_up_on_the_nodes_the_readme_gives_kind(
    cpu_plane: KwokCluster, cpu_objects: list[Obj]
) -> None:
    applied = cpu_plane.apply_overlay("cpu")
    assert applied.returncode == 0, applied.stderr
    assert clustercheck.wait_until_up(cpu_plane, cpu_objects, UP_WITHIN) == []
    nodes = {n["metadata"]["name"]: n for n in cpu_plane.get("nodes")}
    assert len(nodes) == 3
    assert all(n["status"]["allocatable"].get(GPU_RESOURCE) is None for n in nodes.values())
    pods = cpu_plane.get("pods")
    assert all(not p["spec"]["nodeName"].endswith("control-plane") for p in pods), "the control plane is tainted"
    bound = cpu_plane.get("persistentvolumeclaims")
    assert bound and all(c["status"]["phase"] == "Bound" for c in bound), "every claim has its local-path volume"


def test_the_gpu_overlay_puts_vllm_and_gpu_embedding_on_the_gpu_node() -> None:
    assert clustercheck.main(["--overlay", "gpu", "--timeout", str(UP_WITHIN)]) == 0


def test_the_docs_give_kind_what_the_check_simulates() -> None:
    readme = " ".join((ROOT / "docs" / "kubernetes.md").read_text().split())
    for overlay, (cpus, memory, disk, gpus) in clustercheck.DOCKER.items():
        sums = clustercheck.resource_sums(clustercheck.render(overlay), clustercheck.node_shapes(overlay))
        assert sums["requests"]["cpu"] < cpus - 1 and sums["requests"]["memory"] < memory - 2, overlay
        assert f"{cpus} CPUs, {memory} GiB of memory and {disk} GiB of disk" in readme, overlay
        stated = f"requests {sums['requests']['cpu']:.1f} CPU and {sums['requests']['memory']:.1f} GiB"
        assert stated in readme, f"docs/kubernetes.md: the {overlay} overlay {stated}"
        if gpus:
            assert sums["limits"][GPU_RESOURCE] == gpus and f"{gpus} GPUs" in readme


# Broken copies --------------------------------------------------------------------------------------------


def _find(objects: list[Obj], kind: str, name: str) -> Obj:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def _template(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def _break_selector(service: Obj, _: Obj) -> None:
    service["spec"]["selector"]["app.kubernetes.io/name"] += "-typo"


def _break_port_name(service: Obj, _: Obj) -> None:
    service["spec"]["ports"][0]["targetPort"] = "no-such-port"


def _break_claim_size(_: Obj, workload: Obj) -> None:
    workload["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] = "500Gi"


def _break_request(_: Obj, workload: Obj) -> None:
    _template(workload)["containers"][0]["resources"] = {"requests": {"cpu": "16", "memory": "1Gi"}}


def _unbroken(_: Obj, __: Obj) -> None:
    pass


# (namespace, workload, service, the breakage, what the report must say about which object)
BREAKAGES: list[tuple[str, tuple[str, str], str, Callable[[Obj, Obj], None], str]] = [
    ("broken-none", ("Deployment", "redis"), "redis", _unbroken, ""),
    ("broken-selector", ("Deployment", "redis"), "redis", _break_selector, r"Service broken-selector/redis: no ready"),
    ("broken-port", ("Deployment", "redis"), "redis", _break_port_name, r"Service broken-port/redis: no ready .*redis"),
    ("broken-claim", ("StatefulSet", "kafka"), "kafka", _break_claim_size, r"PersistentVolumeClaim/\S*kafka-0: Prov"),
    (
        "broken-request",
        ("Deployment", "redis"),
        "redis",
        _break_request,
        r"Pod broken-request/redis-\S+: Pending: .*Insufficient cpu",
    ),
]


def _copy_into(namespace: str, objects: list[Obj], wanted: list[Obj]) -> list[Obj]:
    """The objects, and the ServiceAccounts their pods run as, moved into their own namespace."""
    accounts = {_template(o).get("serviceAccountName") for o in wanted if "template" in o["spec"]}
    wanted = wanted + [o for o in objects if o["kind"] == "ServiceAccount" and o["metadata"]["name"] in accounts]
    moved = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}]
    for obj in wanted:
        obj = copy.deepcopy(obj)
        obj["metadata"]["namespace"] = namespace
        moved.append(obj)
    return moved


@pytest.fixture(scope="module")
def empty_plane() -> Iterator[KwokCluster]:
    """A second cluster with the same nodes, empty: the broken copies need room the overlay has taken."""
    with KwokCluster("cpu") as cluster:
        yield cluster


def test_broken_objects_fail_naming_the_object(empty_plane: KwokCluster, cpu_objects: list[Obj]) -> None:
    """Each breakage in a namespace of its own, all applied at once: the unbroken copy comes up (so each failure
    is the breakage's), and each broken one is reported naming what is wrong."""
    copies = {}
    for namespace, (kind, name), service, breakage, _ in BREAKAGES:
        workload, svc = (
            copy.deepcopy(_find(cpu_objects, kind, name)),
            copy.deepcopy(_find(cpu_objects, "Service", service)),
        )
        breakage(svc, workload)
        copies[namespace] = _copy_into(namespace, cpu_objects, [workload, svc])
    for objects in copies.values():
        applied = empty_plane.kubectl("apply", "-f", "-", stdin=as_list(objects))
        assert applied.returncode == 0, applied.stderr
    for namespace, _, _, _, expected in BREAKAGES:
        if not expected:  # the unbroken copy comes up: each failure below is its breakage's
            report = "\n".join(clustercheck.wait_until_up(empty_plane, copies[namespace][1:], timeout=120))
            assert report == "", report
            continue
        report = wait_until(
            functools.partial(_reported, empty_plane, copies[namespace][1:], expected),
            60,
            1,
            f"{namespace} reported as {expected!r}",
        )
        print(f"--- {namespace}\n{report}")


def _reported(cluster: KwokCluster, objects: list[Obj], expected: str) -> str:
    """The check's report of the objects, once it names what is expected ("" until then)."""
    report = "\n".join(clustercheck.wait_until_up(cluster, objects, timeout=0))
    return report if re.search(expected, report) else ""


def test_a_selector_that_does_not_match_its_template_is_refused_naming_the_deployment(
    empty_plane: KwokCluster, cpu_objects: list[Obj]
) -> None:
    deployment = copy.deepcopy(_find(cpu_objects, "Deployment", "redis"))
    deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "redis-typo"
    applied = empty_plane.kubectl("apply", "-f", "-", stdin=as_list(_copy_into("broken-template", [], [deployment])))
    assert applied.returncode != 0
    assert 'The Deployment "redis" is invalid' in applied.stderr and "selector" in applied.stderr, applied.stderr


def test_a_component_that_exits_stops_the_check_naming_it() -> None:
    with KwokCluster("cpu") as cluster:
        [scheduler] = [p for p in cluster.processes() if p.name() == "kube-scheduler"]
        scheduler.kill()
        scheduler.wait(timeout=10)
        with pytest.raises(RuntimeError, match=r"^kube-scheduler exited"):
            clustercheck.wait_until_up(cluster, [], timeout=60)
