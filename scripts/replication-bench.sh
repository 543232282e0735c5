#!/usr/bin/env bash
# Replication bench (not a test): the first replication of a 2 GiB point between two processes on
# loopback (`hyperexport replicate` to `hyperexport replica serve`, QUIC with mutual TLS) vs `scp`
# of the same image to a local sshd, in the same run.
#
# The image is the one of scripts/bench.sh (half zeros, a quarter random, a quarter text-like).
# It is exported first (not timed): replication moves the chunks of a point that exists, as it
# does in a region's DR schedule. "Logical" throughput is the image size over the wall time;
# "wire" is what the sender put on the network (quinn's UDP payload bytes; for scp, the image
# size, which it sends uncompressed). The replica acknowledges chunks only after syncfs; scp's
# copy is left in the page cache.
#
# Usage: bash scripts/replication-bench.sh [ROUNDS] (default 3; medians reported)
set -euo pipefail
rounds="${1:-3}"
source "$(dirname "$0")/bench-lib.sh"
bench_setup rbench scp:openssh-client /usr/sbin/sshd:openssh-server
cd "$work"
echo "bench password" > pw

# A private sshd on a free loopback port, key authentication only.
ssh-keygen -q -t ed25519 -N '' -f hostkey
ssh-keygen -q -t ed25519 -N '' -f userkey
cp userkey.pub authorized_keys
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > sshd_config <<CFG
Port $port
ListenAddress 127.0.0.1
HostKey $work/hostkey
AuthorizedKeysFile $work/authorized_keys
PidFile $work/sshd.pid
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
Subsystem sftp /usr/lib/openssh/sftp-server
CFG
mkdir -p /run/sshd
/usr/sbin/sshd -f sshd_config -D -e 2> sshd.log &
pids+=($!)
ssh_opts=(-i "$work/userkey" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR)
for _ in $(seq 50); do ssh "${ssh_opts[@]}" -p "$port" 127.0.0.1 true 2>/dev/null && break; sleep 0.1; done
ssh "${ssh_opts[@]}" -p "$port" 127.0.0.1 true || { cat sshd.log; exit 1; }

# The cluster CA, a sender and a receiver.
"$hx" ca init --dir ca >/dev/null
"$hx" ca issue a --ca ca --out tls-a --san 127.0.0.1 >/dev/null
"$hx" ca issue b --ca ca --out tls-b --san 127.0.0.1 >/dev/null
"$hx" replica serve --listen 127.0.0.1:0 --root "$work/replicas" --tls tls-b >replica.out 2>replica.log &
pids+=($!)
for _ in $(seq 50); do grep -q "listening on" replica.out && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' replica.out)
[ -n "$addr" ] || { cat replica.log; exit 1; }

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
: > results
for round in $(seq 1 "$rounds"); do
  rm -rf img repo replicas/* copy.img
  "$hx" dev make-image img --size 2G --layout bench --seed "$round"
  vm=$("$hx" export img --repo repo --password-file pw --output json | python3 -c 'import json, sys; print([json.loads(l) for l in sys.stdin][-1]["result"]["vm"])')
  size=$(stat -c %s img)
  cat img repo/chunks/*/* > /dev/null
  sync
  t0=$(now)
  "$hx" replicate --repo repo --password-file pw --vm "$vm" --to "$addr" --tls tls-a --output json | tail -1 > r.json
  t1=$(now)
  wire=$(python3 -c 'import json; print(json.load(open("r.json"))["result"]["wire_bytes"])')
  sync
  t2=$(now)
  scp -q "${ssh_opts[@]}" -P "$port" img "127.0.0.1:$work/copy.img"
  t3=$(now)
  cmp -s img copy.img || { echo "scp copy differs"; exit 1; }
  echo "$t0 $t1 $t2 $t3 $size $wire" | awk '{hx = $2 - $1; scp = $4 - $3; printf "%.3f %.3f %.4f %.4f %.1f %.1f %.3f\n", hx, scp, $5 / hx / 1e9, $5 / scp / 1e9, $6 / hx / 1e6, $5 / scp / 1e6, scp / hx}' >> results
  tail -1 results | awk -v r="$round" '{printf "round %s: replicate %.2f s (%.3f GB/s logical, %.0f MB/s wire) | scp %.2f s (%.3f GB/s) | %.2fx\n", r, $1, $3, $5, $2, $4, $7}'
done
col() { awk -v c="$1" '{print $c}' results | median; }
echo
echo "median of $rounds rounds, 2 GiB image, $(nproc) cores, $(ssh -V 2>&1 | cut -d, -f1)"
echo "| | seconds | logical GB/s | wire MB/s |"
echo "|---|---|---|---|"
echo "| hyperexport replicate | $(col 1) | $(col 3) | $(col 5) |"
echo "| scp | $(col 2) | $(col 4) | $(col 6) |"
echo "speed-up (median of per-round ratios): $(col 7)x; per round: $(awk '{printf "%.2f ", $7}' results)"
