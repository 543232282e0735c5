#!/usr/bin/env bash
# Installs the Debian packages that provide missing commands (or files), idempotently.
# Usage: bash scripts/ensure-packages.sh COMMAND:PACKAGE...   (e.g. protoc:protobuf-compiler)
# A COMMAND that is an absolute path is checked as a file or folder that must exist.
set -euo pipefail
need=()
for pair in "$@"; do
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
