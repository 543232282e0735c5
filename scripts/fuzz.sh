#!/usr/bin/env bash
# Runs every cargo-fuzz target for RUNS executions each (default 1,000,000) and prints the counts.
# cargo-fuzz needs nightly features; the stable toolchain is used with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
runs="${1:-1000000}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  log=$(mktemp)
  if ! cargo fuzz run "$target" "corpus/$target" -- -runs="$runs" -max_len=65536 -rss_limit_mb=2048 >"$log" 2>&1; then
    tail -40 "$log"; echo "fuzz target $target FAILED"; exit 1
  fi
  done_line=$(grep -E "^Done [0-9]+ runs" "$log" | tail -1)
  echo "$target: ${done_line:-no summary}"
  rm -f "$log"
done
