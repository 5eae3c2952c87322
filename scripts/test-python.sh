#!/usr/bin/env bash
# Installs the Python package from this checkout (it builds the shared
# library with cargo) plus pytest, then runs the Python tests against the
# installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# numpy: the optional dependency of Entry.numpy(), whose tests skip without it.
"$PY" -m pip install -q --disable-pip-version-check pytest numpy
"$PY" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps ./python
# Run from outside the source tree so `import asyncloader` is the installed one.
cd python/tests
"$PY" -m pytest -q -p no:cacheprovider .
