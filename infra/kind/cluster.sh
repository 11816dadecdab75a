#!/usr/bin/env bash
# ragtrace on a local Kind cluster (needs Docker, kind and kubectl):
#   cluster.sh start    create the cluster if missing, build and load the images, apply the overlay, wait for
#                       every rollout, print the endpoints (idempotent: run it again after a change)
#   cluster.sh stop     delete the cluster (its volumes go with it)
#   cluster.sh status   nodes, pods, autoscalers
#   cluster.sh logs S   the logs of service S (e.g. embedding-worker), following
# OVERLAY=cpu|gpu chooses infra/kind/overlays/<OVERLAY> (default cpu); RAGTRACE_KIND_CLUSTER the cluster name.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cluster="${RAGTRACE_KIND_CLUSTER:-ragtrace}"
overlay="${OVERLAY:-cpu}"
context="kind-$cluster"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml")"
# The gpu overlay runs the image built with faiss-gpu (Dockerfile, FAISS=gpu), tagged <version>-gpu.
faiss="$([ "$overlay" = gpu ] && echo gpu || echo cpu)"
image="ragtrace:$version$([ "$faiss" = gpu ] && echo -gpu || true)"

log() { printf '\033[1m[cluster]\033[0m %s\n' "$*" >&2; }
need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { log "$tool is required (see docs/kubernetes.md)"; exit 1; }
  done
}

wait_for_rollouts() {
  for namespace in rag-system monitoring; do
    for kind in statefulset deployment daemonset; do
      for name in $(kubectl --context "$context" -n "$namespace" get "$kind" -o name); do
        log "waiting for $namespace/$name"
        kubectl --context "$context" -n "$namespace" rollout status "$name" --timeout=15m
      done
    done
  done
  kubectl --context "$context" -n rag-system wait --for=condition=complete job/kafka-topics --timeout=10m
}

# The Kafka image with the JMX exporter agent (infra/kind/kafka/Dockerfile), tagged with both versions as
# infra/kind/base/data/kafka.yaml names it.
load_kafka_image() {
  # shellcheck source=../local/versions.env
  source "$root/infra/local/versions.env"
  local tag="ragtrace-kafka:$KAFKA_VERSION-jmx-exporter-$JMX_EXPORTER_VERSION"
  "$root/infra/local/install.sh" jmx-exporter
  log "building $tag"
  docker build -t "$tag" --build-arg KAFKA_VERSION="$KAFKA_VERSION" -f "$here/kafka/Dockerfile" \
    "${RAGTRACE_CACHE_DIR:-$HOME/.cache/ragtrace}/jmx-exporter-$JMX_EXPORTER_VERSION"
  kind load docker-image "$tag" --name "$cluster"
}

start() {
  need docker kind kubectl
  [ -d "$here/overlays/$overlay" ] || { log "no overlay '$overlay' (cpu or gpu)"; exit 2; }
  "$here/apply.sh" secrets
  if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    log "cluster $cluster exists"
  else
    kind create cluster --name "$cluster" --config "$here/cluster.yaml" --wait 180s
  fi
  log "building $image"
  docker build --build-arg FAISS="$faiss" -t "$image" "$root"
  kind load docker-image "$image" --name "$cluster"
  load_kafka_image
  # The same render and apply as `make cluster-check` runs against its control plane.
  "$here/apply.sh" apply "$overlay" --context "$context"
  # A rebuilt image under the same tag: restart the ragtrace pods so they run it.
  kubectl --context "$context" -n rag-system rollout restart deployment -l app.kubernetes.io/component=ragtrace-service
  wait_for_rollouts
  local key; key="$(sed -n 's/^RAGTRACE_API_KEY=//p' "$here/secrets/rag-system.env")"
  cat <<ENDPOINTS
ragtrace is running on Kind cluster $cluster (overlay $overlay):
  search page and API   http://localhost:8080/        POST /api/search
  ingest API            http://localhost:8082/ingest
  Grafana               http://localhost:3000/        (admin: infra/kind/secrets/monitoring.env)
  Prometheus            http://localhost:9090/
  Tempo                 http://localhost:3200/        ragtrace trace <id> --url http://localhost:3200
  API key               $key
  load test             make load-gen TARGET=kind
ENDPOINTS
}

case "${1:-}" in
  start) start ;;
  stop) need kind; kind delete cluster --name "$cluster" ;;
  status)
    need kubectl
    kubectl --context "$context" get nodes
    kubectl --context "$context" -n rag-system get pods,hpa -o wide
    kubectl --context "$context" -n monitoring get pods -o wide ;;
  logs)
    need kubectl
    [ -n "${2:-}" ] || { log "usage: cluster.sh logs SERVICE (e.g. ingest-api, embedding-worker)"; exit 2; }
    kubectl --context "$context" -n rag-system logs -l "app.kubernetes.io/name=$2" --all-containers --prefix --tail=200 -f ;;
  *) log "usage: cluster.sh start|stop|status|logs SERVICE"; exit 2 ;;
esac
