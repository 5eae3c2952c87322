#!/usr/bin/env bash
# Runs the library's kernel-free unit tests under Miri (undefined behaviour,
# data races and weak-memory effects in the Rust code itself; Miri cannot call
# memfd_create, fork, mmap of a file or io_uring, so only tests that do not
# touch the kernel can run). Multi-threaded tests (the rings' MPMC test) run
# under several scheduler seeds. Fails on any Miri error, on any failed test,
# and when a filter selects no test at all.
#
#   bash scripts/miri.sh                 # the rings: ring::
#   bash scripts/miri.sh ring:: futex::  # libtest filters (substrings)
#
# MIRI_SEEDS (default 16) seeds per run; MIRIFLAGS is passed on.
# Installs the nightly toolchain, miri and rust-src when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/nightly.sh
ensure_nightly miri rust-src

filters=("$@")
[ ${#filters[@]} -gt 0 ] || filters=(ring::)
# Miri's own target dir (target/miri): the normal build cache is untouched.
cargo +"$NIGHTLY" miri setup >/dev/null 2>&1 || cargo +"$NIGHTLY" miri setup

# A filter that matches nothing would pass silently: refuse it.
if ! listed=$(cargo +"$NIGHTLY" miri test -q --lib -- --list "${filters[@]}" 2>/tmp/miri-list.$$); then
    cat /tmp/miri-list.$$ >&2
    rm -f /tmp/miri-list.$$
    echo "miri.sh: could not list the tests" >&2
    exit 1
fi
rm -f /tmp/miri-list.$$
for f in "${filters[@]}"; do
    if ! grep -F -- "$f" <<<"$listed" | grep -q ': test$'; then
        echo "miri.sh: no test matches '$f'" >&2
        exit 1
    fi
done
echo "miri.sh: $(grep -c ': test$' <<<"$listed") tests, ${MIRI_SEEDS:-16} seeds: ${filters[*]}"

MIRIFLAGS="${MIRIFLAGS:-} -Zmiri-many-seeds=0..${MIRI_SEEDS:-16}" \
    cargo +"$NIGHTLY" miri test -q --lib -- "${filters[@]}" 2>&1
