"""``pip install .`` from the repository root: the Python package lives in
``python/`` and python/setup.py builds it (setuptools-rust, the library
without the CLI features); this file only runs that one from here."""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parent / "python" / "setup.py"), run_name="__main__")
