#!/usr/bin/env bash
# The C library as users install it: `cargo cinstall` (cargo-c) into a
# temporary prefix, then examples/c/load_dir.c built with nothing but
# `pkg-config --cflags --libs asyncloader` from that prefix and run over a
# small data set, and a check that the header's version macros match the
# installed library (al_version, al_abi_version) and its soname is
# libasyncloader.so.MAJOR (0.MINOR while the version is 0.x).
#   bash scripts/test-cinstall.sh
# Skips (exit 0, says so) when cargo-c is not installed, unless
# REQUIRE_CARGO_C=1 (CI). Install it with:
#   cargo install cargo-c --version 0.10.24 --locked
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
# The C library is the crate without the `cli` feature: none of the CLI's
# crates may be in its dependency tree.
if cargo tree -e normal -p asyncloader --no-default-features --prefix none |
    grep -E '^(clap|indicatif|serde_json) '; then
    echo "the library depends on CLI crates" >&2
    exit 1
fi
if ! cargo cinstall --version >/dev/null 2>&1; then
    if [ "${REQUIRE_CARGO_C:-0}" = 1 ]; then
        echo "cargo-c is not installed (cargo install cargo-c --version 0.10.24 --locked)" >&2
        exit 1
    fi
    echo "SKIP: cargo-c is not installed (cargo install cargo-c --version 0.10.24 --locked)"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix

echo "== cargo cinstall --prefix=$prefix"
t0=$(date +%s)
cargo cinstall --release --no-default-features --prefix="$prefix" --libdir="$prefix/lib"
echo "cinstall took $(($(date +%s) - t0)) s"
major=$(sed -n 's/^#define AL_VERSION_MAJOR \([0-9]*\)$/\1/p' include/asyncloader.h)
minor=$(sed -n 's/^#define AL_VERSION_MINOR \([0-9]*\)$/\1/p' include/asyncloader.h)
# The soname carries the version part that breaks compatibility (semver, as
# cargo-c applies it): MAJOR from 1.0 on, 0.MINOR before.
if [ "$major" = 0 ]; then abi="0.$minor"; else abi=$major; fi
for f in include/asyncloader.h lib/libasyncloader.a lib/libasyncloader.so \
    "lib/libasyncloader.so.$abi" lib/pkgconfig/asyncloader.pc; do
    [ -e "$prefix/$f" ] || { echo "missing: $prefix/$f" >&2; ls -lR "$prefix" >&2; exit 1; }
done
cmp include/asyncloader.h "$prefix/include/asyncloader.h" ||
    { echo "installed header differs from include/asyncloader.h" >&2; exit 1; }
soname=$(readelf -d "$prefix/lib/libasyncloader.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = "libasyncloader.so.$abi" ] ||
    { echo "soname is '$soname', want libasyncloader.so.$abi" >&2; exit 1; }
echo "soname: $soname"

export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
flags=$(pkg-config --cflags --libs asyncloader)
echo "pkg-config --cflags --libs asyncloader: $flags"
echo "== build examples/c/load_dir.c against the prefix"
# shellcheck disable=SC2086
cc -O2 -std=c11 examples/c/load_dir.c $flags -lpthread -o "$tmp/load_dir"
cat > "$tmp/version.c" <<'C'
#include <asyncloader.h>
#include <stdio.h>
#include <string.h>
int main(void) {
    char want[64];
    snprintf(want, sizeof want, "%d.%d.%d", AL_VERSION_MAJOR, AL_VERSION_MINOR, AL_VERSION_PATCH);
    if (strcmp(al_version(), AL_VERSION_STRING) != 0 || strcmp(want, AL_VERSION_STRING) != 0 ||
        al_abi_version() != AL_ABI_VERSION) {
        fprintf(stderr, "header %s (%s, ABI %d) but library %s (ABI %u)\n", AL_VERSION_STRING,
                want, AL_ABI_VERSION, al_version(), al_abi_version());
        return 1;
    }
    printf("header and library: asyncloader %s, ABI %u\n", al_version(), al_abi_version());
    return 0;
}
C
# shellcheck disable=SC2086
cc -std=c11 "$tmp/version.c" $flags -o "$tmp/version"
# A prefix off the linker's path: the program finds the library the way any
# program using a library installed there does.
export LD_LIBRARY_PATH=$prefix/lib
"$tmp/version"
ldd "$tmp/load_dir" > "$tmp/ldd.txt"
grep -q "=> $prefix/lib/libasyncloader.so.$abi " "$tmp/ldd.txt" ||
    { echo "load_dir is not linked against the installed library" >&2; ldd "$tmp/load_dir" >&2; exit 1; }
mkdir -p "$tmp/data/sub"
for i in $(seq 1 40); do
    head -c $((i * 997)) /dev/urandom > "$tmp/data/f$i"
    head -c $((i * 31)) /dev/urandom > "$tmp/data/sub/g$i"
done
: > "$tmp/data/empty"
echo "== load_dir over 81 files"
timeout 60 "$tmp/load_dir" "$tmp/data" 2 1
echo "cinstall test: ok"
