#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-controller-manager, kubectl, helm)
# and the node's kubelet, kube-scheduler, kube-proxy and CoreDNS from pinned Go modules into $CIRCUITGATE_CACHE/bin/<k8s-version>/, the way envtest does.
# Idempotent: with a warm cache it checks each binary's version and exits within seconds.
#
#   bash hack/build-control-plane.sh                 build what is missing (what the tests need)
#   bash hack/build-control-plane.sh --control-plane build only the control plane (make demo)
#   bash hack/build-control-plane.sh --print-bin-dir print where the binaries go
#   bash hack/build-control-plane.sh --check         exit 1 unless every binary is there
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=control-plane.env
source "$here/control-plane.env"

cache="${CIRCUITGATE_CACHE:-$HOME/.cache/circuitgate}"
bin_dir="$cache/bin/$K8S_VERSION"
src_dir="$cache/src"
# k8s.io/kubernetes v1.X.Y publishes its staging modules (k8s.io/api, ...) as v0.X.Y.
staging_version="v0.${K8S_VERSION#v1.}"

# The machine's Go builds these modules; never download another toolchain behind our back.
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
export CGO_ENABLED=0
started=$SECONDS

log() { printf '[control-plane %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# quietly CMD...: runs CMD, showing its output (hundreds of "go: downloading" lines) only
# when it fails.
quietly() {
  local out status=0
  out="$("$@" 2>&1)" || status=$?
  [ "$status" = 0 ] || printf '%s\n' "$out" >&2
  return "$status"
}

# version_ok NAME: the binary exists and reports the pinned version.
version_ok() {
  local name="$1" exe="$bin_dir/$1" out
  [ -x "$exe" ] || return 1
  case "$name" in
    etcd) out="$("$exe" --version 2>/dev/null)" && grep -qx "etcd Version: ${ETCD_VERSION#v}" <<<"$out" ;;
    helm) out="$("$exe" version --template '{{.Version}}' 2>/dev/null)" && [ "$out" = "$HELM_VERSION" ] ;;
    coredns) out="$("$exe" -version 2>/dev/null)" && grep -qx "CoreDNS-${COREDNS_VERSION#v}" <<<"$out" ;;
    kubectl) out="$("$exe" version --client 2>/dev/null)" && grep -qx "Client Version: $K8S_VERSION" <<<"$out" ;;
    *) out="$("$exe" --version 2>/dev/null)" && [ "$out" = "Kubernetes $K8S_VERSION" ] ;;
  esac
}

binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl helm coredns)
# The k8s.io/kubernetes commands among them, built from one wrapper module.
k8s_commands=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

missing() {
  local name
  for name in "${binaries[@]}"; do
    version_ok "$name" || echo "$name"
  done
}

case "${1:-}" in
  --print-bin-dir) echo "$bin_dir"; exit 0 ;;
  --check)
    todo="$(missing)"
    if [ -n "$todo" ]; then
      echo "missing or wrong version in $bin_dir: ${todo//$'\n'/ }" >&2
      exit 1
    fi
    exit 0 ;;
  --control-plane) binaries=(etcd kube-apiserver kube-controller-manager kubectl helm) ;;
  "") ;;
  *) echo "usage: $0 [--control-plane|--print-bin-dir|--check]" >&2; exit 2 ;;
esac

todo="$(missing)"
if [ -z "$todo" ]; then
  log "all binaries present at $K8S_VERSION (etcd $ETCD_VERSION, helm $HELM_VERSION) in $bin_dir"
  exit 0
fi
log "to build: ${todo//$'\n'/ } -> $bin_dir (once: about 8 minutes for the control plane, 4 more for the node)"
command -v go >/dev/null || { echo "go is required to build the control plane" >&2; exit 1; }
mkdir -p "$bin_dir" "$src_dir"
# The wrapper modules' go directive: this Go's language version (the pinned modules need 1.26).
go_directive="go $(go env GOVERSION | sed 's/^go\([0-9]*\.[0-9]*\).*/\1/').0"

needs() { grep -qx "$1" <<<"$todo"; }

# write_tools_file DIR PKG...: a tools.go importing the main packages, so `go mod tidy`
# records every module they need.
write_tools_file() {
  local dir="$1" pkg
  shift
  {
    echo "//go:build tools"
    echo
    echo "package tools"
    echo
    echo "import ("
    for pkg in "$@"; do echo "	_ \"$pkg\""; done
    echo ")"
  } >"$dir/tools.go"
}

# wrapper_module DIR NAME PKG VERSION: a module that requires PKG at VERSION (with go.sum
# complete, hence `go get` before `go mod tidy`), made once.
wrapper_module() {
  local dir="$1" name="$2" pkg="$3" version="$4"
  mkdir -p "$dir"
  [ -f "$dir/go.sum" ] && return 0
  log "resolving $pkg@$version"
  printf 'module circuitgate.io/%s\n\n%s\n' "$name" "$go_directive" >"$dir/go.mod"
  write_tools_file "$dir" "$pkg"
  (cd "$dir" && quietly go get "$pkg@$version" && quietly go mod tidy) ||
    { rm -f "$dir/go.sum"; exit 1; }
}

# Cold-cache build times measured on 2 cores, printed so a newcomer knows how long to wait;
# a warm Go build cache makes each a few seconds.
expected() {
  case "$1" in
    kube-apiserver) echo "about 3-4 min" ;;
    kube-controller-manager) echo "about 1 min" ;;
    kubelet) echo "about 1 min after the apiserver" ;;
    coredns) echo "about 2 min" ;;
    helm) echo "about 1 min" ;;
    *) echo "under 30 s" ;;
  esac
}

# go_build DIR OUT PKG LDFLAGS: builds into a temporary name, then renames, so an
# interrupted build never leaves a binary that looks finished.
go_build() {
  local dir="$1" name="$2" pkg="$3" ldflags="$4" start=$SECONDS
  log "building $name ($pkg), $(expected "$name") on a cold cache"
  (cd "$dir" && nice -n 10 go build -trimpath -ldflags "-s -w $ldflags" -o "$bin_dir/.$name.tmp" "$pkg")
  mv -f "$bin_dir/.$name.tmp" "$bin_dir/$name"
  version_ok "$name" || { echo "$name built but does not report the pinned version" >&2; exit 1; }
  log "built $name in $((SECONDS - start)) s"
}

# --- k8s.io/kubernetes: a wrapper module mapping staging modules to published versions.
needs_k8s=""
for name in "${k8s_commands[@]}"; do needs "$name" && needs_k8s=1; done
if [ -n "$needs_k8s" ]; then
  mod_dir="$src_dir/kubernetes-$K8S_VERSION"
  mkdir -p "$mod_dir"
  if [ ! -f "$mod_dir/go.mod" ]; then
    log "resolving k8s.io/kubernetes@$K8S_VERSION"
    upstream_mod="$(cd "$mod_dir" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
      sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
    [ -f "$upstream_mod" ] || { echo "could not download k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
    staging="$(sed -n 's|^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*$|\1|p' "$upstream_mod")"
    [ -n "$staging" ] || { echo "no staging modules found in $upstream_mod" >&2; exit 1; }
    {
      echo "// Generated by hack/build-control-plane.sh: builds the control plane binaries."
      echo "module circuitgate.io/controlplane"
      echo
      echo "$go_directive"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      for m in $staging; do echo "replace $m => $m $staging_version"; done
    } >"$mod_dir/go.mod"
    log "wrapper module maps $(wc -w <<<"$staging") staging modules to $staging_version"
  fi
  # Tidy again whenever the list of commands changes (a cache from before kubelet was added).
  previous="$(cat "$mod_dir/tools.go" 2>/dev/null || true)"
  write_tools_file "$mod_dir" "${k8s_commands[@]/#/k8s.io/kubernetes/cmd/}"
  if [ ! -f "$mod_dir/go.sum" ] || [ "$previous" != "$(cat "$mod_dir/tools.go")" ]; then
    log "downloading modules"
    (cd "$mod_dir" && quietly go mod tidy) || { rm -f "$mod_dir/go.sum"; exit 1; }
  fi
  major="${K8S_VERSION#v}"; major="${major%%.*}"
  minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
  # The release's own timestamp, not now: the same inputs give the same binaries.
  build_date="$(cd "$mod_dir" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)"
  k8s_ldflags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major"
    k8s_ldflags+=" -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
    # The module proxy does not carry the commit; empty beats the "$Format:%H$" placeholder.
    k8s_ldflags+=" -X $pkg.gitCommit="
  done
  for name in "${k8s_commands[@]}"; do
    if needs "$name"; then
      go_build "$mod_dir" "$name" "k8s.io/kubernetes/cmd/$name" "$k8s_ldflags"
    fi
  done
fi

# --- etcd: the server module's package is the etcd main.
if needs etcd; then
  mod_dir="$src_dir/etcd-$ETCD_VERSION"
  wrapper_module "$mod_dir" etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
  go_build "$mod_dir" etcd go.etcd.io/etcd/server/v3 ""
fi

# --- helm: its own wrapper module (its k8s.io requirements differ from the control plane's).
if needs helm; then
  mod_dir="$src_dir/helm-$HELM_VERSION"
  wrapper_module "$mod_dir" helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
  # As helm's Makefile does: the Kubernetes version helm assumes follows its client-go.
  client_go="$(cd "$mod_dir" && go list -m -f '{{.Version}}' k8s.io/client-go)"
  client_go="${client_go#v0.}"
  helm_ldflags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  helm_ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=${client_go%%.*}"
  done
  go_build "$mod_dir" helm helm.sh/helm/v3/cmd/helm "$helm_ldflags"
fi

# --- CoreDNS: the node's cluster DNS (the module root is its main package).
if needs coredns; then
  mod_dir="$src_dir/coredns-$COREDNS_VERSION"
  wrapper_module "$mod_dir" coredns github.com/coredns/coredns "$COREDNS_VERSION"
  go_build "$mod_dir" coredns github.com/coredns/coredns ""
fi

log "done in $((SECONDS - started)) s: $bin_dir"
