#!/usr/bin/env bash
# Installs the pinned real servers of the local stack into the ragtrace cache, idempotently:
#   Kafka (KRaft)  jars resolved by Maven from infra/local/kafka/pom.xml
#   MinIO          built from its Go module with `go install`
#   Weaviate       built from its Go module with `go install` (cmd/weaviate-server)
#   Redis          Debian's redis-server, installed with apt-get when missing
#   Chromium       Debian's chromium, for the tests of the search page (headless)
#   promtool       Debian's prometheus package: checks and unit-tests monitoring/'s config and rules
#   redis-exporter Debian's prometheus-redis-exporter: the tests check the names monitoring/ queries
#   kustomize      built from its Go module: renders infra/kind's overlays for validation
# Usage: infra/local/install.sh [kafka|minio|weaviate|redis|chromium|promtool|redis-exporter|kustomize ...]
#        (no argument: all of them)
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
  log "Kafka $KAFKA_VERSION: resolving jars with Maven"
  local tmp; tmp="$(mktemp -d "$cache/.kafka.XXXXXX")"
  mvn -q -B -f "$here/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/libs"
  touch "$tmp/.complete"
  rm -rf "$dest" && mv "$tmp" "$dest"
}

# go_build NAME MODULE VERSION PACKAGE: `go install` one binary into the cache, under its pinned version.
go_build() {
  local name="$1" module="$2" version="$3" package="$4"
  local dest="$cache/$name-$version"
  [ -x "$dest/$name" ] && return 0
  need go "$name is built from its Go module: install Go 1.24 or newer"
  log "$name $version: go install $package (first build takes minutes; Go caches it)"
  local tmp; tmp="$(mktemp -d "$cache/.$name.XXXXXX")"
  GOBIN="$tmp" GOFLAGS=-buildvcs=false go install "$package@$version"
  rm -rf "$dest" && mv "$tmp" "$dest"
}

# apt_install COMMAND PACKAGE: install the Debian package unless COMMAND is already on PATH.
apt_install() {
  local command="$1" package="$2"
  command -v "$command" >/dev/null 2>&1 && return 0
  need apt-get "$command is missing and apt-get is not available: install $package yourself"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "$package: apt-get install $package"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$package" >/dev/null
}

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(kafka minio weaviate redis chromium promtool redis-exporter kustomize)

# One installer at a time per cache (make up and make test may run side by side).
exec 9>"$cache/.install.lock"
flock 9
for component in "${components[@]}"; do
  case "$component" in
    kafka) install_kafka ;;
    minio) go_build minio "$MINIO_MODULE" "$MINIO_VERSION" "$MINIO_MODULE" ;;
    weaviate) go_build weaviate-server "$WEAVIATE_MODULE" "$WEAVIATE_VERSION" "$WEAVIATE_MODULE/cmd/weaviate-server" ;;
    redis) apt_install redis-server redis-server ;;
    chromium) apt_install chromium chromium ;;
    promtool) apt_install promtool prometheus ;;
    redis-exporter) apt_install prometheus-redis-exporter prometheus-redis-exporter ;;
    kustomize) go_build kustomize "$KUSTOMIZE_MODULE" "$KUSTOMIZE_VERSION" "$KUSTOMIZE_MODULE" ;;
    *) log "unknown component '$component' (see the usage line at the top of this script)"; exit 2 ;;
  esac
done
