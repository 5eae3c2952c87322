"""Builds libasyncloader.so with cargo and ships it inside the package.

``pip install ./python`` (from the repository root) runs ``cargo build
--release --lib`` in the repository (the directory above this one), asks cargo
where the cdylib went (so ``CARGO_TARGET_DIR`` and workspace layouts work) and
copies it into the wheel as ``asyncloader/libasyncloader.so``.

Environment:

* ``ASYNCLOADER_LIB=/path/libasyncloader.so`` - ship that file instead of
  building (e.g. a library built elsewhere).
* ``ASYNCLOADER_CARGO_PROFILE=debug`` - build the debug profile.
* ``CARGO`` - the cargo executable (default: ``cargo`` on PATH, then
  ``~/.cargo/bin/cargo``).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LIB = "libasyncloader.so"


def _cargo() -> str:
    c = os.environ.get("CARGO") or shutil.which("cargo")
    if c:
        return c
    home = Path.home() / ".cargo" / "bin" / "cargo"
    if home.exists():
        return str(home)
    sys.exit(
        "asyncloader: cargo not found. Install Rust (https://rustup.rs) or set "
        "ASYNCLOADER_LIB to a prebuilt libasyncloader.so"
    )


def build_library() -> Path:
    prebuilt = os.environ.get("ASYNCLOADER_LIB")
    if prebuilt:
        return Path(prebuilt)
    manifest = REPO / "Cargo.toml"
    if not manifest.exists():
        sys.exit(f"asyncloader: {manifest} not found; build from a clone of the repository")
    profile = os.environ.get("ASYNCLOADER_CARGO_PROFILE", "release")
    cmd = [
        _cargo(),
        "build",
        "--lib",
        "--manifest-path",
        str(manifest),
        "--message-format=json-render-diagnostics",
    ]
    if profile == "release":
        cmd.append("--release")
    elif profile != "debug":
        cmd += ["--profile", profile]
    print("asyncloader: running", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"asyncloader: cargo build failed (exit {proc.returncode})")
    found = None
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") != "compiler-artifact":
            continue
        if msg.get("target", {}).get("name") != "asyncloader":
            continue
        for f in msg.get("filenames", []):
            if f.endswith("/" + LIB):
                found = Path(f)
    if found is None or not found.exists():
        sys.exit(f"asyncloader: cargo did not report {LIB}")
    return found


class BuildPyWithLib(build_py):
    """build_py that also builds and copies the shared library."""

    def run(self):
        super().run()
        lib = build_library()
        dest = Path(self.build_lib) / "asyncloader" / LIB
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib, dest)
        print(f"asyncloader: copied {lib} -> {dest}", flush=True)


class BinaryDistribution(Distribution):
    """The wheel holds a native library: make it platform-specific."""

    def has_ext_modules(self):
        return True


cmdclass = {"build_py": BuildPyWithLib}

try:  # a ctypes library: any CPython 3 on this platform can use the wheel
    try:
        from setuptools.command.bdist_wheel import bdist_wheel
    except ImportError:  # setuptools < 70.1
        from wheel.bdist_wheel import bdist_wheel

    class BdistWheel(bdist_wheel):
        def get_tag(self):
            _py, _abi, plat = super().get_tag()
            return "py3", "none", plat

    cmdclass["bdist_wheel"] = BdistWheel
except ImportError:
    pass

setup(cmdclass=cmdclass, distclass=BinaryDistribution)
