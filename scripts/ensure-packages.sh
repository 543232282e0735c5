#!/usr/bin/env bash
# Installs the Debian packages that provide missing commands, idempotently.
# Usage: bash scripts/ensure-packages.sh COMMAND:PACKAGE...   (e.g. protoc:protobuf-compiler)
set -euo pipefail
need=()
for pair in "$@"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
((${#need[@]})) || exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
