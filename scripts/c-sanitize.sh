#!/usr/bin/env bash
# Builds the C ABI's C and C++ programs (tests/c/*.c, examples/c, examples/cpp)
# with -fsanitize=address,undefined against the debug libasyncloader.so and
# runs them on generated files. Exits non-zero on any sanitizer report, leak,
# failed check or byte mismatch.
#
#   scripts/c-sanitize.sh            # uses $CARGO_TARGET_DIR or ./target
#
# The Rust library itself is not instrumented (that is Miri's and the Rust
# tests' job); this catches misuse of the ABI by C callers that the library
# lets through, and memory errors the library causes in C memory (writes
# through output pointers, handles, strings it returns).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

have() { command -v "$1" >/dev/null 2>&1; }
if ! have cc || ! have c++; then
    if have apt-get; then
        apt-get update -qq && apt-get install -y -qq gcc g++
    else
        echo "c-sanitize: need cc and c++" >&2
        exit 1
    fi
fi

cargo build --lib
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LIB=$TARGET_DIR/debug
[ -f "$LIB/libasyncloader.so" ] || { echo "c-sanitize: no $LIB/libasyncloader.so" >&2; exit 1; }

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
SAN=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1)
WARN=(-Wall -Wextra -Werror)
LINK=(-L"$LIB" -Wl,-rpath,"$LIB" -lasyncloader -lpthread)

# The sanitizer runtimes ship with gcc but some images lack them (libasan*).
echo 'int main(void){return 0;}' >"$OUT/probe.c"
if ! cc "${SAN[@]}" "$OUT/probe.c" -o "$OUT/probe" 2>/dev/null; then
    if have apt-get; then
        apt-get update -qq && apt-get install -y -qq gcc g++
    fi
    cc "${SAN[@]}" "$OUT/probe.c" -o "$OUT/probe"
fi

echo "c-sanitize: building"
cc -std=c11 "${WARN[@]}" "${SAN[@]}" -Iinclude tests/c/errors.c "${LINK[@]}" -o "$OUT/errors"
cc -std=c11 "${WARN[@]}" "${SAN[@]}" -Iinclude tests/c/attach.c "${LINK[@]}" -o "$OUT/attach"
cc -std=c11 "${WARN[@]}" "${SAN[@]}" -Iinclude tests/c/hardening.c "${LINK[@]}" -o "$OUT/hardening"
cc -std=c11 "${WARN[@]}" "${SAN[@]}" -Iinclude tests/c/epoll.c "${LINK[@]}" -o "$OUT/epoll"
cc -std=c11 "${WARN[@]}" "${SAN[@]}" -Iinclude tests/c/batch.c "${LINK[@]}" -o "$OUT/batch"
cc -std=c11 "${WARN[@]}" "${SAN[@]}" -Iinclude tests/c/ranges.c "${LINK[@]}" -o "$OUT/ranges"
cc -std=c11 "${WARN[@]}" "${SAN[@]}" -Iinclude examples/c/load_dir.c "${LINK[@]}" -o "$OUT/load_dir"
cc -std=c11 "${WARN[@]}" "${SAN[@]}" -Iinclude examples/c/epoll_dir.c "${LINK[@]}" -o "$OUT/epoll_dir"
cc -std=c11 "${WARN[@]}" "${SAN[@]}" -Iinclude examples/c/read_ranges.c "${LINK[@]}" -o "$OUT/read_ranges"
c++ -std=c++17 "${WARN[@]}" "${SAN[@]}" -Iinclude examples/cpp/load_dir.cpp "${LINK[@]}" -o "$OUT/load_dir_cpp"

export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

echo "c-sanitize: generating files"
DATA=$OUT/data
mkdir -p "$DATA/a" "$DATA/b"
for i in $(seq 1 300); do
    d=$DATA/a; [ $((i % 2)) -eq 0 ] && d=$DATA/b
    head -c $(( (i * 7919) % 70000 )) /dev/urandom >"$d/f$i.bin"
done
: >"$DATA/empty.bin"
printf 'odd name' >"$DATA/$(printf 'odd-\377\376.bin')"

# Every program runs under a time limit: a hang fails the script instead of
# holding CI until its own limit.
T="timeout --kill-after=10 120"

# tests/c/errors.c, hardening.c, epoll.c, batch.c and ranges.c are tests/c/runner.h
# programs: "all" runs every case in a forked child of its own (own loader,
# own scratch subdirectory, the sanitizers' leak check at its exit) and prints
# "ok NAME" or "FAIL NAME: reason" per case. The "old caller" structs of
# hardening.c sit in heap blocks of exactly their size, so ASan reports any
# access past them; its fork cases use a loader process (al_loader_spawn):
# no threads when they fork.
for prog in errors hardening epoll batch ranges; do
    echo "c-sanitize: tests/c/$prog.c"
    mkdir -p "$OUT/scratch-$prog"
    $T "$OUT/$prog" all "$OUT/scratch-$prog"
done

echo "c-sanitize: examples/c/load_dir.c"
$T "$OUT/load_dir" "$DATA" 3 2

echo "c-sanitize: examples/c/epoll_dir.c"
$T "$OUT/epoll_dir" "$DATA/a"

echo "c-sanitize: examples/c/read_ranges.c"
TMPDIR=$OUT $T "$OUT/read_ranges"
$T "$OUT/read_ranges" "$DATA/a/f1.bin" 0:10 3:5000 7000:100000 0:0

echo "c-sanitize: examples/cpp/load_dir.cpp"
# Only the "spawn" mode here: "start" forks worker processes while loader
# threads run in the parent, and ASan's allocator (unlike glibc's malloc) has
# no fork handlers, so a child forked while a loader thread held its lock
# deadlocks in its first allocation (seen once in CI). The "start" mode runs
# without sanitizers in tests/c_abi.rs.
$T "$OUT/load_dir_cpp" "$DATA" 3 spawn

echo "c-sanitize: tests/c/attach.c"
# "serve" prints the loader's name and runs until its stdin closes; "work"
# is a separately started process that attaches by that name.
mkfifo "$OUT/ctl"
"$OUT/attach" serve <"$OUT/ctl" >"$OUT/serve.out" &
SERVE_PID=$!
exec {CTL}>"$OUT/ctl"
for _ in $(seq 1 100); do
    [ -s "$OUT/serve.out" ] && break
    sleep 0.1
done
NAME=$(head -n1 "$OUT/serve.out")
$T "$OUT/attach" work "$NAME" "$DATA"/a/f1.bin "$DATA"/b/f2.bin "$DATA/empty.bin"
exec {CTL}>&-
wait "$SERVE_PID"
tail -n +2 "$OUT/serve.out"

echo "c-sanitize: all passed"
