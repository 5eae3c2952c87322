"""Entry: one delivered file, its bytes and its lifetime."""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import sys
import weakref
from ctypes import byref, c_uint8
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from . import _ffi, _util
from ._util import _check, _oserror, _tls

if TYPE_CHECKING:
    from ._worker import Worker

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


def _keep_dest(arr: Any, worker: "Worker", data: int) -> None:
    """When ``data`` is in memory registered with the worker's loader
    (``Worker.request_into``), makes ``arr`` (which views are cut from)
    hold that registration's pin: the buffer stays exported and alive as
    long as a view of it does, registered or not."""
    loader = worker._loader
    if loader._mems or loader._retired:
        pin = loader._pin_of(data)
        if pin is not None:
            arr._keep_pin = pin


def _release_views(views: Any) -> int:
    """Releases ``views`` (the views we handed out) and returns how many
    could not be released: something (numpy...) holds a buffer on them."""
    pinned = 0
    for v in views:
        try:
            v.release()
        except BufferError:
            pinned += 1
    return pinned


def _release_handle(lib: _ffi.Lib, h: Any, pid: int, _worker: Any) -> None:
    """Releases a C entry (deferred releases; `_worker` keeps the handle
    table and the mapping alive until then)."""
    if pid == _util._PID:
        lib.al_entry_release(h)


class _Held:
    """What Entry and Batch share: they hold entries of a worker, release
    them at the end of a ``with`` block (deferred when the block raised, so
    that a ``BufferError`` does not mask the exception) and when collected."""

    __slots__ = ()

    def __del__(self) -> None:
        try:
            self._release_deferred()  # type: ignore[attr-defined]
        except Exception:  # pragma: no cover - never raise from __del__
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.release()  # type: ignore[attr-defined]
        else:
            self._release_deferred()  # type: ignore[attr-defined]


class Entry(_Held):
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
        "_tag",
        "_off",
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
        self._pid = _util._PID
        self._released = False
        self._path = path
        self._arr = None
        self._views: Optional[List[memoryview]] = None
        self._off: Optional[int] = None
        if h is None:
            self._err = err
            self._data = None
            self._size = 0
            self._lat = None
            self._tag = 0
        else:
            self._err = None  # fetched on first use (one al_entry_info call)

    @classmethod
    def _delivered(
        cls, worker: "Worker", h: int, data: int, size: int, err: int, tag: int, path_ptr: int, path_len: int
    ) -> "Entry":
        """An entry whose fields came with it (``al_worker_get_batch``), so
        that reading them costs no library call."""
        e = cls(worker, h)
        e._data = data
        e._size = size
        e._err = err
        e._tag = tag
        e._path_ptr = path_ptr
        e._path_len = path_len
        e._lat = -1  # asked for on first use
        return e

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
            self._tag = info.tag
            self._off = info.offset
            self._err = info.error
        else:
            err = lib.al_entry_error(h)
            if err < 0:
                raise _oserror(-err, "entry")
            self._path = lib.al_entry_path(h) or b""
            self._data = lib.al_entry_data(h)
            self._size = lib.al_entry_size(h)
            self._lat = lib.al_entry_latency_ns(h) if lib.al_entry_latency_ns else None
            self._tag = lib.al_entry_tag(h)
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
        if self._lat == -1:
            self._lat = _ffi.lib().al_entry_latency_ns(self._h)
        return self._lat

    @property
    def tag(self) -> int:
        """The tag the path was requested with (``Worker.request(path,
        tag=...)``, ``request_many(..., first_tag)``); 0 when it had none."""
        self._check_live()
        return self._tag

    @property
    def offset(self) -> int:
        """The byte offset a range was requested at
        (:meth:`Worker.request_range`, :meth:`Worker.request_into`); 0 for a
        whole file."""
        self._check_live()
        if self._off is None:
            if self._h is None:
                return 0
            self._off = _ffi.lib().need("al_entry_offset")(self._h)
        return self._off  # type: ignore[return-value]

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
            _keep_dest(self._arr, self._worker, self._data)
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
        pinned = _release_views(self._views or ())
        self._views = []
        # Objects derived from a view keep the array referenced.
        return max(pinned, sys.getrefcount(self._arr) - self._arr_base)

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
        if self._pid != _util._PID or self._h is None:
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
            weakref.finalize(self._arr, _release_handle, lib, self._h, _util._PID, self._worker)
            self._arr = None
            return
        self._arr = None
        lib.al_entry_release(self._h)

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
