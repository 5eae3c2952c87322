"""Loader: the shared region, its configuration, its loader, its stats."""

from __future__ import annotations

import ctypes
import errno as _errno
import threading
import weakref
from ctypes import byref
from typing import Any, Dict, List, Optional, Tuple

from . import _ffi, _util
from ._ffi import LoaderP, WorkerP
from ._util import WAIT_SLICE_S, _check, _u32, _uint
from ._worker import Worker

# ---------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------

# Loaders known to this process by name: the ones created here (and, after a
# fork, inherited) and the ones attached here. Weak: a loader goes away with
# its last user.
_known: "weakref.WeakValueDictionary[str, Loader]" = weakref.WeakValueDictionary()
_known_lock = threading.Lock()


def _attach_loader(name: str) -> "Loader":
    return Loader.attach(name)


def _attach_worker(name: str, worker_id: int) -> Worker:
    return Loader.attach(name).get_worker_context(worker_id)


class _Default:
    """The default of a ``Loader`` argument: the library's value
    (:func:`default_config`), never restated in Python."""

    def __repr__(self) -> str:
        return "DEFAULT"


#: Stands for "the library's default" in ``Loader``'s signature.
DEFAULT: Any = _Default()


def default_config() -> Dict[str, Any]:
    """The library's default configuration (``al_config_default``), which
    ``Loader()`` uses for every argument not given: the one source of the
    defaults, listed in the README's config table. ``backend`` is a name;
    ``loader_threads`` and ``ring_window`` are 0 ("pick for me": see
    :meth:`Loader.config` for what a loader resolved them to)."""
    return _config_dict(_ffi.lib().config_default())


def _enum_value(name: Any, names: Dict[int, str], what: str) -> int:
    """The library's value of enum name ``name`` (``names``: value -> name)."""
    codes = {v: k for k, v in names.items()}
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if name not in codes:
        raise ValueError(f"{what} must be one of {sorted(codes)}, not {name!r}")
    return codes[name]


def _config_dict(cfg: _ffi.al_config) -> Dict[str, Any]:
    out = {
        n: getattr(cfg, n)
        for n, _t in _ffi.al_config._fields_
        if n not in ("struct_size", "pad0", "reserved")
    }
    out["direct"] = bool(out["direct"])
    out["backend"] = _ffi.lib().backends.get(cfg.backend, str(cfg.backend))
    out["drive"] = _ffi.lib().drives.get(cfg.drive, str(cfg.drive))
    return out


class Loader:
    """An asynchronous file loader shared by ``n_workers`` workers.

    Arguments (the original module's, in its order). Every argument left
    out takes the library's default (:func:`default_config`, the README's
    config table; ``None`` means the same for the arguments whose default
    reads ``None``):

    * ``queue_depth`` - requests each worker may have outstanding; each owns
      a buffer of ``max_file_size`` bytes.
    * ``max_file_size`` - largest file that loads; larger files complete
      with ``EFBIG`` (only loaded bytes use memory).
    * ``n_workers`` - number of worker contexts (ids ``0..n_workers-1``).
    * ``dispatch_n`` - a batch is submitted once this many requests wait...
      (0, the default: 8 with loader threads; with the workers driving,
      about 1 MiB of files, 8 up to the worker's io_uring window)
    * ``idle_iters`` (alias ``max_idle_iters``) - ...or after this many
      loader-loop passes without a new request.
    * ``direct`` - read with ``O_DIRECT`` (bypass the page cache).
    * ``loader_threads`` - loader threads, each with its own io_uring
      (0 = one per core).
    * ``ring_window`` - files in flight per loader thread (0 = default:
      32 buffered, 128 direct).
    * ``backend`` - ``"auto"`` (io_uring, else a ``pread`` thread pool),
      ``"io_uring"`` or ``"threads"``.
    * ``drive`` - who loads a worker's requests: ``"loader"`` (loader
      threads, or the loader process, in the background), ``"worker"``
      (each worker in the thread that calls it, on an io_uring of its own:
      ``request`` submits, ``get``/``try_get`` reap; no thread hand-off) or
      ``"auto"`` (the default: ``"worker"`` when :meth:`start` runs a loader
      with at least one worker per core, ``"loader"`` otherwise). ``stats()``
      says which one runs.
    * ``arena_size`` - bytes of destination memory in the shared region
      (rounded up to 4 KiB; 0, the default: none): :attr:`arena`, memory
      :data:`asyncloader.ARENA` of :meth:`Worker.request_into`, reachable
      from every process of the loader.

    Nothing loads until the loader runs: call :meth:`start` (threads in this
    process), :meth:`spawn_loader` (a forked loader process) or
    :meth:`become_loader` (this process is the loader until shut down).
    Use as a context manager to shut it down at the end.
    """

    def __init__(
        self,
        queue_depth: int = DEFAULT,  # type: ignore[assignment]
        max_file_size: Optional[int] = None,
        n_workers: int = DEFAULT,  # type: ignore[assignment]
        dispatch_n: Optional[int] = None,
        idle_iters: Optional[int] = None,
        direct: bool = DEFAULT,  # type: ignore[assignment]
        *,
        max_idle_iters: Optional[int] = None,
        loader_threads: Optional[int] = None,
        ring_window: Optional[int] = None,
        backend: str = DEFAULT,  # type: ignore[assignment]
        drive: str = DEFAULT,  # type: ignore[assignment]
        arena_size: Optional[int] = None,
    ):
        if idle_iters is not None:
            idle_iters = _u32(idle_iters, "idle_iters")
        if max_idle_iters is not None:
            max_idle_iters = _u32(max_idle_iters, "max_idle_iters")
        if idle_iters is not None and max_idle_iters is not None and idle_iters != max_idle_iters:
            raise TypeError("give idle_iters or max_idle_iters, not both")
        idle_name = "idle_iters"
        if idle_iters is None:
            idle_iters, idle_name = max_idle_iters, "max_idle_iters"
        lib = _ffi.lib()
        # The library's defaults; only what the caller gave replaces them.
        cfg = lib.config_default()
        if queue_depth is not DEFAULT:
            cfg.queue_depth = _u32(queue_depth, "queue_depth")
        if n_workers is not DEFAULT:
            cfg.n_workers = _u32(n_workers, "n_workers")
        if max_file_size is not None:
            cfg.max_file_size = _uint(max_file_size, "max_file_size", 64)
        if dispatch_n is not None:
            cfg.dispatch_n = _u32(dispatch_n, "dispatch_n")
        if idle_iters is not None:
            cfg.idle_iters = _u32(idle_iters, idle_name)
        if direct is not DEFAULT:
            if not isinstance(direct, bool):
                raise TypeError(f"direct must be a bool, not {type(direct).__name__}")
            cfg.direct = direct
        if loader_threads is not None:
            cfg.loader_threads = _u32(loader_threads, "loader_threads")
        if ring_window is not None:
            cfg.ring_window = _u32(ring_window, "ring_window")
        if backend is not DEFAULT:
            cfg.backend = _enum_value(backend, lib.backends, "backend")
        if drive is not DEFAULT:
            cfg.drive = _enum_value(drive, lib.drives, "drive")
        if arena_size is not None:
            cfg.arena_size = _uint(arena_size, "arena_size", 64)
        h = LoaderP()
        rc = lib.al_loader_new(byref(cfg), byref(h))
        if rc in (-_errno.EINVAL, -_errno.E2BIG):
            # The library says which field and why.
            err = ValueError(lib.last_error_message() or lib.strerror(rc))
            err.errno = -rc  # type: ignore[attr-defined]
            raise err
        _check(rc, "Loader")
        self._init(h, owner=True, cfg=cfg)
        with _known_lock:
            _known[self._name] = self

    def _init(self, h: Any, owner: bool, cfg: Optional[_ffi.al_config]) -> None:
        self._h = h
        self._owner = owner
        self._pid = _util._PID
        self._closed = False
        self._become_thread: Optional[threading.Thread] = None
        # Memory registered here: id -> (address, length, pin). The pin (a
        # ctypes array over the caller's buffer) holds its buffer export:
        # the object cannot be resized or freed while loads may write it.
        self._mems: Dict[int, Tuple[int, int, Any]] = {}
        self._retired: List[Any] = []
        self._arena: Any = None
        self._name = _ffi.lib().al_loader_name(h).decode()
        if _ffi.lib().al_loader_config is not None:
            cfg = self._config_from_name()  # resolved values
        self._cfg = cfg if cfg is not None else _ffi.al_config()

    def _config_from_name(self) -> _ffi.al_config:
        cfg = _ffi.al_config()
        lib = _ffi.lib()
        if lib.al_loader_config is not None:
            _check(lib.al_loader_config(self._h, byref(cfg)), "config")
        return cfg

    def config(self) -> Dict[str, Any]:
        """The configuration as the loader resolved it (``loader_threads``
        and ``ring_window`` never 0)."""
        return _config_dict(self._config_from_name())

    @classmethod
    def attach(cls, name: str) -> "Loader":
        """Attaches to the loader named ``name`` (see :attr:`name`), from any
        process of the same user while the creating process lives. Within
        one process, returns the already known ``Loader`` for that name."""
        with _known_lock:
            known = _known.get(name)
            if known is not None:
                return known
            h = LoaderP()
            _check(_ffi.lib().al_loader_attach(name.encode(), byref(h)), f"attach {name}")
            self = cls.__new__(cls)
            self._init(h, owner=False, cfg=None)
            _known[name] = self
            return self

    # -- properties ----------------------------------------------------------

    @property
    def name(self) -> str:
        """The name other processes attach with (encodes the creator's pid)."""
        return self._name

    @property
    def queue_depth(self) -> int:
        """Requests each worker may have outstanding."""
        return self._cfg.queue_depth

    @property
    def n_workers(self) -> int:
        """Number of worker contexts."""
        return self._cfg.n_workers

    @property
    def max_file_size(self) -> int:
        """Largest file that loads (larger ones fail with ``EFBIG``)."""
        return self._cfg.max_file_size

    @property
    def direct(self) -> bool:
        """Whether reads use ``O_DIRECT``."""
        return bool(self._cfg.direct)

    @property
    def arena_size(self) -> int:
        """Bytes of the arena (0: none; see :attr:`arena`)."""
        return self._cfg.arena_size

    # -- destination memory --------------------------------------------------

    @property
    def arena(self) -> Optional[memoryview]:
        """The arena (``arena_size``) as a writable ``memoryview`` of bytes,
        ``None`` when the loader has none: memory :data:`asyncloader.ARENA`
        of :meth:`Worker.request_into`, the same bytes in every process of
        the loader (attached ``Loader``, pickled ``Worker``, a loader
        process). Read a span once the entry of the load into it was
        delivered; do not touch a span while a load writes it. The view
        keeps this ``Loader`` (and so the mapping) alive."""
        if self._arena is None:
            self._arena = _arena_span(_ffi.lib().need("al_loader_arena"), self._h)
        return _arena_view(self._arena, self)

    def register(self, buffer: Any) -> int:
        """Registers ``buffer`` - any writable, C-contiguous object with the
        buffer protocol: ``bytearray``, a numpy array, ``mmap.mmap``, a
        ``memoryview`` of a tensor's memory - as destination memory for
        :meth:`Worker.request_into` and returns its id (1 to 16).

        The registration holds an export of the buffer until
        :meth:`unregister` or :meth:`close`: a ``bytearray`` cannot be
        resized (``BufferError``), an ``mmap`` not closed, and the object is
        kept alive. Registered memory is an address in this process: loads
        into it run only in this process (``start()``, or workers that
        drive their own loads); with a loader process (``spawn_loader``) or
        from another process, ``request_into`` raises ``OSError(EXDEV)``:
        use the :attr:`arena` there. ``OSError(ENOSPC)`` when 16
        registrations are in use; ``ValueError`` for an empty buffer,
        ``TypeError`` for a read-only one."""
        if self._closed:
            raise ValueError("loader is closed")
        reg = _ffi.lib().need("al_loader_register_memory")
        mv = memoryview(buffer)
        if mv.readonly:
            raise TypeError("register needs a writable buffer")
        if not mv.c_contiguous:
            raise ValueError("register needs a C-contiguous buffer")
        n = mv.nbytes
        if n == 0:
            raise ValueError("register needs a non-empty buffer")
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        pin = (ctypes.c_uint8 * n).from_buffer(mv)  # holds the export
        addr = ctypes.addressof(pin)
        mem = ctypes.c_uint32(0)
        rc = reg(self._h, addr, n, byref(mem))
        if rc < 0:
            raise _util._oserror(-rc, _ffi.lib().last_error_message() or "register")
        self._mems[mem.value] = (addr, n, pin)
        return mem.value

    def unregister(self, id: int) -> None:  # noqa: A002 - mirrors register's result
        """Forgets registration ``id`` and gives its buffer back (the
        export ends: a ``bytearray`` may be resized again). Only when no
        load into it is in flight: release the entries of its
        ``request_into`` calls first (views of them keep the buffer
        alive). ``OSError(EINVAL)`` for an id this ``Loader`` did not
        register."""
        unreg = _ffi.lib().need("al_loader_unregister_memory")
        mem = _u32(id, "id")
        rc = unreg(self._h, mem)
        if rc < 0:
            raise _util._oserror(-rc, _ffi.lib().last_error_message() or "unregister")
        self._mems.pop(mem, None)

    def _pin_of(self, addr: int) -> Any:
        """The pin of the registered memory holding ``addr``, if any (kept
        by views of entries loaded into it)."""
        for base, n, pin in self._mems.values():
            if base <= addr < base + n:
                return pin
        for base, n, pin in self._retired:
            if base <= addr < base + n:
                return pin
        return None

    def _unregister_all(self, keep: bool) -> None:
        lib = _ffi._lib
        for mem, rec in list(self._mems.items()):
            if lib is not None and lib.al_loader_unregister_memory is not None and self._h:
                lib.al_loader_unregister_memory(self._h, mem)
            if keep:
                self._retired.append(rec)
        self._mems.clear()

    # -- running -------------------------------------------------------------

    def start(self) -> None:
        """Runs the loader in background threads of this process."""
        _check(_ffi.lib().al_loader_start(self._h), "start")

    def spawn_loader(self) -> None:
        """Forks a child process that becomes the loader (the original
        module's ``spawn_loader``); returns in this process at once. The
        child exits at :meth:`shutdown` or when this process dies."""
        _check(_ffi.lib().al_loader_spawn(self._h), "spawn_loader")

    def become_loader(self) -> None:
        """Runs the loader in this process until some participant calls
        :meth:`shutdown` (the original never returned). The loader runs in
        native threads with the GIL released; this thread waits in 100 ms
        slices, so Ctrl-C shuts the loader down and raises
        ``KeyboardInterrupt``."""
        result: Dict[str, int] = {}

        def run() -> None:
            result["rc"] = _ffi.lib().al_loader_become(self._h)

        t = threading.Thread(target=run, name="asyncloader-become", daemon=True)
        self._become_thread = t
        t.start()
        try:
            while t.is_alive():
                t.join(WAIT_SLICE_S)
        except BaseException:
            _ffi.lib().al_loader_shutdown(self._h)
            t.join()
            raise
        finally:
            self._become_thread = None
        _check(result.get("rc", -_errno.EIO), "become_loader")

    def get_worker_context(self, id: int) -> Worker:  # noqa: A002 - original name
        """The :class:`Worker` for worker ``id`` (``0 <= id < n_workers``)."""
        if self._closed:
            raise ValueError("loader is closed")
        h = WorkerP()
        _check(_ffi.lib().al_loader_worker(self._h, _u32(id, "id"), byref(h)), f"worker {id}")
        return Worker(self, id, h)

    worker = get_worker_context

    def stats(self) -> Dict[str, Any]:
        """The loader's counters (requests, completions, bytes, errors,
        batches, backend, state, ...) as a dict."""
        return _stats(self._h)

    def shutdown(self) -> None:
        """Stops the loader: files in flight finish, waiting workers wake and
        raise ``OSError(ESHUTDOWN)`` once nothing is left for them, later
        requests raise. Waits for this process's loader threads or loader
        child. Idempotent; any participant may call it."""
        if self._h:
            _check(_ffi.lib().al_loader_shutdown(self._h), "shutdown")

    def prefault(self) -> None:
        """Allocates all buffer memory now (``n_workers * queue_depth *
        max_file_size`` bytes) instead of page by page on first use; data is
        untouched, so it is safe at any time."""
        lib = _ffi.lib()
        if lib.al_loader_prefault is None:
            raise NotImplementedError("this libasyncloader has no al_loader_prefault")
        _check(lib.al_loader_prefault(self._h), "prefault")

    def take(self, tickets: Any, out: Any) -> List[int]:
        """Takes entries handed over by :meth:`Batch.handoff` (in this or
        another process): copies their bytes into ``out`` (a writable
        C-contiguous buffer: ``bytearray``, numpy array, ``tensor.numpy()``),
        one after another in ticket order, releases them, and returns their
        sizes. Every ticket is checked first: ``OSError(EINVAL)``, nothing
        copied or released, for a stale or already taken ticket or an
        ``out`` smaller than the entries (their sizes travel with the
        tickets: allocate ``sum(sizes)``)."""
        n = len(tickets)
        dst = memoryview(out)
        if dst.readonly:
            raise TypeError("take needs a writable buffer")
        if not dst.c_contiguous:
            raise ValueError("take needs a C-contiguous buffer")
        if dst.format != "B" or dst.ndim != 1:
            dst = dst.cast("B")
        cap = dst.nbytes
        pin = (ctypes.c_char * cap).from_buffer(dst) if cap else None
        arr = (ctypes.c_uint64 * n)(*tickets)
        sizes = (ctypes.c_uint64 * n)()
        rc = _ffi.lib().al_loader_take(self._h, arr, n, pin, cap, sizes)
        del pin
        _check(rc, "take")
        return list(sizes)

    def drop_tickets(self, tickets: Any) -> int:
        """Releases handed-over entries without copying them (a taker's
        error path); stale tickets are skipped. Returns how many."""
        n = len(tickets)
        arr = (ctypes.c_uint64 * n)(*tickets)
        return _ffi.lib().al_loader_drop_tickets(self._h, arr, n)

    def reclaim_worker(self, worker_id: int) -> int:
        """Takes back the entries of worker ``worker_id`` after the process
        that used it died (queued requests are dropped, held entries freed);
        returns how many were taken back. Only call it when nobody uses that
        worker any more."""
        lib = _ffi.lib()
        if lib.al_loader_reclaim_worker is None:
            raise NotImplementedError("this libasyncloader has no al_loader_reclaim_worker")
        n = ctypes.c_uint32(0)
        _check(lib.al_loader_reclaim_worker(self._h, worker_id, ctypes.byref(n)), "reclaim_worker")
        return n.value

    def close(self) -> None:
        """Shuts the loader down if this process created it. The shared
        memory is unmapped once the last Worker/Entry of it is gone."""
        if self._closed:
            return
        self._closed = True
        if self._owner and self._pid == _util._PID:
            self.shutdown()
            # Every load finished: the registered buffers are free again.
            self._unregister_all(keep=False)
        else:
            # Loads may still run elsewhere: keep the buffers pinned while
            # this object lives.
            self._unregister_all(keep=True)

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __del__(self) -> None:
        h, self._h = getattr(self, "_h", None), None
        lib = _ffi._lib
        if h and lib is not None:
            # In the creator this also shuts down; in a forked copy or an
            # attached process it only unmaps.
            lib.al_loader_free(h)

    def __reduce__(self):
        return (_attach_loader, (self._name,))

    def __repr__(self) -> str:
        return f"<asyncloader.Loader {self._name!r}>"


def _arena_span(fn: Any, h: Any) -> Tuple[int, Any]:
    """(address, ctypes array type) of the arena of loader/worker handle
    ``h`` in this process, asked with ``fn`` (``al_loader_arena`` or
    ``al_worker_arena``); (0, None) without an arena."""
    base = ctypes.c_void_p()
    n = ctypes.c_size_t()
    _check(fn(h, byref(base), byref(n)), "arena")
    if not base.value or not n.value:
        return (0, None)
    return (base.value, ctypes.c_uint8 * n.value)


def _arena_view(span: Tuple[int, Any], keep: Any) -> Optional[memoryview]:
    """A writable byte view of the arena ``span``, whose array holds
    ``keep`` (the Loader or Worker that keeps the mapping), or None. A new
    array per call, held by nothing but its views: no reference cycle
    delays freeing ``keep``."""
    base, atype = span
    if atype is None:
        return None
    arr = atype.from_address(base)
    arr._keep = keep
    m = memoryview(arr)
    v = m.cast("B")
    m.release()
    return v


def _stats(h: Any) -> Dict[str, Any]:
    lib = _ffi.lib()
    if lib.al_loader_stats is None:
        return {}
    st = _ffi.al_stats()
    _check(lib.al_loader_stats(h, byref(st)), "stats")
    out: Dict[str, Any] = {
        name: getattr(st, name)
        for name, _t in _ffi.al_stats._fields_
        if name not in ("struct_size", "reserved")
    }
    out["backend"] = lib.backends.get(st.backend, str(st.backend))
    out["drive"] = lib.drives.get(st.drive, str(st.drive))
    out["state"] = lib.states.get(st.state, str(st.state))
    return out
