#!/usr/bin/env bash
# Runs the multi-threaded tests under ThreadSanitizer: the engine in threads
# mode (loader threads, worker threads and the thread-pool backend all in the
# test's own process) on every backend path, and the rings' and futexes'
# unit tests. Everything, std included, is instrumented (-Zbuild-std).
#
#   bash scripts/tsan.sh
#
# Fails on the first report (halt_on_error=1), on any failed test, and when
# a listed test no longer exists.
#
# What TSan cannot see, and why that is fine here:
# - io_uring's kernel-side reads into entry buffers are not memory accesses
#   TSan knows of: the buffer is published to the worker by the ring's
#   release/acquire, which TSan does see (the thread-pool backend's `pread`
#   runs in user threads and is checked fully).
# - futex wait/wake (src/futex.rs) only put threads to sleep; every value
#   they guard is an atomic, so no happens-before is taken from them.
# Tests that fork are left out: TSan does not support a child that starts
# threads after a multi-threaded fork (die_after_fork), and the loader
# process, forked workers and the soak test fork by design. The C programs
# and the process mode are covered by scripts/c-sanitize.sh and the suite.
#
# Uses its own target dir (target/tsan) so the normal build cache stays
# valid. Installs the nightly toolchain and rust-src when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/nightly.sh
ensure_nightly rust-src

host=$(rustc +"$NIGHTLY" -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Zsanitizer=thread"
export RUSTDOCFLAGS="-Zsanitizer=thread"
# No suppressions: none of the reports seen so far was a false positive. If
# one is ever needed, add `suppressions=scripts/tsan.supp` here and, next to
# each line of that file, why the report is a false positive.
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
cargo_tsan() {
    cargo +"$NIGHTLY" test -Zbuild-std --target "$host" --target-dir target/tsan "$@"
}

# tests/engine.rs: every test whose loader runs as threads of the test
# process (Mode::Threads, Mode::Become, Loader::start) and that does not fork.
engine_tests=(
    sizes_threads_buffered_dispatch_1
    sizes_threads_buffered_dispatch_8
    sizes_threads_direct_dispatch_1
    sizes_threads_direct_dispatch_8
    sizes_become_loader_buffered_dispatch_1
    sizes_become_loader_direct_dispatch_4
    direct_on_a_file_system_that_may_refuse_it
    direct_reads_are_direct_on_ext4
    several_worker_threads
    stress_20k_requests_random_release_order
    missing_file_is_enoent
    directory_is_eisdir
    fifo_is_einval
    dev_zero_is_einval
    dev_null_is_einval
    symlink_loop_is_eloop
    missing_directory_in_the_path_is_enoent
    file_used_as_a_directory_in_the_path_is_enotdir
    symlink_to_a_file_loads
    procfs_file_with_zero_stat_size_loads_its_content
    empty_path_is_invalid_path_and_queues_nothing
    path_over_path_max_is_enametoolong_and_queues_nothing
    path_with_a_nul_inside_is_invalid_path_and_queues_nothing
    requests_queue_before_start_until_queue_depth_then_queue_full
    worker_id_out_of_range_is_invalid_argument
    start_twice_is_busy
    path_of_exactly_path_max_minus_one_is_accepted
    wait_get_times_out_without_requests
    attach_by_name_shares_the_loader
    attach_to_a_gone_or_malformed_name_is_an_error
    file_that_grows_past_the_limit_while_queued_is_efbig
    requests_wait_for_dispatch_n_then_go_in_one_batch
    idle_iters_dispatches_a_partial_batch
    uncached_and_partly_cached_files_load_whole
    fifo_with_a_silent_writer_does_not_block
    terminal_with_nothing_to_read_does_not_block
    empty_files_and_dev_null_are_told_apart
    fifo_holding_data_from_a_writer_that_left_is_not_a_file
    file_that_shrinks_after_its_request_loads_what_is_left
)
# (tests/lifecycle.rs has no such test: each one forks.)

echo "== tsan: build"
cargo_tsan --lib --test engine --no-run 2>&1

# A renamed test would silently drop out of the list: refuse that.
listed=$(cargo_tsan -q --test engine -- --list)
for t in "${engine_tests[@]}"; do
    grep -qx "$t: test" <<<"$listed" || { echo "tsan.sh: no test $t in tests/engine.rs" >&2; exit 1; }
done

echo "== tsan: ring and futex unit tests"
cargo_tsan -q --lib -- ring:: futex:: 2>&1

# The engine on each backend path the suite covers (see scripts/test-all.sh).
for env in "" ASYNCLOADER_BACKEND=threads ASYNCLOADER_STATX=async ASYNCLOADER_FAST=0; do
    echo "== tsan: engine in threads mode ${env:-(default)}"
    (
        [ -z "$env" ] || export "${env?}"
        cargo_tsan -q --test engine -- --exact "${engine_tests[@]}" 2>&1
    )
done
