#!/usr/bin/env bash
# Whole-pipeline benchmark: HyperExport vs restic on the same 2 GiB image, in the same run.
#
# The image: half zeros (half of those sparse holes, half written zeros), a quarter random, a
# quarter text-like, in 64 MiB stripes (`hyperexport dev make-image --layout bench`). Both tools
# encrypt (HyperExport: its defaults, zstd:1 + AES-256-GCM; restic: its defaults, repository v2 with zstd "auto"
# + AES-256-CTR/Poly1305). Both read from a warm page cache. Then 1% of the image is rewritten in
# 1 MiB runs and both back it up again (restic re-reads the whole file, its mtime changed).
#
# Usage: bash scripts/bench.sh [ROUNDS] (default 3; the median of each measure is reported)
set -euo pipefail
rounds="${1:-3}"
source "$(dirname "$0")/bench-lib.sh"
bench_setup bench restic:restic /usr/bin/time:time
cd "$work"
echo "bench password" > pw
export RESTIC_PASSWORD_FILE="$work/pw"

# Runs a command under GNU time; prints "seconds peak_rss_kib cpu_seconds" (user + system: on 2
# cores a tool whose CPU time is near twice its wall time is CPU-bound, and a machine's slower
# hour shows in both tools' CPU time).
measure() { sync; /usr/bin/time -f "%e %M %U %S" -o "$work/t" "$@" >/dev/null 2>"$work/err" || { cat "$work/err"; exit 1; }; awk '{printf "%s %s %.2f\n", $1, $2, $3 + $4}' "$work/t"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

: > results
for round in $(seq 1 "$rounds"); do
  rm -rf img hxrepo rrepo
  "$hx" dev make-image img --size 2G --layout bench --seed "$round"
  cat img > /dev/null
  read -r hx1 hxm1 hxc1 < <(measure "$hx" export img --repo hxrepo --password-file pw)
  restic init -q -r rrepo >/dev/null
  read -r r1 rm1 rc1 < <(measure restic -q -r rrepo backup img)
  "$hx" dev mutate img --percent 1 --seed "$((round + 100))" >/dev/null
  cat img > /dev/null
  read -r hx2 hxm2 hxc2 < <(measure "$hx" export img --repo hxrepo --password-file pw)
  read -r r2 rm2 rc2 < <(measure restic -q -r rrepo backup img)
  hxsize=$(du -sk hxrepo | cut -f1); rsize=$(du -sk rrepo | cut -f1)
  echo "$hx1 $hxm1 $r1 $rm1 $hx2 $hxm2 $r2 $rm2 $hxsize $rsize $hxc1 $rc1 $hxc2 $rc2" >> results
  echo "round $round: full hyperexport ${hx1}s restic ${r1}s | 1% changed hyperexport ${hx2}s restic ${r2}s"
done

col() { awk -v c="$1" '{print $c}' results | median; }
hx1=$(col 1); hxm1=$(col 2); r1=$(col 3); rm1=$(col 4); hx2=$(col 5); hxm2=$(col 6); r2=$(col 7); rm2=$(col 8); hxs=$(col 9); rs=$(col 10)
hxc1=$(col 11); rc1=$(col 12); hxc2=$(col 13); rc2=$(col 14)
# The speed-up is the median of the per-round ratios (each round measures both tools back to back).
ratio1=$(awk '{printf "%.3f\n", $3 / $1}' results | median)
ratio2=$(awk '{printf "%.3f\n", $7 / $5}' results | median)
mib() { awk -v k="$1" 'BEGIN {printf "%.0f", k / 1024}'; }
echo
echo "median of $rounds rounds, 2 GiB image, $(nproc) cores, $(restic version | cut -d' ' -f1-2)"
echo "| run | HyperExport s | restic s | speed-up (median of per-round ratios) | HyperExport peak RSS MiB | restic peak RSS MiB | HyperExport CPU s | restic CPU s |"
echo "|---|---|---|---|---|---|---|---|"
echo "| full export | $hx1 | $r1 | ${ratio1}x | $(mib "$hxm1") | $(mib "$rm1") | $hxc1 | $rc1 |"
echo "| after 1% change | $hx2 | $r2 | ${ratio2}x | $(mib "$hxm2") | $(mib "$rm2") | $hxc2 | $rc2 |"
# The machine's speed at the time, as a reference between invocations (SHA-256 is a third of
# HyperExport's CPU time): `openssl speed` when installed.
if command -v openssl >/dev/null; then
  openssl speed -evp sha256 -bytes 16384 -seconds 2 2>/dev/null |
    awk '$1 == "sha256" {printf "machine: openssl sha256 %.2f GB/s\n", $2 / 1e6}' || true
fi
echo "per-round speed-ups, full: $(awk '{printf "%.2f ", $3 / $1}' results)| after 1% change: $(awk '{printf "%.2f ", $7 / $5}' results)"
echo "repository size after both: HyperExport $(mib "$hxs") MiB, restic $(mib "$rs") MiB"
