#!/usr/bin/env bash
# Compares cairn with etcd on this machine: the same put load (1 and 64
# concurrent clients, distinct keys, 100-byte values) against a 3-node cairn
# cluster (N=3, W=2, durable acknowledgements) and a 3-node etcd cluster, both
# on loopback with data in temporary directories. etcd is driven through its
# JSON gateway (POST /v3/kv/put) by the same client code as cairn
# (`cairn bench --etcd`).
#
# Usage: node/bench/etcd.sh [seconds-per-run]     (from the repository root)
# Installs Debian's etcd-server with apt-get if etcd is missing.
set -euo pipefail

SECONDS_PER_RUN="${1:-5}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CAIRN="${CAIRN_BIN:-}"
if [[ -z "$CAIRN" ]]; then
  (cd "$ROOT" && cargo build --release -p cairn-node --bin cairn >&2)
  CAIRN="${CARGO_TARGET_DIR:-$ROOT/target}/release/cairn"
fi

if ! command -v etcd >/dev/null 2>&1; then
  echo "installing etcd-server (Debian package)" >&2
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server >&2
  # The package may start a system-wide instance on the default ports.
  $SUDO systemctl stop etcd >/dev/null 2>&1 || true
fi

WORK="$(mktemp -d -t cairn-vs-etcd.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# --- etcd: three members on loopback -------------------------------------
declare -a CLIENT PEER
for i in 1 2 3; do CLIENT[$i]=$(free_port); PEER[$i]=$(free_port); done
CLUSTER="e1=http://127.0.0.1:${PEER[1]},e2=http://127.0.0.1:${PEER[2]},e3=http://127.0.0.1:${PEER[3]}"
ENDPOINTS=""
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$WORK/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:${CLIENT[$i]}" \
    --advertise-client-urls "http://127.0.0.1:${CLIENT[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${PEER[$i]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${PEER[$i]}" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new \
    --initial-cluster-token cairn-bench >"$WORK/etcd-$i.log" 2>&1 &
  PIDS+=($!)
  ENDPOINTS="${ENDPOINTS:+$ENDPOINTS,}http://127.0.0.1:${CLIENT[$i]}"
done
for i in 1 2 3; do
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:${CLIENT[$i]}/health" 2>/dev/null | grep -q true; then break; fi
    sleep 0.2
  done
done

echo "measuring etcd ($(etcd --version | head -1))" >&2
"$CAIRN" bench --etcd "$ENDPOINTS" --seconds "$SECONDS_PER_RUN" --json >"$WORK/etcd.json"
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()

echo "measuring cairn" >&2
"$CAIRN" bench --dir "$WORK/cairn" --seconds "$SECONDS_PER_RUN" --json >"$WORK/cairn.json"

python3 - "$WORK/cairn.json" "$WORK/etcd.json" <<'PY'
import json, sys
cairn = {r["clients"]: r for r in json.load(open(sys.argv[1]))}
etcd = {r["clients"]: r for r in json.load(open(sys.argv[2]))}
print(f"{'clients':>7} | {'cairn puts/s':>12} {'p50 ms':>7} {'p99 ms':>7} | "
      f"{'etcd puts/s':>11} {'p50 ms':>7} {'p99 ms':>7} | {'tput x':>6} {'p50 x':>6}")
for c in sorted(cairn):
    a, b = cairn[c], etcd.get(c)
    if b is None:
        continue
    tput = a["puts_per_sec"] / b["puts_per_sec"] if b["puts_per_sec"] else float("inf")
    p50 = a["p50_ms"] / b["p50_ms"] if b["p50_ms"] else float("inf")
    print(f"{c:>7} | {a['puts_per_sec']:>12.0f} {a['p50_ms']:>7.2f} {a['p99_ms']:>7.2f} | "
          f"{b['puts_per_sec']:>11.0f} {b['p50_ms']:>7.2f} {b['p99_ms']:>7.2f} | "
          f"{tput:>6.2f} {p50:>6.2f}")
print("tput x = cairn/etcd throughput (target >= 4 at 64 clients); "
      "p50 x = cairn/etcd median latency (target <= 0.33 at 1 client)")
PY
