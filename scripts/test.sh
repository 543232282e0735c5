#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine that has only the Rust toolchain:
# installs the system packages the build and tests use when they are missing (idempotent),
# builds the binary the multi-process tests run, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# protoc builds proto/ (the gRPC API); qemu-img reads and writes qcow2/vmdk; xmllint checks OVF
# descriptors independently; tar lists OVAs; promtool (Debian prometheus) lints /metrics; etcd
# (Debian etcd-server, 3.4) holds the state of coordinators started with --store etcd://; the
# vSphere API simulator (govmomi's, Debian golang-github-vmware-govmomi-dev) is built with Go by
# the test harness from tests/vcsim/main.go; OpenSSH's sshd serves SFTP repositories.
bash scripts/ensure-packages.sh build qemu-img:qemu-utils xmllint:libxml2-utils tar:tar promtool:prometheus etcd:etcd-server \
  go:golang-go /usr/share/gocode/src/github.com/vmware/govmomi/simulator:golang-github-vmware-govmomi-dev curl:curl \
  /usr/sbin/sshd:openssh-server ssh-keygen:openssh-client
# S3 (moto) and Azure Blob (Azurite) servers for the object store tests, under target/peers.
bash scripts/object-peers.sh

# Lints first when the toolchain has them (rustup's default profile does).
if cargo fmt --version >/dev/null 2>&1; then cargo fmt --all --check; fi
if cargo clippy --version >/dev/null 2>&1; then cargo clippy --locked --workspace --all-targets -- -D warnings; fi

cargo build --locked -p hyperexport
# Every test bounds its own waits; this bound catches one that does not, so that a hang ends as a
# failed run (cargo names tests running over 60 s) instead of outliving CI's limit. The suite
# takes about 16 minutes on 2 cores.
status=0
timeout --kill-after=30s "${HYPEREXPORT_TEST_TIMEOUT:-50m}" cargo test --locked --workspace || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "test suite stopped after ${HYPEREXPORT_TEST_TIMEOUT:-50m}: a test hung (see 'has been running for over 60 seconds' above)" >&2
fi
exit "$status"
