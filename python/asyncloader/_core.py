"""Loader, Worker and Entry over the C ABI of ``libasyncloader.so``."""

from __future__ import annotations

import ctypes
import errno as _errno
import math
import numbers
import operator
import os
import sys
import threading
import time
import weakref
from ctypes import byref, c_char_p, c_size_t, c_uint8
from typing import (
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from . import _ffi
from ._ffi import EntryP, LoaderP, WorkerP

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

#: Longest path a request may carry, in bytes (the engine's ``PATH_CAP - 1``).
MAX_PATH_BYTES = 4095

#: Blocking waits are cut into slices this long so that Python signal
#: handlers (Ctrl-C) run between them.
WAIT_SLICE_S = 0.1
_WAIT_SLICE_NS = int(WAIT_SLICE_S * 1e9)


def _deadline(timeout: Any) -> Optional[float]:
    """``time.monotonic()`` deadline for a ``timeout`` in seconds, ``None``
    for no limit. ``None``, ``-1`` (C's "wait forever") and ``inf`` wait
    without limit; other negative values and ``nan`` raise ``ValueError``,
    non-numbers (``bool`` included) ``TypeError``."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    t = float(timeout)
    if t == -1:
        return None
    if math.isnan(t):
        raise ValueError("timeout must not be nan")
    if t < 0:
        raise ValueError(f"timeout must be >= 0, None or -1 (no limit), not {timeout!r}")
    if math.isinf(t):
        return None
    return time.monotonic() + t


def _slice_ns(deadline: Optional[float]) -> int:
    """The next wait slice: short, so signal handlers (Ctrl-C) run between
    slices, and never past ``deadline`` (``time.monotonic()``; None: none)."""
    if deadline is None:
        return _WAIT_SLICE_NS
    left = deadline - time.monotonic()
    return max(0, min(_WAIT_SLICE_NS, int(left * 1e9)))


_PID = os.getpid()


def _after_fork_in_child() -> None:
    global _PID
    _PID = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _oserror(code: int, what: str = "", filename: Any = None) -> OSError:
    """An ``OSError`` for a positive errno; ``OSError`` picks the subclass
    (``FileNotFoundError``, ``IsADirectoryError``, ``TimeoutError``,
    ``BrokenPipeError`` for ``ESHUTDOWN``, ...)."""
    msg = os.strerror(code)
    if what:
        msg = f"{msg} ({what})"
    if filename is not None:
        return OSError(code, msg, filename)
    return OSError(code, msg)


def _check(rc: int, what: str, filename: Any = None) -> None:
    if rc < 0:
        raise _oserror(-rc, what, filename)


_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
_tls = threading.local()


def _fspath_bytes(path: PathLike) -> bytes:
    """str / bytes / PathLike -> bytes, the way ``open()`` encodes paths."""
    t = type(path)
    if t is str:
        b = path.encode(_FS_ENCODING, _FS_ERRORS)  # type: ignore[union-attr]
    elif t is bytes:
        b = path  # type: ignore[assignment]
    else:
        b = os.fsencode(path)
    if b"\0" in b:
        raise ValueError("embedded null byte in path")
    return b


# ---------------------------------------------------------------------------
# Entry
# ---------------------------------------------------------------------------


_PAGE = 4096
_array_types: Dict[int, Any] = {}


def _array_type(size: int) -> Any:
    n = (size + _PAGE - 1) // _PAGE * _PAGE
    t = _array_types.get(n)
    if t is None:
        t = _array_types[n] = c_uint8 * n
    return t


def _release_handle(lib: _ffi.Lib, h: Any, pid: int, _worker: Any) -> None:
    """Releases a C entry (deferred releases; `_worker` keeps the handle
    table and the mapping alive until then)."""
    if pid == _PID:
        lib.al_entry_release(h)


class Entry:
    """A completed request: the path and either the file's bytes or an errno.

    The entry owns one of its worker's ``queue_depth`` buffers until
    :meth:`release` (or the end of a ``with`` block) gives it back; until then
    the data stays valid and unchanged. Entries that are never released are
    released when garbage-collected, but relying on that can starve the
    worker (``request`` returns ``False`` while all buffers are held).

    Data access:

    * :meth:`get_data` copies the bytes into a ``bytes`` object (safe to keep).
    * :meth:`memoryview` gives a read-only view on the shared buffer itself,
      without copying. See :meth:`memoryview` for its lifetime rules.
    * :meth:`numpy` gives a read-only ``numpy.ndarray`` over the same bytes
      (same rules).

    After :meth:`release`, every accessor raises ``ValueError``.
    """

    __slots__ = (
        "_h",
        "_worker",
        "_pid",
        "_released",
        "_path",
        "_path_ptr",
        "_path_len",
        "_err",
        "_data",
        "_size",
        "_lat",
        "_arr",
        "_arr_base",
        "_views",
        "__weakref__",
    )

    def __init__(self, worker: "Worker", h: Any, *, path: Optional[bytes] = None, err: int = 0):
        # `h` is an al_entry* (or None for an entry synthesised by `load()`
        # for a path that could not even be requested).
        self._h = h
        self._worker = worker
        self._pid = _PID
        self._released = False
        self._path = path
        self._arr = None
        self._views: Optional[List[memoryview]] = None
        if h is None:
            self._err = err
            self._data = None
            self._size = 0
            self._lat = None
        else:
            self._err = None  # fetched on first use (one al_entry_info call)

    # -- state ---------------------------------------------------------------

    def _info(self) -> None:
        if self._released:
            raise ValueError("entry was released")
        lib = _ffi.lib()
        h = self._h
        if lib.al_entry_info is not None:
            # One struct per thread, reused: the fields are copied out below.
            try:
                info, ref = _tls.info
            except AttributeError:
                info = _ffi.al_entry_info()
                ref = byref(info)
                _tls.info = (info, ref)
            _check(lib.al_entry_info(h, ref), "entry info")
            self._path_ptr = info.path
            self._path_len = info.path_len
            self._data = info.data
            self._size = info.size
            self._lat = info.latency_ns
            self._err = info.error
        else:
            err = lib.al_entry_error(h)
            if err < 0:
                raise _oserror(-err, "entry")
            self._path = lib.al_entry_path(h) or b""
            self._data = lib.al_entry_data(h)
            self._size = lib.al_entry_size(h)
            self._lat = lib.al_entry_latency_ns(h) if lib.al_entry_latency_ns else None
            self._err = err

    def _check_live(self) -> None:
        if self._released:
            raise ValueError("entry was released")
        if self._err is None:
            self._info()

    @property
    def released(self) -> bool:
        """True once :meth:`release` has given the buffer back."""
        return self._released

    @property
    def path_bytes(self) -> bytes:
        """The requested path, as the raw bytes the file system saw."""
        if self._path is None:
            self._check_live()
            if self._path is None:
                self._path = ctypes.string_at(self._path_ptr, self._path_len)
        return self._path

    def get_filepath(self) -> str:
        """The requested path as ``str`` (``os.fsdecode``: bytes that are not
        valid in the file-system encoding become surrogate escapes)."""
        return os.fsdecode(self.path_bytes)

    @property
    def path(self) -> str:
        """Same as :meth:`get_filepath`."""
        return os.fsdecode(self.path_bytes)

    @property
    def error(self) -> int:
        """0 when the file loaded, otherwise the errno of the failure
        (``ENOENT``, ``EISDIR``, ``EINVAL`` for a file that is not regular,
        ``EFBIG`` for a file larger than ``max_file_size``, ``EACCES``...)."""
        self._check_live()
        return self._err  # type: ignore[return-value]

    @property
    def ok(self) -> bool:
        """True when the file loaded."""
        return self.error == 0

    def exception(self) -> Optional[OSError]:
        """The load's failure as an ``OSError`` subclass, or ``None``."""
        err = self.error
        if err == 0:
            return None
        return _oserror(err, "", os.fsdecode(self.path_bytes))

    def raise_for_error(self) -> None:
        """Raises :meth:`exception` when the load failed."""
        exc = self.exception()
        if exc is not None:
            raise exc

    @property
    def size(self) -> int:
        """Bytes loaded (0 for a failed load)."""
        self._check_live()
        return self._size

    def __len__(self) -> int:
        return self.size

    @property
    def latency_ns(self) -> Optional[int]:
        """Nanoseconds from request to completion (``None`` if unknown)."""
        self._check_live()
        return self._lat

    # -- data ----------------------------------------------------------------

    def get_data(self) -> bytes:
        """The file's bytes (a copy, safe to keep after :meth:`release`).

        Raises the load's error as an ``OSError`` subclass with ``errno`` and
        ``filename`` set: ``FileNotFoundError``, ``IsADirectoryError``,
        ``PermissionError``, ``OSError(errno.EFBIG)`` ...
        """
        if self._released:
            raise ValueError("entry was released")
        if self._err is None:
            self._info()
        if self._err:
            raise self.exception()  # type: ignore[misc]
        if self._size == 0:
            return b""
        return ctypes.string_at(self._data, self._size)

    def memoryview(self) -> memoryview:
        """A read-only view on the loaded bytes, without copying.

        Lifetime rules (the design is the one of ``mmap.close()``):

        * The view is valid until the entry is released. :meth:`release`
          releases every view this method returned; using one afterwards
          raises ``ValueError`` ("operation forbidden on released memoryview
          object"), never reads reused memory.
        * Objects that share the buffer but that the entry cannot invalidate
          (slices of the view, ``numpy.frombuffer(view)``, ``view.obj``) pin
          it: while one of them is alive, :meth:`release` raises
          ``BufferError`` and keeps the entry (and so the data) untouched.
          Drop them (or copy: ``bytes(view)``) and release again.
        * An entry garbage-collected while such objects live is released
          only when the last of them is gone.

        Raises the load's error (as :meth:`get_data`) for a failed load.
        """
        self._check_live()
        if self._err:
            raise self.exception()  # type: ignore[misc]
        if self._size == 0:
            return memoryview(b"")
        if self._arr is None:
            # The array spans the data rounded up to 4 KiB (entry buffers are
            # whole 4 KiB pages at least max_file_size + 1 long), so that
            # only a few ctypes array types are ever created (one per size
            # class; creating a type costs ~10 us), and views are cut to size.
            self._arr = _array_type(self._size).from_address(self._data)
            self._arr_base = sys.getrefcount(self._arr)
            self._views = []
        m0 = memoryview(self._arr)
        m1 = m0.cast("B")
        m2 = m1[: self._size]
        mv = m2.toreadonly()
        m2.release()
        m1.release()
        m0.release()
        self._views.append(mv)  # type: ignore[union-attr]
        return mv

    def numpy(self) -> Any:
        """A read-only ``numpy.ndarray`` of ``uint8`` over the loaded bytes,
        without copying (``numpy`` is needed for this method only).

        The array is a buffer derived from :meth:`memoryview`, so the same
        rules hold: while the array (or a view or slice of it) is alive,
        :meth:`release` raises ``BufferError`` and keeps the entry, its data
        unchanged; an entry garbage-collected meanwhile is released when the
        last such array is gone. Nothing can read the buffer after it went
        back to the worker. Copy what you keep (``arr.copy()``).

        For PyTorch: ``torch.frombuffer(entry.numpy(), dtype=torch.uint8)``
        (torch warns that the array is not writable: the tensor must not be
        written) or ``torch.from_numpy(entry.numpy().copy())`` for a tensor
        that owns its bytes. Decoders that take a buffer (``PIL.Image.open``
        over ``io.BytesIO(entry.memoryview())``, ``cv2.imdecode(arr, ...)``)
        read it in place.

        Raises the load's error (as :meth:`get_data`) for a failed load.
        """
        try:
            import numpy as np
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("Entry.numpy() needs numpy (pip install numpy)") from e
        return np.frombuffer(self.memoryview(), dtype=np.uint8)

    def _exports(self) -> int:
        """Buffers still exported after releasing our own views."""
        if self._arr is None:
            return 0
        pinned = 0
        for v in self._views or ():
            try:
                v.release()
            except BufferError:  # something (numpy...) holds a buffer on it
                pinned += 1
        self._views = []
        extra = sys.getrefcount(self._arr) - self._arr_base
        return max(pinned, extra)

    # -- release -------------------------------------------------------------

    def _detach(self) -> Any:
        """Marks the entry released and returns its C handle for the caller
        to release (None if there is nothing to release). Raises
        ``BufferError`` while derived buffers are alive."""
        if self._released:
            return None
        if self._arr is not None:
            n = self._exports()
            if n:
                raise BufferError(
                    f"cannot release entry {self.path_bytes!r}: {n} buffer(s) "
                    "derived from its memoryview() are still alive; copy what "
                    "you keep (bytes(view) or get_data()) and drop the rest"
                )
            self._arr = None
        self._released = True
        return self._h

    def release(self) -> None:
        """Gives the entry's buffer back to the worker. Idempotent.

        Raises ``BufferError`` (and keeps the entry) while objects derived
        from :meth:`memoryview` still reference the buffer.
        """
        h = self._detach()
        if h is not None:
            # -EPERM in a process forked after the delivery: the entry is
            # the parent's, the library only forgets it here (documented).
            _ffi.lib().al_entry_release(h)

    def _release_deferred(self) -> None:
        """Releases now, or when the last exported buffer dies. Never raises."""
        if self._released:
            return
        self._released = True
        if self._pid != _PID or self._h is None:
            return  # a forked copy (the parent owns the entry) or synthetic
        lib = _ffi._lib
        if lib is None:  # pragma: no cover - interpreter shutdown
            return
        try:
            n = self._exports() if self._arr is not None else 0
        except Exception:  # pragma: no cover
            n = 1
        if n and self._arr is not None:
            # The array object lives as long as anything exported from it;
            # release the C entry when it goes. The worker (whose table holds
            # the handle, and which maps the memory) stays alive through the
            # finalizer's arguments.
            weakref.finalize(self._arr, _release_handle, lib, self._h, _PID, self._worker)
            self._arr = None
            return
        self._arr = None
        lib.al_entry_release(self._h)

    def __del__(self) -> None:
        try:
            self._release_deferred()
        except Exception:  # pragma: no cover - never raise from __del__
            pass

    def __enter__(self) -> "Entry":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.release()
        else:
            # Do not mask the body's exception with a BufferError.
            self._release_deferred()

    def __reduce__(self):
        raise TypeError("an Entry cannot be pickled; send get_data() instead")

    def __repr__(self) -> str:
        if self._released:
            return "<asyncloader.Entry released>"
        try:
            err = self.error
            tail = f"error={_errno.errorcode.get(err, err)}" if err else f"size={self.size}"
            return f"<asyncloader.Entry {self.get_filepath()!r} {tail}>"
        except Exception:
            return "<asyncloader.Entry>"


# ---------------------------------------------------------------------------
# Worker
# ---------------------------------------------------------------------------


class Worker:
    """A worker context: requests files and receives their entries.

    Get one from :meth:`Loader.get_worker_context`. A worker id should be used
    by one thread or process at a time. A ``Worker`` can be pickled: in the
    receiving process it attaches to the loader by name (while the process
    that created the loader lives).
    """

    __slots__ = ("_h", "_loader", "_id", "_qd", "_aio_waiters", "__weakref__")

    def __init__(self, loader: "Loader", worker_id: int, h: Any):
        self._h = h
        self._loader = loader
        self._id = worker_id
        self._qd = loader.queue_depth
        self._aio_waiters: Any = None

    @property
    def id(self) -> int:
        """This worker's id."""
        return self._id

    @property
    def loader(self) -> "Loader":
        """The loader this worker belongs to."""
        return self._loader

    @property
    def outstanding(self) -> int:
        """Requests of this worker id that are queued, in flight, or
        delivered and not yet released (at most ``queue_depth``)."""
        lib = _ffi.lib()
        if lib.al_worker_outstanding is None:
            raise NotImplementedError("the library lacks al_worker_outstanding")
        return lib.al_worker_outstanding(self._h)

    # -- requests ------------------------------------------------------------

    def request(self, filepath: PathLike) -> bool:
        """Requests ``filepath`` (str, bytes or ``os.PathLike``).

        Returns ``True`` when queued and ``False`` when the worker already
        has ``queue_depth`` requests outstanding (get and release entries,
        then retry). Raises ``OSError`` for a request that can never succeed
        (``ENAMETOOLONG``: more than 4095 bytes; ``ESHUTDOWN``: the loader
        was shut down; ``EOWNERDEAD``: the loader died) and ``ValueError``
        for a path holding a NUL byte.
        """
        p = _fspath_bytes(filepath)
        lib = _ffi.lib()
        if lib.al_worker_request_bytes is not None:
            rc = lib.al_worker_request_bytes(self._h, p, len(p))
        else:
            rc = lib.al_worker_request(self._h, p)
        if rc == 0:
            return True
        if rc == -_errno.EAGAIN:
            return False
        raise _oserror(-rc, "request", filepath)

    def request_many(self, paths: Sequence[PathLike]) -> int:
        """Requests ``paths`` in order and returns how many were queued (a
        prefix; it stops when the queue is full). Raises like :meth:`request`
        only when the first path cannot be queued for a reason other than a
        full queue; a bad path later in the list ends the prefix instead."""
        if not paths:
            return 0
        bs = [_fspath_bytes(p) for p in paths]
        lib = _ffi.lib()
        if lib.al_worker_request_many is None:
            return self._request_many_fallback(paths, bs)
        arr = (c_char_p * len(bs))(*bs)
        accepted = c_size_t(0)
        rc = lib.al_worker_request_many(self._h, arr, len(bs), byref(accepted))
        n = accepted.value
        if rc < 0 and rc != -_errno.EAGAIN and n == 0:
            raise _oserror(-rc, "request", paths[0])
        return n

    def _request_many_fallback(self, paths, bs: List[bytes]) -> int:
        n = 0
        for p, b in zip(paths, bs):
            try:
                if not self.request(b):
                    break
            except OSError:
                if n == 0:
                    raise
                break
            n += 1
        return n

    # -- completions ---------------------------------------------------------

    def try_get(self) -> Optional[Entry]:
        """A completed entry if one is ready, else ``None``. Never blocks.

        Raises ``OSError`` (``ESHUTDOWN``/``EOWNERDEAD``) only if the library
        reports that nothing can ever arrive.
        """
        out = EntryP()
        rc = _ffi.lib().al_worker_try_get(self._h, byref(out))
        if rc == 0:
            return Entry(self, out.value)
        if rc == -_errno.EAGAIN:
            return None
        raise _oserror(-rc, "try_get")

    def wait_get(self, timeout: Optional[float] = None) -> Entry:
        """Waits for a completed entry and returns it.

        ``timeout`` in seconds raises ``TimeoutError`` when it passes;
        ``None`` or ``-1`` (as in C) waits without limit. Other negative
        values and ``nan`` raise ``ValueError``. The wait sleeps in the library (no spinning, GIL
        released) in slices of 100 ms, so Ctrl-C raises
        ``KeyboardInterrupt`` promptly. Raises ``OSError`` with
        ``errno.ESHUTDOWN`` (a ``BrokenPipeError``) once the loader is shut
        down and nothing is left to deliver, ``errno.EOWNERDEAD`` when the
        loader died.
        """
        deadline = _deadline(timeout)
        lib = _ffi.lib()
        out = EntryP()
        # Fast path: something is ready.
        rc = lib.al_worker_try_get(self._h, byref(out))
        if rc == 0:
            return Entry(self, out.value)
        wait = lib.al_worker_wait_get
        while True:
            slice_ns = _slice_ns(deadline)
            rc = wait(self._h, slice_ns, byref(out))
            if rc == 0:
                return Entry(self, out.value)
            if rc != -_errno.ETIMEDOUT:
                raise _oserror(-rc, "wait_get")
            if deadline is not None and time.monotonic() >= deadline:
                raise _oserror(_errno.ETIMEDOUT, "wait_get")
            # Loop: Python runs pending signal handlers here.

    def _drain_in_flight(self, outstanding: int) -> None:
        """Takes and releases ``outstanding`` entries still in flight (5 s at
        most per batch; stops at an error), so their buffers come back when a
        consumer leaves a loading loop early."""
        while outstanding > 0:
            try:
                got = self.get_many(outstanding, timeout=5.0)
            except OSError:
                break
            if not got:
                break
            outstanding -= len(got)
            for e in got:
                e._release_deferred()

    def get_many(self, max_n: int, timeout: Optional[float] = None) -> List[Entry]:
        """Waits (like :meth:`wait_get`) until at least one entry is ready,
        then returns up to ``max_n`` ready entries without waiting further.

        ``timeout=0`` never blocks; ``None`` or ``-1`` waits without limit
        (other negative values and ``nan`` raise ``ValueError``). Returns
        ``[]`` when the timeout passes with nothing ready (it does not raise
        ``TimeoutError``).
        """
        deadline = _deadline(timeout)
        if max_n <= 0:
            return []
        lib = _ffi.lib()
        if lib.al_worker_get_many is None:
            return self._get_many_fallback(max_n, timeout)
        # A fresh array per call: the GIL is released during the call, so a
        # buffer shared by threads using this Worker could be overwritten.
        buf = (EntryP * max_n)()
        got = c_size_t(0)
        fn = lib.al_worker_get_many
        while True:
            slice_ns = _slice_ns(deadline)
            rc = fn(self._h, buf, max_n, slice_ns, byref(got))
            n = got.value
            if n:
                return [Entry(self, h) for h in buf[:n]]
            if rc != -_errno.ETIMEDOUT and rc != -_errno.EAGAIN and rc < 0:
                raise _oserror(-rc, "get_many")
            if deadline is not None and time.monotonic() >= deadline:
                return []

    def _get_many_fallback(self, max_n: int, timeout: Optional[float]) -> List[Entry]:
        try:
            first = self.wait_get(timeout) if timeout != 0 else self.try_get()
        except TimeoutError:
            return []
        if first is None:
            return []
        out = [first]
        while len(out) < max_n:
            e = self.try_get()
            if e is None:
                break
            out.append(e)
        return out

    # -- the window pattern --------------------------------------------------

    def load(self, paths: Iterable[PathLike], window: int = 64, batch: int = 32) -> Iterator[Entry]:
        """Loads every path, keeping up to ``window`` requests in flight, and
        yields entries in completion order (not request order).

        Each entry is released when the generator resumes (the caller asks
        for the next one), so **copy what you keep** (``get_data()`` or
        ``bytes(view)``); releasing raises ``BufferError`` if a view derived
        from ``entry.memoryview()`` is still alive. Failed loads are yielded
        too: check ``entry.error`` or let ``get_data()`` raise. A path that
        cannot even be requested (too long, NUL byte) is yielded as a failed
        entry (``ENAMETOOLONG`` / ``EINVAL``) that owns no buffer.

        ``window`` is capped at the worker's ``queue_depth``; ``batch`` is how
        many completions are fetched per library call. Leaving the loop early
        (``break``) waits for and releases the requests still in flight.
        """
        window = max(1, min(window, self._qd))
        batch = max(1, batch)
        it = iter(paths)
        pending: List[Any] = []  # requested-next, as given
        exhausted = False
        outstanding = 0
        current: List[Entry] = []
        held: Optional[Entry] = None
        done: List[Any] = []  # handles detached, released in one call
        try:
            while True:
                if done:
                    self._release_handles(done)
                # Fill the window.
                while (pending or not exhausted) and outstanding < window:
                    want = window - outstanding
                    while len(pending) < want:
                        try:
                            pending.append(next(it))
                        except StopIteration:
                            exhausted = True
                            break
                    if not pending:
                        break
                    chunk = pending[:want]
                    try:
                        n = self.request_many(chunk)
                    except (OSError, ValueError) as e:
                        code = getattr(e, "errno", None) or _errno.EINVAL
                        if code in (_errno.ESHUTDOWN, _errno.EOWNERDEAD):
                            raise
                        # The first path can never be requested: yield it as
                        # a failed entry and go on.
                        bad = pending.pop(0)
                        try:
                            pb = os.fsencode(bad)
                        except Exception:
                            pb = repr(bad).encode()
                        yield Entry(self, None, path=pb, err=code)
                        continue
                    del pending[:n]
                    outstanding += n
                    if n < len(chunk):
                        break  # queue full: entries are held elsewhere
                if outstanding == 0:
                    if exhausted and not pending:
                        return
                    raise RuntimeError(
                        f"worker {self._id}: queue full with no request of this "
                        "load() in flight: release the entries you hold"
                    )
                current = self.get_many(min(batch, outstanding))
                outstanding -= len(current)
                current.reverse()
                while current:
                    held = current.pop()
                    yield held
                    e, held = held, None
                    h = e._detach()  # BufferError if a derived view is alive
                    if h is not None:
                        done.append(h)
        finally:
            if done:
                self._release_handles(done)
            if held is not None:
                held._release_deferred()
            for e in current:
                e._release_deferred()
            self._drain_in_flight(outstanding)

    def load_into(self, paths: Sequence[PathLike], out: Any, window: int = 64) -> List[Tuple[int, int]]:
        """Loads every path and copies each file's bytes into ``out`` — any
        writable C-contiguous buffer: ``bytearray``, a ``numpy`` array, an
        ``array.array``, a ``memoryview`` of pinned memory — one file after
        another in completion order, with one ``memmove`` per file from the
        shared buffer (no ``bytes`` object in between). Returns
        ``[(offset, size)]``, one pair per path, in the order of ``paths``.

        Every entry is released before this returns or raises: nothing is
        lost to the worker. Raises, after all loads finished:

        * ``ValueError`` when the files do not fit in ``out`` (it says how
          many bytes they need); files that fitted were copied, the rest
          were not written anywhere;
        * the first failed load's ``OSError`` (as ``get_data()`` does).
        """
        paths = list(paths)
        dst = memoryview(out)
        if dst.readonly:
            raise TypeError("load_into needs a writable buffer")
        if not dst.c_contiguous:
            raise ValueError("load_into needs a C-contiguous buffer")
        dst = dst.cast("B") if dst.format != "B" or dst.ndim != 1 else dst
        cap = dst.nbytes
        # Held until the end: the export pins ``out`` (a bytearray cannot
        # be resized under the copies).
        pin = (ctypes.c_char * cap).from_buffer(dst) if cap else None
        base = ctypes.addressof(pin) if pin is not None else 0
        index: Dict[bytes, List[int]] = {}
        for i, p in enumerate(paths):
            index.setdefault(_fspath_bytes(p), []).append(i)
        result: List[Optional[Tuple[int, int]]] = [None] * len(paths)
        used = 0
        need = 0
        failure: Optional[BaseException] = None
        for e in self.load(paths, window=window):
            slots = index.get(e.path_bytes)
            i = slots.pop(0) if slots else None
            if e.error:
                failure = failure or e.exception()
                continue
            size = e.size
            need += size
            if used + size > cap:
                continue
            if size:
                ctypes.memmove(base + used, e._data, size)
            if i is not None:
                result[i] = (used, size)
            used += size
        del pin
        if need > cap:
            raise ValueError(
                f"load_into: the files need {need} bytes, the destination holds {cap}: "
                f"{sum(r is None for r in result)} of {len(paths)} files were not copied"
            )
        if failure is not None:
            raise failure
        return [r if r is not None else (0, 0) for r in result]

    def _release_handles(self, hs: List[Any]) -> None:
        """Releases detached entry handles (one call when the library has
        ``al_entry_release_many``) and empties ``hs``."""
        lib = _ffi.lib()
        if lib.al_entry_release_many is not None and len(hs) > 1:
            arr = (EntryP * len(hs))(*hs)
            lib.al_entry_release_many(arr, len(hs))
        else:
            for h in hs:
                lib.al_entry_release(h)
        hs.clear()

    # -- event loops -----------------------------------------------------------

    def fileno(self) -> int:
        """An eventfd readable while this worker has completions to take,
        for ``select``/``selectors``/``loop.add_reader`` (the first call
        starts a small notifier thread in this process). It belongs to the
        worker: never close it. Contract: when readable, ``os.read(fd, 8)``
        (``BlockingIOError`` is fine), then ``try_get()`` until ``None``; a
        completion after that read makes it readable again. Once the loader
        is shut down or dies it stays readable and ``try_get`` raises.
        ``await worker.get()`` and ``worker.aload()`` use it.
        """
        lib = _ffi.lib()
        if lib.al_worker_eventfd is None:
            raise _oserror(_errno.ENOSYS, "fileno: library without al_worker_eventfd")
        fd = ctypes.c_int(-1)
        _check(lib.al_worker_eventfd(self._h, byref(fd)), "fileno")
        return fd.value

    async def get(self) -> Entry:
        """Awaits a completed entry (asyncio; see ``asyncloader.aio``).
        Cancelling it loses nothing: the entry stays for the next call."""
        from . import aio

        return await aio.get(self)

    def aload(self, paths: Iterable[PathLike], window: int = 64):
        """``async for entry in worker.aload(paths)``: as ``load`` for
        asyncio (see ``asyncloader.aio.aload``)."""
        from . import aio

        return aio.aload(self, paths, window)

    # -- misc ----------------------------------------------------------------

    def close(self) -> None:
        """Frees this handle (entries already received stay valid)."""
        h, self._h = self._h, None
        lib = _ffi._lib
        if h and lib is not None and lib.al_worker_free is not None:
            lib.al_worker_free(h)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover
            pass

    def __reduce__(self):
        return (_attach_worker, (self._loader.name, self._id))

    def __repr__(self) -> str:
        return f"<asyncloader.Worker id={self._id} loader={self._loader.name!r}>"


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
        self._pid = _PID
        self._closed = False
        self._become_thread: Optional[threading.Thread] = None
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
        if self._owner and self._pid == _PID:
            self.shutdown()

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


def _uint(v: Any, what: str, bits: int) -> int:
    """An unsigned integer argument: ``TypeError`` for anything that is not
    an integer (``8.5``, ``"8"``, and ``True``: a bool is not a count),
    ``ValueError`` outside ``0 .. 2**bits - 1``."""
    if isinstance(v, bool):
        raise TypeError(f"{what} must be an int, not bool")
    try:
        v = operator.index(v)
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(v).__name__}") from None
    if not 0 <= v < 1 << bits:
        raise ValueError(f"{what} out of range: {v}")
    return v


def _u32(v: Any, what: str) -> int:
    return _uint(v, what, 32)


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
