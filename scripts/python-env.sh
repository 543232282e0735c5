#!/usr/bin/env bash
# A Python virtual environment with grpcio for the cross-language API test, at target/pyenv
# (idempotent). Prints the interpreter's path.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-packages.sh python3:python3
# `venv` is in the standard library, but on Debian the `ensurepip` it needs comes with python3-venv.
if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
fi
env=target/pyenv
if [ ! -x "$env/bin/python" ] || ! "$env/bin/python" -c "import grpc, grpc_tools" 2>/dev/null; then
  python3 -m venv "$env"
  "$env/bin/pip" install -q --disable-pip-version-check grpcio==1.85.1 grpcio-tools==1.85.1
fi
echo "$PWD/$env/bin/python"
