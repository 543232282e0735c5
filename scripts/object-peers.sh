#!/usr/bin/env bash
# The object store servers the tests run on loopback, installed under target/peers (idempotent):
#   target/peers/moto/bin/moto_server            S3-compatible server (moto[server], PyPI)
#   target/peers/azurite/node_modules/.bin/azurite-blob   Azure Blob emulator (azurite, npm)
# Prints nothing on success.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-packages.sh python3:python3 npm:npm
if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
fi
moto=target/peers/moto
if [ ! -x "$moto/bin/moto_server" ]; then
  python3 -m venv "$moto"
  "$moto/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5'
fi
azurite=target/peers/azurite
if [ ! -x "$azurite/node_modules/.bin/azurite-blob" ]; then
  mkdir -p "$azurite"
  (cd "$azurite" && npm install --silent --no-fund --no-audit --no-save azurite@3.37.0 >/dev/null)
fi
