#!/usr/bin/env bash
# Builds the demo image's root file system offline: the podsnap-demo-server binary with the
# shared libraries it links, and a static busybox (sh, wget, sleep) for exec and probes.
# Usage: scripts/demo-rootfs.sh BINARY OUTPUT_DIR
set -euo pipefail
binary=$1
out=$2
rm -rf "$out"
mkdir -p "$out"/{app,bin,etc,tmp,proc,sys,dev,model}
cp "$binary" "$out/app/podsnap-demo-server"
# The dynamic loader and every library the binary needs, at the same paths.
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
  mkdir -p "$out$(dirname "$lib")"
  cp -L "$lib" "$out$lib"
done
cp /bin/busybox "$out/bin/busybox"
for applet in sh wget sleep cat echo ls ps hostname; do
  ln -sf busybox "$out/bin/$applet"
done
echo "root:x:0:0:root:/:/bin/sh" > "$out/etc/passwd"
echo "root:x:0:" > "$out/etc/group"
chmod 1777 "$out/tmp"
