"""Builds libasyncloader.so with setuptools-rust and ships it in the package.

Both ``pip install ./python`` and ``pip install .`` (from the repository
root, whose setup.py runs this file) build the C-ABI library from the
repository's ``Cargo.toml`` with setuptools-rust in its ``Binding.NoBinding``
mode (a cdylib that Python loads with ctypes, not an extension module), as
``cargo rustc --lib --release --locked --no-default-features --crate-type
cdylib`` (no CLI crates), and install it as ``asyncloader/libasyncloader.so``,
where ``asyncloader._ffi`` looks first. The wheel is tagged
``py3-none-<platform>``: any CPython 3 on the platform can load the library.
``auditwheel repair`` turns it into a ``manylinux`` wheel (see docs/python.md).

Environment:

* ``ASYNCLOADER_LIB=/path/libasyncloader.so`` - ship that file instead of
  building (a library built elsewhere; no Rust toolchain needed). At run
  time the same variable overrides the packaged library.
* ``SETUPTOOLS_RUST_CARGO_PROFILE=dev`` - build another cargo profile.
* ``CARGO`` - the cargo executable (setuptools-rust's rule).
"""

import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = Path(__file__).resolve().parent  # python/
REPO = HERE.parent
LIB = "libasyncloader.so"
PREBUILT = os.environ.get("ASYNCLOADER_LIB")


def rel(p: Path) -> str:
    """setuptools wants paths relative to the directory it runs in."""
    return os.path.relpath(p, os.getcwd())


class BinaryDistribution(Distribution):
    """The wheel holds a native library: make it platform-specific."""

    def has_ext_modules(self):
        return True


cmdclass = {}

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

kwargs = {}
if PREBUILT:

    class BuildPyWithLib(build_py):
        """build_py that also copies the prebuilt library."""

        def run(self):
            super().run()
            dest = Path(self.build_lib) / "asyncloader" / LIB
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PREBUILT, dest)
            print(f"asyncloader: copied {PREBUILT} -> {dest}", flush=True)

    cmdclass["build_py"] = BuildPyWithLib
else:
    from setuptools_rust import Binding, RustExtension, Strip
    from setuptools_rust.build import build_rust

    class BuildRust(build_rust):
        """Installs the cdylib as ``asyncloader/libasyncloader.so``, the name
        ``asyncloader._ffi`` loads, instead of an extension-module name
        (``libasyncloader.cpython-311-x86_64-linux-gnu.so``)."""

        def get_dylib_ext_path(self, ext, target_fname):
            return str(Path(super().get_dylib_ext_path(ext, target_fname)).with_name(LIB))

    cmdclass["build_rust"] = BuildRust
    kwargs["rust_extensions"] = [
        RustExtension(
            "asyncloader.libasyncloader",
            path=rel(REPO / "Cargo.toml"),
            binding=Binding.NoBinding,
            # The library only: clap, indicatif, serde_json are the CLI's.
            args=["--no-default-features"],
            cargo_manifest_args=["--locked"],
            strip=Strip.Debug,
        )
    ]

if rel(HERE) != ".":  # run from the repository root (./setup.py)
    kwargs["package_dir"] = {"": rel(HERE)}

setup(cmdclass=cmdclass, distclass=BinaryDistribution, zip_safe=False, **kwargs)
