#!/usr/bin/env bash
# Model-checks the lock-free rings with loom (every interleaving of small
# producer/consumer scenarios under the C11 memory model).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom"
# build.rs (cbindgen) and the binary are not needed for the model.
RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}" \
    cargo test --release --lib ring::loom_tests 2>&1
