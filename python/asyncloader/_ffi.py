"""Locating ``libasyncloader.so`` and declaring its C functions for ctypes.

Everything here is private. The library is loaded with :class:`ctypes.CDLL`
(never ``PyDLL``), so every call into it releases the GIL for its duration:
a thread blocked in ``al_worker_wait_get`` or ``al_loader_become`` does not
stop other Python threads.

Search order for the shared library (first hit wins):

1. ``$ASYNCLOADER_LIB`` - an explicit path to ``libasyncloader.so``.
2. The copy installed inside this package (``pip install ./python`` puts it
   next to this file).
3. A source-tree build: ``$CARGO_TARGET_DIR/{release,debug}`` and
   ``<repo>/target/{release,debug}`` where ``<repo>`` is two directories above
   this package (``python/asyncloader`` -> repo root).
4. The dynamic linker's search path (``ctypes.util.find_library``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from ctypes import (
    POINTER,
    c_bool,
    c_char_p,
    c_int,
    c_int64,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path
from typing import Any, Dict, List, Optional

LIB_NAME = "libasyncloader.so"


class LibraryNotFound(ImportError):
    """``libasyncloader.so`` could not be found or loaded."""


def _candidates() -> List[Path]:
    here = Path(__file__).resolve().parent
    out: List[Path] = [here / LIB_NAME]
    tdirs = []
    env_target = os.environ.get("CARGO_TARGET_DIR")
    if env_target:
        tdirs.append(Path(env_target))
    tdirs.append(here.parent.parent / "target")
    for t in tdirs:
        for profile in ("release", "debug"):
            out.append(t / profile / LIB_NAME)
    return out


def find_library() -> str:
    """Returns the path of the library that :func:`load` would open."""
    explicit = os.environ.get("ASYNCLOADER_LIB")
    if explicit:
        if not os.path.exists(explicit):
            raise LibraryNotFound(f"ASYNCLOADER_LIB={explicit!r} does not exist")
        return explicit
    for c in _candidates():
        if c.exists():
            return str(c)
    found = ctypes.util.find_library("asyncloader")
    if found:
        return found
    tried = ", ".join(str(c) for c in _candidates())
    raise LibraryNotFound(
        f"{LIB_NAME} not found (tried $ASYNCLOADER_LIB, {tried}, and the "
        "linker path). Install with `pip install ./python` from the "
        "repository, run `cargo build --release`, or set ASYNCLOADER_LIB."
    )


# ---------------------------------------------------------------------------
# Opaque handles and structs
# ---------------------------------------------------------------------------


class al_loader(ctypes.Structure):
    _fields_: list = []


class al_worker(ctypes.Structure):
    _fields_: list = []


class al_entry(ctypes.Structure):
    _fields_: list = []


class _Sized(ctypes.Structure):
    """A struct of the C ABI that starts with ``struct_size``: set to this
    mirror's size on creation, so the library reads and writes exactly the
    fields declared here (ABI 2; see docs/c-api.md, "Structs that grow")."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.struct_size = ctypes.sizeof(self)


class al_config(_Sized):
    """Mirror of the C ``al_config``; filled by ``al_config_default``.

    Field order and types are part of the C ABI contract; ``struct_size``
    tells the library how many of them this mirror has.
    """

    _fields_ = [
        ("struct_size", c_uint32),
        ("queue_depth", c_uint32),
        ("max_file_size", c_uint64),
        ("n_workers", c_uint32),
        ("dispatch_n", c_uint32),
        ("idle_iters", c_uint32),
        ("direct", c_bool),
        ("loader_threads", c_uint32),
        ("ring_window", c_uint32),
        ("backend", c_uint32),
        ("pad0", c_uint32),
        ("drive", c_uint32),
        ("reserved", c_uint32),
        ("arena_size", c_uint64),
    ]


class al_stats(_Sized):
    """Mirror of the C ``al_stats`` (96 bytes)."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("state", c_uint32),
        ("requests", c_uint64),
        ("completions", c_uint64),
        ("bytes", c_uint64),
        ("errors", c_uint64),
        ("batches", c_uint64),
        ("buffered_fallbacks", c_uint64),
        ("direct_reads", c_uint64),
        ("syscalls", c_uint64),
        ("backend", c_uint32),
        ("loader_threads", c_uint32),
        ("loader_threads_alive", c_uint32),
        ("loader_pid", ctypes.c_int32),
        ("drive", c_uint32),
        ("reserved", c_uint32),
    ]


class al_entry_info(_Sized):
    """Mirror of the C ``al_entry_info``: everything about an entry."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("error", ctypes.c_int32),
        ("path", c_void_p),
        ("path_len", c_size_t),
        ("data", c_void_p),
        ("size", c_size_t),
        ("latency_ns", c_uint64),
        ("tag", c_uint64),
        ("offset", c_uint64),
    ]


assert ctypes.sizeof(al_config) == 64 and ctypes.sizeof(al_entry_info) == 64


class al_batch_item(ctypes.Structure):
    """Mirror of the C ``al_batch_item`` (48 bytes, fixed): one entry of
    ``al_worker_get_batch``. Python reads arrays of it as 64-bit words
    (``Batch``), without a Python object per field."""

    _fields_ = [
        ("entry", c_void_p),
        ("data", c_void_p),
        ("size", c_uint64),
        ("tag", c_uint64),
        ("error", ctypes.c_int32),
        ("path_len", c_uint32),
        ("path", c_void_p),
    ]


assert ctypes.sizeof(al_batch_item) == 48


class al_range(ctypes.Structure):
    """Mirror of the C ``al_range`` (32 bytes, fixed): one range of
    ``al_worker_request_ranges``. Python builds tables of it as 64-bit
    words (``asyncloader.pack_ranges``: offset, len, dst_offset, then
    ``mem`` and ``reserved`` in one word), without a Python object per
    field."""

    _fields_ = [
        ("offset", c_uint64),
        ("len", c_uint64),
        ("dst_offset", c_uint64),
        ("mem", c_uint32),
        ("reserved", c_uint32),
    ]


assert ctypes.sizeof(al_range) == 32


#: The C ABI these mirrors follow (``AL_ABI_VERSION`` of the header).
ABI_VERSION = 2

#: Memory id of the loader's arena (``AL_ARENA``) for ``al_worker_request_into``.
AL_ARENA = 0

#: ``al_range.mem`` of a range read into an entry buffer (``AL_NO_DEST``).
AL_NO_DEST = 0xFFFFFFFF


LoaderP = POINTER(al_loader)
WorkerP = POINTER(al_worker)
# Entry handles travel as plain integers (c_void_p): cheap to store in
# arrays and lists, and an array element read gives a value, not a view.
EntryP = c_void_p


def _names(name_of) -> Dict[int, str]:
    """``{value: name}`` for an ``al_*_name`` function: values 0, 1, ...
    until the first one it does not name (the enums are dense)."""
    out: Dict[int, str] = {}
    while True:
        n = name_of(len(out))
        if not n:
            return out
        out[len(out)] = n.decode()


def _declare(lib: ctypes.CDLL, name: str, restype, argtypes, required: bool = True):
    try:
        f = getattr(lib, name)
    except AttributeError:
        if required:
            raise LibraryNotFound(f"{lib._name} lacks the required symbol {name}")
        return None
    f.restype = restype
    f.argtypes = argtypes
    return f


class Lib:
    """The loaded library with typed functions as attributes.

    Optional functions (added after the first ABI) are ``None`` when the
    library does not export them; callers fall back to the basic calls.
    """

    def __init__(self, path: str):
        self.path = path
        # CDLL: calls release the GIL. use_errno is not needed: every
        # function returns -errno.
        self.cdll = lib = ctypes.CDLL(path)
        d = lambda *a, **k: _declare(lib, *a, **k)  # noqa: E731

        abi = d("al_abi_version", c_uint32, [], required=False)
        if abi is None or abi() != ABI_VERSION:
            raise LibraryNotFound(
                f"{path} has C ABI {abi() if abi else 1}, this package needs {ABI_VERSION}: "
                "rebuild the library from the same checkout (cargo build --release)"
            )
        self.al_config_default = d("al_config_default", c_int, [POINTER(al_config)])
        al_state_name = d("al_state_name", c_char_p, [c_uint32])
        al_backend_name = d("al_backend_name", c_char_p, [c_uint32])
        #: ``al_state`` value -> name ("created", "running", ...), as the
        #: library names them (never restated here).
        self.states: Dict[int, str] = _names(al_state_name)
        #: ``al_backend`` value -> name ("auto", "io_uring", "threads").
        self.backends: Dict[int, str] = _names(al_backend_name)
        al_drive_name = d("al_drive_name", c_char_p, [c_uint32])
        #: ``al_drive`` value -> name ("auto", "loader", "worker").
        self.drives: Dict[int, str] = _names(al_drive_name)
        self.al_loader_new = d("al_loader_new", c_int, [POINTER(al_config), POINTER(LoaderP)])
        self.al_loader_start = d("al_loader_start", c_int, [LoaderP])
        self.al_loader_spawn = d("al_loader_spawn", c_int, [LoaderP])
        self.al_loader_become = d("al_loader_become", c_int, [LoaderP])
        self.al_loader_shutdown = d("al_loader_shutdown", c_int, [LoaderP])
        self.al_loader_prefault = d("al_loader_prefault", c_int, [LoaderP], required=False)
        self.al_loader_reclaim_worker = d(
            "al_loader_reclaim_worker", c_int, [LoaderP, c_uint32, POINTER(c_uint32)], required=False
        )
        self.al_loader_free = d("al_loader_free", None, [LoaderP])
        self.al_loader_name = d("al_loader_name", c_char_p, [LoaderP])
        self.al_loader_attach = d("al_loader_attach", c_int, [c_char_p, POINTER(LoaderP)])
        self.al_loader_worker = d("al_loader_worker", c_int, [LoaderP, c_uint32, POINTER(WorkerP)])
        self.al_loader_config = d(
            "al_loader_config", c_int, [LoaderP, POINTER(al_config)], required=False
        )
        self.al_loader_stats = d("al_loader_stats", c_int, [LoaderP, POINTER(al_stats)], required=False)
        self.al_worker_request = d("al_worker_request", c_int, [WorkerP, c_char_p])
        self.al_worker_try_get = d("al_worker_try_get", c_int, [WorkerP, POINTER(EntryP)])
        self.al_worker_wait_get = d("al_worker_wait_get", c_int, [WorkerP, c_int64, POINTER(EntryP)])
        self.al_entry_path = d("al_entry_path", c_char_p, [EntryP])
        self.al_entry_data = d("al_entry_data", c_void_p, [EntryP])
        self.al_entry_size = d("al_entry_size", c_size_t, [EntryP])
        self.al_entry_error = d("al_entry_error", c_int, [EntryP])
        self.al_entry_release = d("al_entry_release", c_int, [EntryP])
        self.al_strerror = d("al_strerror", c_char_p, [c_int], required=False)
        self.al_last_error_message = d(
            "al_last_error_message", c_int, [c_void_p, c_size_t], required=False
        )

        # Optional (second round of the ABI).
        self.al_worker_free = d("al_worker_free", None, [WorkerP], required=False)
        self.al_worker_request_bytes = d(
            "al_worker_request_bytes", c_int, [WorkerP, c_char_p, c_size_t], required=False
        )
        self.al_worker_request_many = d(
            "al_worker_request_many",
            c_int,
            [WorkerP, POINTER(c_char_p), c_size_t, POINTER(c_size_t)],
            required=False,
        )
        self.al_worker_get_many = d(
            "al_worker_get_many",
            c_int,
            [WorkerP, POINTER(EntryP), c_size_t, c_int64, POINTER(c_size_t)],
            required=False,
        )
        self.al_entry_info = d(
            "al_entry_get_info", c_int, [EntryP, POINTER(al_entry_info)], required=False
        ) or d("al_entry_info", c_int, [EntryP, POINTER(al_entry_info)], required=False)
        self.al_entry_release_many = d(
            "al_entry_release_many", c_size_t, [POINTER(EntryP), c_size_t], required=False
        )
        self.al_worker_outstanding = d("al_worker_outstanding", c_uint32, [WorkerP], required=False)

        # The batch path (tags, one call per batch): required, the package
        # is built on it.
        self.al_worker_request_tagged = d(
            "al_worker_request_tagged", c_int, [WorkerP, c_char_p, c_size_t, c_uint64]
        )
        self.al_worker_request_packed = d(
            "al_worker_request_packed",
            c_int,
            [WorkerP, c_char_p, c_size_t, c_uint64, POINTER(c_size_t)],
        )
        self.al_worker_get_batch = d(
            "al_worker_get_batch", c_int, [WorkerP, c_void_p, c_size_t, c_int64, POINTER(c_size_t)]
        )
        self.al_worker_buffers = d(
            "al_worker_buffers", c_int, [WorkerP, POINTER(c_void_p), POINTER(c_size_t)]
        )
        self.al_entry_tag = d("al_entry_tag", c_uint64, [EntryP])
        self.al_batch_release = d("al_batch_release", c_size_t, [c_void_p, c_size_t])
        # Hand-over of entries to another process (tickets).
        self.al_entry_handoff = d("al_entry_handoff", c_int, [EntryP, POINTER(c_uint64)])
        self.al_batch_handoff = d("al_batch_handoff", c_size_t, [c_void_p, c_size_t, c_void_p])
        self.al_loader_take = d(
            "al_loader_take", c_int, [LoaderP, c_void_p, c_size_t, c_void_p, c_size_t, c_void_p]
        )
        self.al_loader_drop_tickets = d("al_loader_drop_tickets", c_size_t, [LoaderP, c_void_p, c_size_t])
        self.al_worker_eventfd = d(
            "al_worker_eventfd", c_int, [WorkerP, POINTER(c_int)], required=False
        )
        self.al_entry_latency_ns = d("al_entry_latency_ns", c_uint64, [EntryP], required=False)
        self.al_version = d("al_version", c_char_p, [], required=False)

        # Byte ranges and destination memory (issue 15); None in a library
        # built before them (the Python methods then raise
        # NotImplementedError).
        self.al_worker_request_range_bytes = d(
            "al_worker_request_range_bytes",
            c_int,
            [WorkerP, c_char_p, c_size_t, c_uint64, c_uint64, c_uint64],
            required=False,
        )
        self.al_worker_request_into = d(
            "al_worker_request_into",
            c_int,
            [WorkerP, c_char_p, c_size_t, c_uint64, c_uint64, c_uint32, c_uint64, c_uint64],
            required=False,
        )
        self.al_entry_offset = d("al_entry_offset", c_uint64, [EntryP], required=False)
        self.al_loader_arena = d(
            "al_loader_arena", c_int, [LoaderP, POINTER(c_void_p), POINTER(c_size_t)], required=False
        )
        self.al_worker_arena = d(
            "al_worker_arena", c_int, [WorkerP, POINTER(c_void_p), POINTER(c_size_t)], required=False
        )
        self.al_loader_register_memory = d(
            "al_loader_register_memory",
            c_int,
            [LoaderP, c_void_p, c_size_t, POINTER(c_uint32)],
            required=False,
        )
        self.al_loader_unregister_memory = d(
            "al_loader_unregister_memory", c_int, [LoaderP, c_uint32], required=False
        )
        self.al_abi_version = d("al_abi_version", c_uint32, [], required=False)
        # Many ranges of one file in one call (a table of al_range; passed
        # as an address into the caller's buffer, never copied).
        self.al_worker_request_ranges = d(
            "al_worker_request_ranges",
            c_int,
            [WorkerP, c_char_p, c_size_t, c_void_p, c_size_t, c_uint64, POINTER(c_size_t)],
            required=False,
        )

    def need(self, name: str) -> Any:
        """Optional function ``name``, or ``NotImplementedError`` when this
        library was built without it."""
        f = getattr(self, name)
        if f is None:
            raise NotImplementedError(
                f"{self.path} has no {name}: rebuild the library from this checkout "
                "(cargo build --release)"
            )
        return f

    def config_default(self) -> al_config:
        """A fresh ``al_config`` filled by ``al_config_default``: the
        library's defaults, the only ones."""
        cfg = al_config()
        rc = self.al_config_default(ctypes.byref(cfg))
        if rc != 0:
            raise OSError(-rc, f"al_config_default: {self.strerror(rc)}")
        return cfg

    def last_error_message(self) -> str:
        """The message of this thread's last failed call (``""`` if none)."""
        f = self.al_last_error_message
        if f is None:
            return ""
        n = f(None, 0)
        if n <= 0:
            return ""
        buf = ctypes.create_string_buffer(n + 1)
        f(buf, n + 1)
        return buf.value.decode("utf-8", "replace")

    def strerror(self, code: int) -> str:
        s = self.al_strerror(code) if self.al_strerror else None
        if not s:
            return os.strerror(abs(code))
        return s.decode("utf-8", "replace")


_lib: Optional[Lib] = None


def lib() -> Lib:
    """The process-wide :class:`Lib`, loaded on first use."""
    global _lib
    if _lib is None:
        path = find_library()
        try:
            _lib = Lib(path)
        except OSError as e:
            raise LibraryNotFound(f"cannot load {path}: {e}") from e
    return _lib


# ---------------------------------------------------------------------------
# al_probe: what this machine can do for the loader (`asyncloader info`).
# A separate block: it needs nothing from Lib above but the loaded library.
# ---------------------------------------------------------------------------

AL_PROBE_JSON = 1


def probe_report(paths=(), json_format: bool = True) -> str:
    """The report of ``al_probe`` for ``paths`` (files or directories), as
    JSON or as the text ``asyncloader info`` prints."""
    cdll = lib().cdll
    f = _declare(
        cdll,
        "al_probe",
        c_int,
        [POINTER(c_char_p), c_size_t, c_uint32, c_void_p, c_size_t],
        required=False,
    )
    if f is None:
        raise LibraryNotFound(f"{cdll._name} has no al_probe (a library older than 0.1.0's probe)")
    encoded = [os.fsencode(p) for p in paths]
    arr = (c_char_p * max(len(encoded), 1))(*encoded)
    flags = AL_PROBE_JSON if json_format else 0
    size = 1 << 14
    while True:
        buf = ctypes.create_string_buffer(size)
        n = f(arr, len(encoded), flags, buf, size)
        if n < 0:
            raise OSError(-n, os.strerror(-n), "al_probe")
        if n < size:
            return buf.value.decode("utf-8", "replace")
        size = n + 4096  # the report grew: ask again with room
