#!/usr/bin/env bash
# The main job on the embedded default, as far as podsnap goes today: describe this node,
# check the example manifests (podsnap's and GKE's), and show which snapshot a Pod would match.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet --bin podsnap
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
