#!/usr/bin/env bash
# Creates (once) or reuses the cached virtual environment with PyTorch (CPU
# use; PyPI's wheel, ~5 GB with its CUDA libraries), Pillow and numpy, then
# installs this checkout's Python package and pytest into it and runs the
# torch tests (python/tests/test_torch.py, test_torch_ranges.py) with it.
#
#   bash scripts/torch-venv.sh            # create/reuse, install, test
#   TORCH_VENV=/path bash scripts/torch-venv.sh
#   bash scripts/torch-venv.sh --no-test  # only create/reuse and install
#
# The venv lives outside the checkout (default
# ~/.cache/asyncloader-torch-venv) so that later runs cost nothing. When torch
# cannot be installed (no network, no wheel for this Python), the script
# says so loudly and exits 0 without testing, unless REQUIRE_TORCH=1
# (then it fails).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TORCH_VENV:-$HOME/.cache/asyncloader-torch-venv}"
PY="${PYTHON:-python3}"
PIP=(-m pip install -q --disable-pip-version-check)

loud() {
    echo "################################################################" >&2
    echo "## $*" >&2
    echo "################################################################" >&2
}

if ! "$VENV/bin/python" -c "import torch, PIL, numpy" 2>/dev/null; then
    echo "== torch venv: creating $VENV (PyTorch from PyPI, takes minutes the first time)"
    t0=$(date +%s)
    # --system-site-packages: pytest and build tools of the system Python are reused.
    if ! { "$PY" -m venv --system-site-packages "$VENV" &&
           "$VENV/bin/python" "${PIP[@]}" torch pillow numpy; }; then
        loud "TORCH TESTS SKIPPED: could not install torch into $VENV (see the pip output above)"
        [ "${REQUIRE_TORCH:-0}" = 1 ] && exit 1
        exit 0
    fi
    echo "== torch venv: installed in $(( $(date +%s) - t0 )) s"
else
    echo "== torch venv: reusing $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
fi

"$VENV/bin/python" "${PIP[@]}" pytest
"$VENV/bin/python" "${PIP[@]}" --force-reinstall --no-deps ./python
[ "${1:-}" = "--no-test" ] && exit 0

# From outside the source tree, so `import asyncloader` is the installed one.
cd python/tests
ASYNCLOADER_REQUIRE_TORCH=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider test_torch.py test_torch_ranges.py
