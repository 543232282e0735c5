#!/usr/bin/env bash
# Bandwidth-limit accuracy bench (not a test): the same image moved at the same limit by
# `hyperexport export --bwlimit RATE` (a local export: its reads from the source are paced by
# the agent's token buckets) and by `rclone copy --bwlimit RATE` to a local folder, in the same
# run. Each tool's achieved rate is the image size over its wall time (process start to exit);
# the error is how far that is from the limit. Both limits use binary units (20M = 20 MiB/s).
#
# The image is the one of scripts/bench.sh (`dev make-image --layout bench`: half zeros, a
# quarter random, a quarter text-like), written fully (no sparse holes) so that both tools read
# every byte. The repository is created first (not timed).
#
# Usage: bash scripts/bandwidth-bench.sh [RATE] [SIZE] [ROUNDS]   (default 20M 512M 2)
set -euo pipefail
rate="${1:-20M}" size="${2:-512M}" rounds="${3:-2}"
source "$(dirname "$0")/bench-lib.sh"
bench_setup bwbench rclone:rclone
cd "$work"
echo "bench password" > pw
touch rclone.conf
limit=$(python3 -c "
import sys; t = sys.argv[1]; u = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}
print(int(float(t[:-1]) * u[t[-1].upper()]) if t[-1].upper() in u else int(t))" "$rate")
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
: > results
for round in $(seq 1 "$rounds"); do
  rm -rf img repo copy
  "$hx" dev make-image raw --size "$size" --layout bench --seed "$round"
  # Fill holes so that both tools read the same bytes.
  cp --sparse=never raw img && rm raw
  "$hx" dev make-image tiny --size 1M --seed 9
  "$hx" export tiny --repo repo --password-file pw --output json > /dev/null
  bytes=$(stat -c %s img)
  cat img > /dev/null
  t0=$(now)
  "$hx" export img --repo repo --password-file pw --bwlimit "$rate" --output json | tail -1 > e.json
  t1=$(now)
  mkdir copy
  t2=$(now)
  rclone copy --config rclone.conf --bwlimit "$rate" img copy/
  t3=$(now)
  cmp -s img copy/img || { echo "rclone copy differs"; exit 1; }
  paced=$(python3 -c 'import json; print(json.load(open("e.json"))["result"]["seconds"])')
  echo "$t0 $t1 $t2 $t3 $bytes $limit $paced" | awk '{hx = $5 / ($2 - $1); rc = $5 / ($4 - $3); hp = $5 / $7;
    printf "%.3f %.3f %+.2f %+.2f %.3f %+.2f\n", hx / 1048576, rc / 1048576, (hx / $6 - 1) * 100, (rc / $6 - 1) * 100, hp / 1048576, (hp / $6 - 1) * 100}' >> results
  tail -1 results | awk -v r="$round" '{printf "round %s: hyperexport %.2f MiB/s (%s%%; %s%% over its own export time) | rclone %.2f MiB/s (%s%%)\n", r, $1, $3, $6, $2, $4}'
done
col() { awk -v c="$1" '{print $c}' results | median; }
echo
echo "median of $rounds rounds, $size image, limit $rate ($limit B/s), $(nproc) cores, $(rclone version | head -1)"
echo "| | achieved MiB/s | error |"
echo "|---|---|---|"
echo "| hyperexport export --bwlimit $rate | $(col 1) | $(col 3)% |"
echo "| rclone copy --bwlimit $rate | $(col 2) | $(col 4)% |"
echo "hyperexport over its export time alone (from the lock to the published point, without process start and key unlock): $(col 5) MiB/s, $(col 6)%"
