#!/usr/bin/env bash
# Installs the real components the tests start: the brokers (redis-server, rabbitmq-server) and
# the node's runtime (containerd, runc, the CNI plugins, iproute2, iptables for kube-proxy, a C
# compiler with a static libc for the pause image), the image tools (debootstrap, buildah) and
# Prometheus (promtool tests the chart's alerts; a real server scrapes real endpoints, without
# its recommended node exporter). Debian's containerd 1.6 because kubelet 1.36 supports it
# and it installs in seconds; kubelet 1.37 will need containerd 2 (Go modules, like the rest).
# Idempotent: does nothing when they are there. (Certificates come from Python's cryptography.)
set -euo pipefail
need=()
command -v rabbitmq-server >/dev/null || need+=(rabbitmq-server)
command -v redis-server >/dev/null || need+=(redis-server)
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v buildah >/dev/null || need+=(buildah)
command -v gcc >/dev/null || need+=(gcc)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -f /usr/lib/aarch64-linux-gnu/libc.a ] || need+=(libc6-dev)
lean=()
command -v promtool >/dev/null || lean+=(prometheus)
if [ $((${#need[@]} + ${#lean[@]})) -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing system packages: ${need[*]} ${lean[*]} (run as root or install them)" >&2
    exit 1
  fi
  apt-get update -qq
  # The tests start their own brokers and containerd: no package may start a machine-wide
  # service (redis, rabbitmq, epmd, containerd) on install.
  policy=/usr/sbin/policy-rc.d
  own_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
  fi
  [ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  [ ${#lean[@]} -eq 0 ] ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${lean[@]}"
  [ -z "$own_policy" ] || rm -f "$policy"
fi
