#!/usr/bin/env bash
# Object store bench (not a test): an export of a 1 GiB image to an S3 server on loopback
# (`hyperexport export --repo s3://...`, encrypted, zstd:1) vs `rclone copy` of the same image to
# the same server, in the same run. The server is moto's (scripts/object-peers.sh), started afresh
# each round: it keeps objects in memory.
#
# The image is the bench layout of scripts/bench.sh (half zeros, a quarter random, a quarter
# text-like): hyperexport stores no zeros and compresses the text; rclone sends every byte as it
# is. Throughput is the image size over the wall time.
#
# With LAYOUT `random` the image is 1 GiB of random bytes instead: nothing to skip or compress,
# both tools send the whole image (hyperexport encrypted).
#
# Usage: bash scripts/object-bench.sh [ROUNDS] [UPLOAD_CONCURRENCY] [LAYOUT]
#        (defaults 3, 8 and bench; medians reported)
set -euo pipefail
rounds="${1:-3}"
concurrency="${2:-8}"
layout="${3:-bench}"
source "$(dirname "$0")/bench-lib.sh"
bench_setup obench rclone:rclone curl:curl
bash scripts/object-peers.sh
moto="$PWD/target/peers/moto/bin/moto_server"
cd "$work"
echo "bench password" > pw
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
# rclone's S3 client fails on a custom CA bundle with its own transport; the server is plain HTTP.
unset AWS_CA_BUNDLE

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
: > results
for round in $(seq 1 "$rounds"); do
  "$moto" -H 127.0.0.1 -p 0 > moto.log 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do grep -q "Running on" moto.log && break; sleep 0.1; done
  endpoint=$(grep -o 'http://127.0.0.1:[0-9]*' moto.log | head -1)
  [ -n "$endpoint" ] || { cat moto.log; exit 1; }
  curl -sf -X PUT "$endpoint/bench" > /dev/null
  export RCLONE_CONFIG_MOTO_TYPE=s3 RCLONE_CONFIG_MOTO_PROVIDER=Other RCLONE_CONFIG_MOTO_ENDPOINT="$endpoint" \
    RCLONE_CONFIG_MOTO_ACCESS_KEY_ID=bench RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY=bench-secret RCLONE_CONFIG_MOTO_REGION=us-east-1

  rm -f img
  case "$layout" in
    random) head -c 1073741824 /dev/urandom > img ;;
    *) "$hx" dev make-image img --size 1G --layout bench --seed "$round" ;;
  esac
  size=$(stat -c %s img)
  cat img > /dev/null
  t0=$(now)
  "$hx" export img --repo "s3://bench/hx?endpoint=$endpoint" --password-file pw --upload-concurrency "$concurrency" --output json | tail -1 > r.json
  t1=$(now)
  stored=$(python3 -c 'import json; print(json.load(open("r.json"))["result"]["total"]["stored_bytes"])')
  t2=$(now)
  # --s3-no-head: rclone 1.60 checks an upload with `HEAD ...?versionId=null`, which moto answers
  # with 400, and then copies again; without the check rclone does less work than with it.
  rclone copy img moto:bench/rclone/ --s3-no-head
  t3=$(now)
  rclone cat moto:bench/rclone/img | cmp -s - img || { echo "rclone's copy differs"; exit 1; }
  echo "$t0 $t1 $t2 $t3 $size $stored" | awk '{hx = $2 - $1; rc = $4 - $3; printf "%.3f %.3f %.1f %.1f %.1f %.3f\n", hx, rc, $5 / hx / 1e6, $5 / rc / 1e6, $6 / 1e6, rc / hx}' >> results
  tail -1 results | awk -v r="$round" '{printf "round %s: export %.2f s (%.0f MB/s, %.0f MB stored) | rclone copy %.2f s (%.0f MB/s) | %.2fx\n", r, $1, $3, $5, $2, $4, $6}'
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
done
col() { awk -v c="$1" '{print $c}' results | median; }
echo
echo "median of $rounds rounds, 1 GiB $layout image, $(nproc) cores, upload concurrency $concurrency, $(rclone version | head -1), moto $("$(dirname "$moto")/python" -c 'import moto; print(moto.__version__)')"
echo "| | seconds | MB/s of image | MB sent |"
echo "|---|---|---|---|"
echo "| hyperexport export to s3:// | $(col 1) | $(col 3) | $(col 5) |"
echo "| rclone copy | $(col 2) | $(col 4) | $((size / 1000000)) |"
echo "speed-up (median of per-round ratios): $(col 6)x; per round: $(awk '{printf "%.2f ", $6}' results)"
