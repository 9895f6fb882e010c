#!/usr/bin/env bash
# Builds etcd and kube-apiserver from their Go modules into a cache directory,
# once, for internal/kubetest (real components in tests: there is no
# download of prebuilt binaries here). `make kube-bins` runs it.
#
#   STRAIT_KUBE_BINS  cache directory (default ~/.cache/strait/kube-v1.34.4)
#
# A binary already in the cache that answers --version with the right
# version is kept. Each build happens in a temporary copy of a scratch
# module under bins/ and lands in the cache atomically (temp name, then mv).
set -euo pipefail

ETCD_VERSION=v3.6.16
KUBE_VERSION=v1.34.4
STAGING_VERSION=v0.34.4

here="$(cd "$(dirname "$0")" && pwd)"
cache="${STRAIT_KUBE_BINS:-$HOME/.cache/strait/kube-${KUBE_VERSION}}"
GO="${GO:-go}"
start=$(date +%s)
log() { echo "kube-bins [$(( $(date +%s) - start ))s] $*"; }

# Scratch modules build against the module proxy, never a workspace;
# -p 2 keeps the kube-apiserver build around 2 GB of memory.
export GOFLAGS=-mod=mod GOWORK=off CGO_ENABLED=0
BUILD_FLAGS=(-p 2 -trimpath)

mkdir -p "$cache"
scratch_dirs=()
cleanup() {
  local d
  for d in "${scratch_dirs[@]+"${scratch_dirs[@]}"}"; do rm -rf "$d"; done
  rm -f "$cache"/.*.tmp.$$
}
trap cleanup EXIT

# ok NAME WANT: the cached binary exists, runs, and reports version WANT.
ok() {
  local bin="$cache/$1" out
  [ -x "$bin" ] || return 1
  out="$("$bin" --version 2>&1)" || return 1
  grep -qF -- "$2" <<<"$out"
}

# scratch NAME: a fresh temporary copy of bins/NAME; prints its path.
scratch() {
  local d
  d="$(mktemp -d "${TMPDIR:-/tmp}/strait-kube-bins-$1.XXXXXX")"
  scratch_dirs+=("$d")
  cp "$here/bins/$1/go.mod" "$here/bins/$1/main.go" "$d/"
  echo "$d"
}

# install NAME WANT: move the built temp binary into place once it works.
install_bin() {
  local tmp="$cache/.$1.tmp.$$"
  if ! out="$("$tmp" --version 2>&1)" || ! grep -qF -- "$2" <<<"$out"; then
    echo "kube-bins: built $1 does not report $2: $out" >&2
    exit 1
  fi
  mv -f "$tmp" "$cache/$1"
  log "$1 installed: $cache/$1 ($(head -n1 <<<"$out"))"
}

build_etcd() {
  if ok etcd "etcd Version: ${ETCD_VERSION#v}"; then
    log "etcd ${ETCD_VERSION} already in $cache"
    return
  fi
  log "building etcd ${ETCD_VERSION} (about 1 min)"
  local d
  d="$(scratch etcd)"
  (
    cd "$d"
    "$GO" get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
    "$GO" mod tidy
    "$GO" build "${BUILD_FLAGS[@]}" -o "$cache/.etcd.tmp.$$" .
  )
  install_bin etcd "etcd Version: ${ETCD_VERSION#v}"
}

build_apiserver() {
  if ok kube-apiserver "Kubernetes ${KUBE_VERSION}"; then
    log "kube-apiserver ${KUBE_VERSION} already in $cache"
    return
  fi
  log "building kube-apiserver ${KUBE_VERSION} (first time about 7 min, 2 GB of memory)"
  local d gomod replaces
  d="$(scratch kube-apiserver)"
  (
    cd "$d"
    # kubernetes' go.mod replaces its staging modules with local paths;
    # a module that requires it must replace each with the published version.
    gomod="$("$GO" mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" |
      sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
    [ -f "$gomod" ] || { echo "kube-bins: no go.mod for k8s.io/kubernetes@${KUBE_VERSION}" >&2; exit 1; }
    replaces="$(sed -n '/^replace (/,/^)/p' "$gomod" | grep staging/src | awk '{print $1}')"
    [ -n "$replaces" ] || { echo "kube-bins: no staging replaces found in $gomod" >&2; exit 1; }
    edit=()
    for m in $replaces; do edit+=("-replace=$m=$m@${STAGING_VERSION}"); done
    log "replacing $(wc -w <<<"$replaces") staging modules with ${STAGING_VERSION}"
    "$GO" mod edit "${edit[@]}"
    "$GO" mod tidy
    "$GO" build "${BUILD_FLAGS[@]}" \
      -ldflags "-X k8s.io/component-base/version.gitVersion=${KUBE_VERSION} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34" \
      -o "$cache/.kube-apiserver.tmp.$$" .
  )
  install_bin kube-apiserver "Kubernetes ${KUBE_VERSION}"
}

build_etcd
build_apiserver
log "done: $cache"
