#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests (which also build and run
# the C and C++ programs against the shared library), the C programs under
# AddressSanitizer/UBSan, Miri and ThreadSanitizer on the nightly toolchain,
# a short soak test, and the Python package's tests.
# Usage: bash scripts/test-all.sh      (from any directory)
set -euo pipefail
cd "$(dirname "$0")/.."

# A hang anywhere fails this script in bounded time (the tests themselves
# have timeouts; this is the net under them). The first run also compiles.
T="timeout --kill-after=30"

echo "== cargo test"
$T 1500 cargo test --all-targets --no-fail-fast 2>&1
# Doc tests are not part of --all-targets.
$T 600 cargo test --doc 2>&1
# The whole integration suite again on the thread-pool fallback backend.
echo "== integration tests on the fallback backend (ASYNCLOADER_BACKEND=threads)"
ASYNCLOADER_BACKEND=threads $T 600 cargo test --test engine --test lifecycle --test drive 2>&1
# And on the io_uring backend's other paths: every statx through io_uring
# (what cold metadata takes), and statx before every file (no optimistic
# chain: what cold data and O_DIRECT take).
# With a worker per core `start()` lets the workers drive their own loads
# (Drive::Auto): run the suites that use it once more with loader threads.
echo "== integration tests with loader threads (ASYNCLOADER_DRIVE=loader)"
ASYNCLOADER_DRIVE=loader $T 600 cargo test --test engine --test lifecycle --test hardening --test eventfd --test c_abi 2>&1
echo "== integration tests with io_uring statx (ASYNCLOADER_STATX=async)"
ASYNCLOADER_STATX=async $T 600 cargo test --test engine 2>&1
echo "== integration tests without the optimistic chain (ASYNCLOADER_FAST=0)"
ASYNCLOADER_FAST=0 $T 600 cargo test --test engine 2>&1
echo "== integration tests with the probe read in every optimistic chain (ASYNCLOADER_FAST=probe)"
ASYNCLOADER_FAST=probe $T 600 cargo test --test engine 2>&1

echo "== loom model of the rings"
$T 900 bash scripts/loom.sh

# Kernel-free unit tests under Miri (UB, data races; several scheduler
# seeds), and the threads-mode engine under ThreadSanitizer. Both install
# the nightly toolchain's components they need when missing.
echo "== Miri (scripts/miri.sh)"
$T 900 bash scripts/miri.sh ring:: futex:: backend::tests:: ffi::handles:: ffi::loader::tests::config
echo "== ThreadSanitizer (scripts/tsan.sh)"
$T 1200 bash scripts/tsan.sh

# Short soak: worker processes and the loader SIGKILLed at random while a
# mixed tree loads (run it longer on demand: tests/soak.rs).
echo "== soak (${ASYNCLOADER_SOAK_SECS:=45} s)"
ASYNCLOADER_SOAK_SECS=$ASYNCLOADER_SOAK_SECS $T $((ASYNCLOADER_SOAK_SECS + 600)) \
    cargo test --test soak -- --ignored --nocapture 2>&1

if [ -f scripts/c-sanitize.sh ]; then
    echo "== C programs under sanitizers"
    $T 900 bash scripts/c-sanitize.sh
fi

if [ -f python/pyproject.toml ]; then
    echo "== Python package"
    $T 900 bash scripts/test-python.sh
    # PyTorch integration (asyncloader.torch) with real torch, from a cached
    # venv (~/.cache/asyncloader-torch-venv, created the first time); skipped
    # loudly only when torch cannot be installed.
    echo "== Python package with PyTorch (scripts/torch-venv.sh)"
    $T 1500 bash scripts/torch-venv.sh
fi

# Packaging: the C library installed with cargo cinstall into a temporary
# prefix and used through pkg-config alone (skipped with a message when
# cargo-c is missing, except in CI, which installs it); the Python wheel built,
# auditwheel-repaired and tested in a fresh venv without cargo on PATH.
echo "== C library via cargo cinstall + pkg-config"
REQUIRE_CARGO_C=${CI:+1} $T 900 bash scripts/test-cinstall.sh
echo "== Python wheel: pip wheel ., auditwheel repair, fresh venv without cargo"
$T 1200 bash scripts/test-wheel.sh
