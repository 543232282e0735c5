#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine that has only the Rust toolchain:
# installs the system packages the tests use when they are missing (idempotent), builds the
# binary the multi-process tests run, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v qemu-img >/dev/null || need+=(qemu-utils)      # qcow2/vmdk sources and outputs
command -v xmllint >/dev/null || need+=(libxml2-utils)    # independent check of OVF descriptors
command -v tar >/dev/null || need+=(tar)
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Lints first when the toolchain has them (rustup's default profile does).
if cargo fmt --version >/dev/null 2>&1; then cargo fmt --all --check; fi
if cargo clippy --version >/dev/null 2>&1; then cargo clippy --locked --workspace --all-targets -- -D warnings; fi

cargo build --locked -p hyperexport
cargo test --locked --workspace
