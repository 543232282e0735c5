# Conveniences for developers; README's two commands work without `just`.

# Build a sample VM, export it twice, verify, restore, print a summary.
demo:
    bash scripts/demo.sh

# The whole test suite (installs missing system packages).
test:
    bash scripts/test.sh

# Lints as CI would want them.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# Export throughput vs restic on the same 2 GiB image.
bench:
    bash scripts/bench.sh

# Microbenchmarks of the chunk kernels.
bench-kernels:
    cargo bench -p hyperexport-shared

# Replication throughput vs scp on the same 2 GiB image.
bench-replication:
    bash scripts/replication-bench.sh

# The coordinator under 1,000 agents and 10,000 tasks.
bench-scale:
    bash scripts/scale-bench.sh

# Every fuzz target, a million executions each.
fuzz:
    bash scripts/fuzz.sh 1000000
