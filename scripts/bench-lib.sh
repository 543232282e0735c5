# Sourced by the bench scripts. `bench_setup NAME [COMMAND:PACKAGE...]` goes to the repository
# root, installs what the bench needs (the build's packages always; the others as
# scripts/ensure-packages.sh reads them), builds the release binary into $hx, and makes a work
# folder $work that is removed on exit, after every process whose pid the bench added to the
# array `pids` is killed.
bench_setup() {
  local name=$1
  shift
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  bash scripts/ensure-packages.sh build "$@"
  cargo build --release --locked -p hyperexport >/dev/null 2>&1 || cargo build --release --locked -p hyperexport
  hx="$PWD/target/release/hyperexport"
  work=$(mktemp -d "${TMPDIR:-/var/tmp}/hx-$name.XXXXXX")
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
