#!/usr/bin/env bash
# Installs what podsnap needs on a fresh Debian machine (root): runsc for the gvisor engine,
# a static busybox for sandbox root file systems, the CNI plugins for Pod networks.
# Safe to run again; it installs only what is missing.
set -euo pipefail

need=()
command -v runsc >/dev/null 2>&1 || need+=(runsc)
# A static busybox: the root file system of the engine's tests and of Pod sandboxes' pause process.
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || need+=(busybox-static)
# Pod networks: the standard CNI plugins (bridge, host-local, loopback) in /usr/lib/cni.
[ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ] || need+=(containernetworking-plugins)
# The demo script reports with curl and python3.
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
