"""asyncloader: load many whole files fast, through io_uring, into memory
shared by worker processes.

A drop-in for the original ``AsyncLoader`` C/CPython module (same names,
same meanings) over ``libasyncloader.so`` via ctypes::

    import asyncloader

    with asyncloader.Loader(queue_depth=64, max_file_size=1 << 20, n_workers=1,
                            dispatch_n=8, idle_iters=16) as loader:
        loader.start()                      # or spawn_loader() / become_loader()
        worker = loader.get_worker_context(0)
        for entry in worker.load(paths, window=64):
            data = entry.get_data()          # bytes; raises OSError on failure

Byte ranges (``Worker.request_range``, ``Worker.load_ranges``; many of one
file in one call: ``pack_ranges`` and ``Worker.request_ranges``) and loads
into destination memory of any size (``Worker.request_into``,
``Worker.read_into``; ``Loader(arena_size=...)``, ``Loader.register``).

See ``docs/python.md`` in the repository for the whole guide.
"""

from ._entry import Entry
from ._loader import Loader, default_config
from ._util import MAX_PATH_BYTES
from ._worker import Worker
from ._ffi import AL_ARENA as ARENA
from ._ffi import AL_NO_DEST as NO_DEST
from ._ranges import pack_ranges
from ._ffi import LibraryNotFound, find_library

__all__ = [
    "Loader",
    "Worker",
    "Entry",
    "LibraryNotFound",
    "find_library",
    "library_version",
    "default_config",
    "probe",
    "DEFAULT_MAX_FILE_SIZE",
    "MAX_PATH_BYTES",
    "ARENA",
    "NO_DEST",
    "pack_ranges",
]

__version__ = "0.1.0"


def __getattr__(name: str):
    # DEFAULT_MAX_FILE_SIZE (the library's default ``max_file_size``) is
    # read from the library on first use: importing loads no library.
    if name == "DEFAULT_MAX_FILE_SIZE":
        return default_config()["max_file_size"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def library_version() -> str:
    """Version of the loaded ``libasyncloader.so`` (``"unknown"`` if it does
    not say)."""
    from . import _ffi

    lib = _ffi.lib()
    if lib.al_version is not None:
        v = lib.al_version()
        if v:
            return v.decode()
    return "unknown"


def probe(*paths) -> dict:
    """What this machine can do for the loader, as ``asyncloader info
    --json`` says it: the kernel, whether io_uring can be set up (and if not
    the errno and its likely cause: seccomp, the ``kernel.io_uring_disabled``
    sysctl, the kernel, ``RLIMIT_MEMLOCK``), the io_uring opcodes the engine
    needs, the backend ``auto`` picks, and for each path (file or directory)
    its file system, ``O_DIRECT`` and block-device queue. ``python -m
    asyncloader info [PATH...]`` prints it as text."""
    import json

    from . import _ffi

    return json.loads(_ffi.probe_report(paths, json_format=True))
