#!/usr/bin/env bash
# Scale bench of the coordinator (not a test): 1,000 lightweight agents (real Attach streams from
# one process, `hyperexport dev load-agents`) on one coordinator, 10,000 queued tasks that each
# agent "runs" for 200 ms (capacity 1: ten waves). Reports placement latency as agents see it
# (first wave: from the job's Submit; later: from the slot freed to the next assignment) and as
# the coordinator measures it (from the Submit or the result that freed a slot being received to
# the assignment handed to the stream), its queue-wait and commit histograms, CPU and peak RSS.
#
# Usage: bash scripts/scale-bench.sh [load-agents options, e.g. --agents 1000 --tasks 10000]
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
bench_setup scale
# 1,000 agents are 1,000 connections on each side.
ulimit -n 65536 2>/dev/null || ulimit -n 8192 2>/dev/null || true

"$hx" coordinator --listen 127.0.0.1:0 --data "$work/coord" --metrics-listen 127.0.0.1:0 >"$work/out" 2>"$work/coord.log" &
coord=$!
pids+=("$coord")
for _ in $(seq 100); do [ "$(wc -l <"$work/out")" -ge 2 ] && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$work/out")
metrics=$(sed -n 's/^metrics on //p' "$work/out")
[ -n "$addr" ] || { cat "$work/coord.log"; exit 1; }
ticks=$(getconf CLK_TCK)
cpu() { awk -v t="$ticks" '{sub(/.*\) /, ""); print ($12 + $13) / t}' "/proc/$coord/stat"; }
before=$(cpu)
"$hx" dev load-agents --coordinator "$addr" "$@" >"$work/result.json"
after=$(cpu)
rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$coord/status")
echo "load:        $(cat "$work/result.json")"
echo "coordinator: cpu $(awk -v a="$before" -v b="$after" 'BEGIN {printf "%.1f", b - a}') s during the run, peak RSS $((rss_kib / 1024)) MiB"
exec 3<>"/dev/tcp/${metrics%:*}/${metrics##*:}"
printf 'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n' >&3
cat <&3 >"$work/metrics"
# p50 and p99 of each coordinator histogram, as the upper bound of the bucket they fall in.
for h in placement_latency queue_wait store_commit; do
  awk -v h="hyperexport_coordinator_${h}_seconds" '
    index($0, h "_bucket{le=") == 1 { split($0, a, "\""); le[n] = a[2]; c[n++] = $NF }
    index($0, h "_count ") == 1 { total = $NF }
    END {
      for (i = 0; i < n; i++) { if (p50 == "" && c[i] >= total * 0.5) p50 = le[i]; if (p99 == "" && c[i] >= total * 0.99) p99 = le[i] }
      printf "coordinator: %s (%d samples): p50 <= %s s, p99 <= %s s\n", h, total, p50, p99
    }' "$work/metrics"
done
