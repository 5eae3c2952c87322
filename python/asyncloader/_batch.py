"""Batch: the entries of one library call, read without a call per entry."""

from __future__ import annotations

import ctypes
import os
import sys
import weakref
from typing import TYPE_CHECKING, Any, List, Optional

from . import _ffi, _util
from ._entry import _Held, _array_type, _keep_dest, _release_views
from ._util import _oserror

if TYPE_CHECKING:
    from ._worker import Worker

# al_batch_item as 64-bit words: entry, data, size, tag, error | path_len
# << 32, path; as 32-bit words, error is word 8 and path_len word 9.
_WORDS = 6


def _release_items(lib: _ffi.Lib, items: Any, n: int, pid: int, _worker: Any) -> None:
    """Releases the entries of a get_batch array in one call (deferred
    releases: `_worker` keeps the handle table and the mapping alive until
    then)."""
    if pid == _util._PID:
        lib.al_batch_release(items, n)


class Batch(_Held):
    """Entries a worker delivered in one library call
    (:meth:`Worker.get_batch`, :meth:`Worker.load_batches`), read as plain
    lists instead of one Python object per file.

    ``len(batch)`` entries; for entry ``i`` (``0 <= i < len(batch)``):

    * ``batch.tags[i]``: the tag it was requested with (for
      ``load_batches``, its index in the list of paths);
    * ``batch.sizes[i]``: bytes loaded (0 for a failed load);
    * ``batch.errors[i]``: 0, or the errno of the failed load;
    * :meth:`data` (a ``bytes`` copy), :meth:`view` (a read-only
      ``memoryview`` on the shared buffer, no copy), :meth:`numpy`,
      :meth:`path`, :meth:`exception`.

    The batch holds all its buffers until :meth:`release` (or the end of a
    ``with`` block, or the next step of ``load_batches``) gives them back
    in one call. Views follow :meth:`Entry.memoryview`'s rules, for the
    batch as a whole: :meth:`release` releases every view :meth:`view`
    returned (using one afterwards raises ``ValueError``), and while
    anything derived from one is alive (a slice, a ``numpy`` array, a
    ``torch.frombuffer`` tensor) it raises ``BufferError`` and keeps the
    batch, its data unchanged; a batch garbage-collected meanwhile is
    released when the last such object is gone. Nothing can read a buffer
    after it went back to the worker.
    """

    __slots__ = (
        "_worker",
        "_pid",
        "_items",
        "_handles",
        "_datas",
        "_pptrs",
        "_plens",
        "_paths",
        "_released",
        "_arr",
        "_arr_base",
        "_area",
        "_alen",
        "_ro",
        "_views",
        "sizes",
        "tags",
        "errors",
        "__weakref__",
    )

    def __init__(self, worker: "Worker", items: Any = None, n: int = 0) -> None:
        # `items`: an array of at least `n` al_batch_item, as written by
        # al_worker_get_batch; None for an empty batch.
        self._worker = worker
        self._items = items
        self._pid = _util._PID
        self._released = False
        self._arr = None
        self._area = 0
        self._alen = 0
        self._ro: Optional[memoryview] = None
        self._views: List[memoryview] = []
        self._paths: Optional[List[Optional[bytes]]] = None
        if n == 0:
            self._handles = self._datas = self._pptrs = self._plens = []
            self.sizes: List[int] = []
            self.tags: List[int] = []
            self.errors: List[int] = []
            return
        b = memoryview(items).cast("B")
        q = b.cast("Q")
        end = n * _WORDS
        self._handles = q[0:end:_WORDS].tolist()
        self._datas = q[1:end:_WORDS].tolist()
        self.sizes = q[2:end:_WORDS].tolist()
        self.tags = q[3:end:_WORDS].tolist()
        self._pptrs = q[5:end:_WORDS].tolist()
        w = b.cast("i")
        self.errors = w[8 : 2 * end : 2 * _WORDS].tolist()
        self._plens = w[9 : 2 * end : 2 * _WORDS].tolist()

    @classmethod
    def _failed(cls, worker: "Worker", tag: int, path: bytes, err: int) -> "Batch":
        """A batch of one failed entry that owns no buffer, for a path that
        could not even be requested (``load_batches``)."""
        b = cls(worker)
        b._handles = [0]
        b._datas = [0]
        b._pptrs = [0]
        b._plens = [len(path)]
        b._paths = [path]
        b.sizes = [0]
        b.tags = [tag]
        b.errors = [err]
        return b

    # -- reading ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.tags)

    @property
    def released(self) -> bool:
        """True once :meth:`release` has given the buffers back."""
        return self._released

    @property
    def ok(self) -> bool:
        """True when every entry of the batch loaded."""
        return not any(self.errors)

    def _live(self) -> None:
        if self._released:
            raise ValueError("batch was released")

    def path_bytes(self, i: int) -> bytes:
        """Entry ``i``'s requested path, as the raw bytes the file system
        saw."""
        self._live()
        if self._paths is None:
            self._paths = [None] * len(self.tags)
        p = self._paths[i]
        if p is None:
            p = self._paths[i] = ctypes.string_at(self._pptrs[i], self._plens[i])
        return p

    def path(self, i: int) -> str:
        """Entry ``i``'s requested path as ``str`` (``os.fsdecode``)."""
        return os.fsdecode(self.path_bytes(i))

    def exception(self, i: int) -> Optional[OSError]:
        """Entry ``i``'s failure as an ``OSError`` subclass, or ``None``."""
        err = self.errors[i]
        if err == 0:
            return None
        return _oserror(err, "", os.fsdecode(self.path_bytes(i)))

    def raise_for_error(self) -> None:
        """Raises the first failed entry's :meth:`exception`, if any."""
        if any(self.errors):
            for i, err in enumerate(self.errors):
                if err:
                    raise self.exception(i)  # type: ignore[misc]

    def data(self, i: int) -> bytes:
        """Entry ``i``'s bytes (a copy, safe to keep after :meth:`release`).
        Raises the load's error as ``Entry.get_data`` does."""
        if self._released:
            raise ValueError("batch was released")
        if self.errors[i]:
            raise self.exception(i)  # type: ignore[misc]
        # A slice of the batch's export, copied: cheaper than string_at.
        ro = self._ro
        if ro is None:
            ro = self._export()
        off = self._datas[i] - self._area
        size = self.sizes[i]
        if 0 <= off <= self._alen - size:
            return bytes(ro[off : off + size])
        # Outside the worker's buffers: a destination (request_into).
        return ctypes.string_at(self._datas[i], size) if size else b""

    def view(self, i: int) -> memoryview:
        """A read-only ``memoryview`` on entry ``i``'s bytes in the shared
        buffer, without copying (see the class for how long it lives).
        Raises the load's error as :meth:`data` does."""
        if self._released:
            raise ValueError("batch was released")
        if self.errors[i]:
            raise self.exception(i)  # type: ignore[misc]
        ro = self._ro
        if ro is None:
            ro = self._export()
        off = self._datas[i] - self._area
        size = self.sizes[i]
        if 0 <= off <= self._alen - size:
            v = ro[off : off + size]
        else:
            v = self._view_outside(i)
        self._views.append(v)
        return v

    def _view_outside(self, i: int) -> memoryview:
        """A view of entry ``i`` whose data is not in the worker's buffers
        (a destination: the arena or registered memory). Its own array,
        which holds the batch's array (so the batch counts what derives
        from it) and the registration's pin."""
        size = self.sizes[i]
        if size == 0:
            return memoryview(b"")
        data = self._datas[i]
        arr = _array_type(size).from_address(data)
        arr._keep_batch = self._arr
        _keep_dest(arr, self._worker, data)
        m0 = memoryview(arr)
        m1 = m0.cast("B")
        m2 = m1[:size]
        v = m2.toreadonly()
        m2.release()
        m1.release()
        m0.release()
        return v

    def offset(self, i: int) -> int:
        """The byte offset entry ``i``'s range was requested at (0 for a
        whole file; see :attr:`Entry.offset`)."""
        self._live()
        h = self._handles[i]
        if not h:
            return 0
        return _ffi.lib().need("al_entry_offset")(h)

    def numpy(self, i: int) -> Any:
        """A read-only ``numpy.ndarray`` of ``uint8`` over entry ``i``'s
        bytes, without copying (``numpy`` is needed for this method only;
        same rules as :meth:`view`). For PyTorch:
        ``torch.frombuffer(batch.numpy(i), dtype=torch.uint8)``."""
        try:
            import numpy as np
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("Batch.numpy() needs numpy (pip install numpy)") from e
        return np.frombuffer(self.view(i), dtype=np.uint8)

    def _export(self) -> memoryview:
        """One ctypes array over the worker's buffers for this batch, and a
        read-only byte view of it that views are cut from: the array's
        reference count tells whether anything still uses one of them."""
        base, atype = self._worker._buffer_area()
        self._area = base
        self._alen = ctypes.sizeof(atype)
        self._arr = atype.from_address(base)
        self._arr_base = sys.getrefcount(self._arr)
        m0 = memoryview(self._arr)
        m1 = m0.cast("B")
        ro = self._ro = m1.toreadonly()
        m1.release()
        m0.release()
        return ro

    def _exports(self) -> int:
        """Buffers still exported after releasing our own views."""
        if self._ro is not None:
            self._views.append(self._ro)
            self._ro = None
        pinned = _release_views(self._views)
        self._views = []
        # Objects derived from a view keep the array referenced.
        return max(pinned, sys.getrefcount(self._arr) - self._arr_base)

    # -- release ---------------------------------------------------------------

    def _detach(self) -> bool:
        """Marks the batch released; True when it has entries for the
        caller to release. Raises ``BufferError`` while derived buffers are
        alive."""
        if self._released:
            return False
        if self._arr is not None:
            n = self._exports()
            if n:
                raise BufferError(
                    f"cannot release a batch of {len(self.tags)} entries: {n} buffer(s) "
                    "derived from its views are still alive; copy what you keep "
                    "(bytes(view) or data(i)) and drop the rest"
                )
            self._arr = None
        self._released = True
        return self._items is not None

    def release(self) -> None:
        """Gives every buffer of the batch back to the worker, in one call.
        Idempotent. Raises ``BufferError`` (and keeps the batch) while
        objects derived from :meth:`view` still reference a buffer."""
        if self._detach() and self._pid == _util._PID:
            # Entries of a batch inherited across fork stay the parent's.
            _ffi.lib().al_batch_release(self._items, len(self.tags))

    def handoff(self) -> List[int]:
        """Gives up the batch's entries without releasing them and returns
        one ticket per entry (in entry order; 0 for an entry this process
        cannot hand over: one inherited across ``fork``), for another
        process (or thread) to take with :meth:`Loader.take` — copy out and
        release — or :meth:`Loader.drop_tickets`. The entries keep their
        buffers, and count against this worker's ``queue_depth``, until
        then. The batch is released here (its views too; ``BufferError``
        while something derived from one lives, as for :meth:`release`).
        A ``DataLoader`` worker hands a batch to the main process this way,
        which copies it once into its batch tensor."""
        if self._released:
            raise ValueError("batch was released")
        n = len(self.tags)
        if not self._detach() or self._pid != _util._PID:
            return [0] * n  # nothing to hand over (synthetic, or the parent's)
        tickets = (ctypes.c_uint64 * n)()
        _ffi.lib().al_batch_handoff(self._items, n, tickets)
        return list(tickets)

    def _release_deferred(self) -> None:
        """Releases now, or when the last exported buffer dies. Never raises."""
        if self._released:
            return
        self._released = True
        lib = _ffi._lib
        if self._items is None or self._pid != _util._PID or lib is None:
            return
        arr = self._arr
        if arr is not None:
            try:
                n = self._exports()
            except Exception:  # pragma: no cover
                n = 1
            self._arr = None
            if n:
                # The array lives as long as anything exported from it.
                weakref.finalize(
                    arr, _release_items, lib, self._items, len(self.tags), _util._PID, self._worker
                )
                return
        _release_items(lib, self._items, len(self.tags), _util._PID, self._worker)

    def __reduce__(self):
        raise TypeError("a Batch cannot be pickled; send data(i) instead")

    def __repr__(self) -> str:
        if self._released:
            return "<asyncloader.Batch released>"
        failed = sum(1 for e in self.errors if e)
        return f"<asyncloader.Batch {len(self.tags)} entries, {failed} failed>"

