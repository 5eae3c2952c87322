#!/usr/bin/env bash
# Builds the library and puts its pkg-config file where pkg-config finds it.
#
#   scripts/pkgconfig.sh --release     # any `cargo build` arguments
#   export PKG_CONFIG_PATH=$PWD/target/release/pkgconfig
#
# build.rs writes asyncloader.pc only into its OUT_DIR (cargo's rule for
# build scripts); this copies it to <target>/<profile>/pkgconfig/, next to
# the built library, and prints the PKG_CONFIG_PATH to use.
set -euo pipefail
cd "$(dirname "$0")/.."
# Cargo reports the build script's OUT_DIR (also when the script did not
# rerun) in its JSON messages.
out=$(cargo build --message-format=json "$@" |
    grep '"reason":"build-script-executed"' |
    sed -n 's|.*"out_dir":"\([^"]*/build/asyncloader-[0-9a-f]*/out\)".*|\1|p' |
    tail -n 1)
if [ -z "$out" ] || [ ! -f "$out/asyncloader.pc" ]; then
    echo "scripts/pkgconfig.sh: cargo did not report asyncloader's OUT_DIR with asyncloader.pc" >&2
    exit 1
fi
libdir=$(sed -n 's/^libdir=//p' "$out/asyncloader.pc")
mkdir -p "$libdir/pkgconfig"
cp "$out/asyncloader.pc" "$libdir/pkgconfig/asyncloader.pc"
echo "export PKG_CONFIG_PATH=$libdir/pkgconfig"
