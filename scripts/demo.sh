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
socket=/run/podsnap/agent.sock
work=$(mktemp -d)
agent_pid=""
cleanup() {
  $podsnap delete pod slow-server >/dev/null 2>&1 || true
  if [ -n "$agent_pid" ]; then
    sleep 2
    kill "$agent_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== the podsnap agent"
if $podsnap get pods >/dev/null 2>&1; then
  echo "an agent already answers on $socket"
else
  $podsnap serve >"$work/agent.log" 2>&1 &
  agent_pid=$!
  for _ in $(seq 100); do $podsnap get pods >/dev/null 2>&1 && break; sleep 0.1; done
  echo "started the agent (pid $agent_pid, socket $socket, log $work/agent.log)"
fi

echo
echo "== the demo image, built offline"
bash scripts/demo-rootfs.sh target/release/podsnap-demo-server "$work/demo-rootfs"
$podsnap image import "$work/demo-rootfs" --name localhost/podsnap-demo:latest --cmd /app/podsnap-demo-server

echo
echo "== a slow-starting Pod (256 MiB of state, then HTTP) under gVisor"
$podsnap delete pod slow-server >/dev/null 2>&1 && sleep 3 || true
start=$(date +%s.%N)
$podsnap apply -f examples/pod.yaml
until [ "$($podsnap get pod slow-server -o json | python3 -c 'import json,sys; p=json.load(sys.stdin); print(next((c["status"] for c in p.get("status",{}).get("conditions",[]) if c["type"]=="Ready"), ""))')" = "True" ]; do
  phase=$($podsnap get pod slow-server -o json | python3 -c 'import json,sys; print(json.load(sys.stdin).get("status",{}).get("phase",""))')
  if [ "$phase" = "Failed" ]; then $podsnap describe pod slow-server; exit 1; fi
  sleep 0.2
done
ready=$(date +%s.%N)
response=$(curl -sS --max-time 10 http://127.0.0.1:18080/)
first=$(date +%s.%N)
$podsnap get pods -o wide
echo "Ready after $(python3 -c "print(f'{$ready - $start:.2f}')") s; first response after $(python3 -c "print(f'{$first - $start:.2f}')") s: $response"
$podsnap logs slow-server
$podsnap delete pod slow-server

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
