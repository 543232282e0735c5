#!/usr/bin/env bash
# The demo on a fresh Debian machine with only the Rust toolchain: installs protoc (needed to
# build the gRPC API) when missing, builds in release mode and runs `hyperexport demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-packages.sh protoc:protobuf-compiler /usr/include/google/protobuf/descriptor.proto:libprotobuf-dev
exec cargo run --release --locked -p hyperexport -- demo "$@"
