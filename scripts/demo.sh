#!/usr/bin/env bash
# The main job on the embedded default, as far as podsnap goes today: describe this node,
# check the example manifests (podsnap's and GKE's), and show which snapshot a Pod would match.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet --bin podsnap --bin podsnap-demo-server
podsnap=target/release/podsnap

echo "== this node (what a snapshot taken here requires of the node restoring it)"
$podsnap node-info --engine gvisor
echo
echo "== example manifests"
$podsnap validate -f examples/storage-local.yaml -f examples/policy.yaml -f examples/gke-manifests.yaml -f examples/pod.yaml
echo
echo "== a manifest with mistakes (expected to fail, with every problem and its fix)"
$podsnap validate -f examples/invalid.yaml || true
echo
echo "== the distilled spec of the example Pod: a replica restores from a snapshot only if this hash matches"
$podsnap distill -f examples/pod.yaml

echo
echo "== the snapshot repository: a 256 MiB model-like state file, stored twice, restored and verified"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work/state.bin" <<'PY'
import os, sys
# Weights-like: half random (incompressible), a quarter zeros, a quarter repeated tables.
table = os.urandom(1 << 20)
with open(sys.argv[1], "wb") as f:
    for i in range(256):
        f.write(os.urandom(1 << 20) if i % 4 < 2 else (bytes(1 << 20) if i % 4 == 2 else table))
PY
repo="file://$work/repo"
$podsnap repo put --url "$repo" "$work/state.bin" --id first --chunking memory
$podsnap repo put --url "$repo" "$work/state.bin" --id second --chunking memory
$podsnap repo ls --url "$repo"
$podsnap repo get --url "$repo" second -o "$work/restored.bin" --cache-dir "$work/cache"
cmp "$work/state.bin" "$work/restored.bin" && echo "restored bytes are identical"
$podsnap repo verify --url "$repo" second

echo
echo "== the slow-starting demo server under gVisor: cold start against checkpoint + restore"
$podsnap bench gvisor --sizes 256
