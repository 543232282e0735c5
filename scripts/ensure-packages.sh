#!/usr/bin/env bash
# Installs the Debian packages that provide missing commands (or files), idempotently.
# Usage: bash scripts/ensure-packages.sh COMMAND:PACKAGE...   (e.g. qemu-img:qemu-utils)
# A COMMAND that is an absolute path is checked as a file or folder that must exist.
# The word `build` stands for what every build needs: protoc, and the well-known .proto files
# etcd-client's build imports (Debian's libprotobuf-dev, which protobuf-compiler only recommends).
set -euo pipefail
build=(protoc:protobuf-compiler /usr/include/google/protobuf/descriptor.proto:libprotobuf-dev)
need=()
pairs=()
for pair in "$@"; do
  if [ "$pair" = build ]; then pairs+=("${build[@]}"); else pairs+=("$pair"); fi
done
for pair in "${pairs[@]}"; do
  what="${pair%%:*}"
  case "$what" in
    /*) [ -e "$what" ] || need+=("${pair#*:}") ;;
    *) command -v "$what" >/dev/null 2>&1 || need+=("${pair#*:}") ;;
  esac
done
((${#need[@]})) || exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
