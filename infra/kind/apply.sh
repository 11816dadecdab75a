#!/usr/bin/env bash
# Renders and applies one overlay: the one code path of `make cluster-start` (cluster.sh) and of
# `make cluster-check`, so that what the check proves is what a user runs.
#   apply.sh secrets                 create the untracked secret files from the committed examples
#   apply.sh render OVERLAY          print the rendered overlay (kustomize)
#   apply.sh apply OVERLAY [ARGS]    secrets, render, `kubectl ARGS apply -f -` (ARGS: --context, --kubeconfig)
# kubectl is the one on PATH; kustomize the pinned one in the ragtrace cache when built, else kubectl's.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

log() { printf '\033[1m[cluster]\033[0m %s\n' "$*" >&2; }

# The untracked secret files, from the committed examples, each "generate" replaced by a random value.
ensure_secrets() {
  for name in rag-system monitoring; do
    local file="$here/secrets/$name.env"
    [ -f "$file" ] && continue
    log "creating $file (random credentials; it is not committed)"
    while IFS= read -r line; do
      if [[ "$line" == *=generate ]]; then
        echo "${line%generate}$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
      else
        echo "$line"
      fi
    done < "$file.example" > "$file"
    chmod 600 "$file"
  done
}

overlay_dir() {
  local dir="$here/overlays/$1"
  [ -d "$dir" ] || { log "no overlay '$1' (cpu or gpu)"; exit 2; }
  echo "$dir"
}

render() {
  local dir; dir="$(overlay_dir "$1")"
  local version; version="$(sed -n 's/^KUSTOMIZE_VERSION=//p' "$root/infra/local/versions.env")"
  local kustomize="${RAGTRACE_CACHE_DIR:-$HOME/.cache/ragtrace}/kustomize-$version/kustomize"
  if [ -x "$kustomize" ]; then
    "$kustomize" build --load-restrictor LoadRestrictionsNone "$dir"
  else
    kubectl kustomize --load-restrictor LoadRestrictionsNone "$dir"
  fi
}

apply() {
  local overlay="$1"; shift
  ensure_secrets
  local manifests; manifests="$(render "$overlay")"
  log "applying overlay $overlay"
  kubectl "$@" apply -f - <<< "$manifests"
}

case "${1:-}" in
  secrets) ensure_secrets ;;
  render) [ -n "${2:-}" ] || { log "usage: apply.sh render OVERLAY"; exit 2; }; ensure_secrets; render "$2" ;;
  apply) [ -n "${2:-}" ] || { log "usage: apply.sh apply OVERLAY [KUBECTL ARGS]"; exit 2; }; shift; apply "$@" ;;
  *) log "usage: apply.sh secrets | render OVERLAY | apply OVERLAY [KUBECTL ARGS]"; exit 2 ;;
esac
