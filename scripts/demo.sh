#!/usr/bin/env bash
# The demo on a fresh Debian machine with only the Rust toolchain: installs protoc and the
# well-known .proto files (needed to build the gRPC API) when missing, builds in release mode and
# runs `hyperexport demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-packages.sh build
exec cargo run --release --locked -p hyperexport -- demo "$@"
