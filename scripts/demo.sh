#!/usr/bin/env bash
# The main job on the embedded default: start the podsnap agent if it is not running, build the
# slow-starting demo image offline, run it as a Pod under gVisor, and report when it is Ready
# and its first response. Then the rest of what podsnap does today: node fingerprint, manifest
# validation, the distilled spec, the snapshot repository, and checkpoint/restore of the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet --bin podsnap --bin podsnap-demo-server
podsnap=$PWD/target/release/podsnap
work=$(mktemp -d)
agent_pid=""
cleanup() {
  if [ -n "$agent_pid" ]; then
    $podsnap delete pod slow-server slow-server-replica --socket "$work/agent.sock" >/dev/null 2>&1 || true
    # The agent stops deleted Pods and removes their networks; wait for it (at most 40 s).
    for _ in $(seq 200); do
      ls "$work/state/network/netns" 2>/dev/null | grep -q . || break
      sleep 0.2
    done
    kill "$agent_pid" 2>/dev/null || true
    wait "$agent_pid" 2>/dev/null || true
  fi
  # Whatever is still mounted under the demo's directory (an interrupted run) goes first.
  { grep -o " $work/[^ ]*" /proc/self/mountinfo 2>/dev/null || true; } | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

echo "== the podsnap agent (a private one for this demo, state in $work)"
socket=$work/agent.sock
pc() { $podsnap "$@" --socket "$socket"; }
$podsnap serve --state-dir "$work/state" --socket "$socket" >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do pc get pods >/dev/null 2>&1 && break; sleep 0.1; done
echo "started the agent (pid $agent_pid); its log: $work/agent.log"

echo
echo "== the demo image, built offline"
bash scripts/demo-rootfs.sh target/release/podsnap-demo-server "$work/demo-rootfs"
$podsnap image import "$work/demo-rootfs" --name localhost/podsnap-demo:latest --cmd /app/podsnap-demo-server

ready_condition() {
  pc get pod "$1" -o json | python3 -c 'import json,sys; p=json.load(sys.stdin); s=p.get("status",{}); print(s.get("phase",""), next((c["status"] for c in s.get("conditions",[]) if c["type"]=="Ready"), ""))'
}
# run_pod MANIFEST NAME PORT: applies, waits for Ready, prints the times; sets $ready_s $first_s.
run_pod() {
  local start ready first response
  start=$(date +%s.%N)
  pc apply -f "$1" >/dev/null
  until [ "$(ready_condition "$2")" = "Running True" ]; do
    if ready_condition "$2" | grep -q '^Failed'; then pc describe pod "$2"; exit 1; fi
    sleep 0.1
  done
  ready=$(date +%s.%N)
  response=$(curl -sS --max-time 10 "http://127.0.0.1:$3/")
  first=$(date +%s.%N)
  ready_s=$(python3 -c "print(f'{$ready - $start:.2f}')")
  first_s=$(python3 -c "print(f'{$first - $start:.2f}')")
  echo "$2: Ready after $ready_s s, first response after $first_s s: $response"
}

echo
echo "== a slow-starting Pod (256 MiB of state, then HTTP) under gVisor, started cold"
sed "s#/var/lib/podsnap/snapshots#$work/snapshots#" examples/snapshot-policy.yaml > "$work/policy.yaml"
pc apply -f "$work/policy.yaml"
run_pod examples/pod.yaml slow-server 18080
cold_ready=$ready_s; cold_first=$first_s
pc logs slow-server

echo
echo "== a snapshot of it, taken on a manual trigger"
cat > "$work/trigger.yaml" <<'YAML'
apiVersion: podsnap.dev/v1alpha1
kind: PodSnapshotManualTrigger
metadata: {name: demo-trigger, namespace: default}
spec: {targetPod: slow-server}
YAML
pc apply -f "$work/trigger.yaml"
until pc get podsnapshotmanualtriggers | grep -q -E "Complete|Failed"; do sleep 0.2; done
pc get podsnapshotmanualtriggers
pc get podsnapshots

echo
echo "== a replica of the same Pod, restored from the snapshot"
sed 's/name: slow-server$/name: slow-server-replica/; s/hostPort: 18080/hostPort: 18081/' examples/pod.yaml > "$work/replica.yaml"
run_pod "$work/replica.yaml" slow-server-replica 18081
pc describe pod slow-server-replica | grep -E "PodRestored|Restored" || true
echo
printf '%-22s %12s %20s\n' "" "Ready (s)" "first response (s)"
printf '%-22s %12s %20s\n' "cold start" "$cold_ready" "$cold_first"
printf '%-22s %12s %20s\n' "restored replica" "$ready_s" "$first_s"
pc delete pod slow-server slow-server-replica

echo
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
$podsnap distill -f examples/pod.yaml --hash-only

echo
echo "== the snapshot repository: a 256 MiB model-like state file, stored twice, restored and verified"
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
echo "== the demo server under gVisor: cold start against checkpoint + restore"
$podsnap bench gvisor --sizes 256
