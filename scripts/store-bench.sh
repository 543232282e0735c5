#!/usr/bin/env bash
# Store bench (not a test): submissions per second and Submit latency (p50/p99; a Submit is
# answered once the job is durable in the store) on the embedded store (redb, fsync) and on etcd
# (Debian etcd-server 3.4, one member on loopback, fsync), same machine, same run, same load:
# `hyperexport dev submit-load` (one lightweight agent serving the VM, N submissions from C
# concurrent clients, each its own connection).
#
# Usage: bash scripts/store-bench.sh [SUBMITS] [CONCURRENCY]   (default 2000 16)
set -euo pipefail
submits="${1:-2000}" concurrency="${2:-16}"
source "$(dirname "$0")/bench-lib.sh"
bench_setup store etcd:etcd-server curl:curl
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# etcd, one member.
client=$(port) peer=$(port)
etcd --name bench --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
  --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
  --initial-cluster "bench=http://127.0.0.1:$peer" 2>"$work/etcd.log" &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$client/health" >/dev/null 2>&1 && break; sleep 0.1; done

run() { # NAME COORDINATOR-ARGS...
  local name=$1; shift
  "$hx" coordinator --listen 127.0.0.1:0 "$@" >"$work/$name.out" 2>"$work/$name.log" &
  local pid=$!
  for _ in $(seq 100); do grep -qs "listening on" "$work/$name.out" && break; sleep 0.1; done
  local addr
  addr=$(sed -n 's/^listening on //p' "$work/$name.out")
  [ -n "$addr" ] || { cat "$work/$name.log"; exit 1; }
  "$hx" dev submit-load --coordinator "$addr" --submits "$submits" --concurrency "$concurrency" >"$work/$name.json"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print("| %s | %d | %.0f | %.1f | %.1f |" % (sys.argv[2], r["submits"], r["per_second"], r["p50_ms"], r["p99_ms"]))' "$work/$name.json" "$name"
}
echo "$submits submissions from $concurrency clients, $(nproc) cores, $(etcd --version | head -1)"
echo "| store | submits | per second | p50 ms | p99 ms |"
echo "|---|---|---|---|---|"
run embedded --data "$work/coord"
run etcd --store "etcd://127.0.0.1:$client" --etcd-ttl 5
