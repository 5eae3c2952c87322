"""Worker: requesting files, taking entries, the window loop."""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import time
from itertools import islice
from ctypes import byref, c_size_t
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from . import _ffi
from ._batch import Batch
from ._entry import Entry
from ._ranges import RANGE_SIZE, _no_dest_table, _table_at
from ._ffi import EntryP
from ._util import PathLike, _check, _deadline, _fspath_bytes, _oserror, _pack, _slice_ns, _u32, _u64

if TYPE_CHECKING:
    from ._loader import Loader

#: Data the window loops (``load``, ``load_batches``, ``load_into``) keep in
#: flight per worker when ``window=None``: the window is this many bytes
#: over the mean file size so far, between :data:`WINDOW_MIN` and
#: ``queue_depth``. Warm large files load faster through fewer buffers
#: (they stay in the CPU cache: see docs/bench.md); small files fill the
#: queue as before.
WINDOW_BYTES = 2 << 20
WINDOW_MIN = 8

_NONE = object()  # no item (load_ranges)
_U64 = 1 << 64
_U32 = 1 << 32

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

    __slots__ = ("_h", "_loader", "_id", "_qd", "_aio_waiters", "_area", "_arena", "__weakref__")

    def __init__(self, loader: "Loader", worker_id: int, h: Any):
        self._h = h
        self._loader = loader
        self._id = worker_id
        self._qd = loader.queue_depth
        self._aio_waiters: Any = None
        self._area: Any = None
        self._arena: Any = None

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

    def request(self, filepath: PathLike, tag: Optional[int] = None) -> bool:
        """Requests ``filepath`` (str, bytes or ``os.PathLike``).

        Returns ``True`` when queued and ``False`` when the worker already
        has ``queue_depth`` requests outstanding (get and release entries,
        then retry). Raises ``OSError`` for a request that can never succeed
        (``ENAMETOOLONG``: more than 4095 bytes; ``ESHUTDOWN``: the loader
        was shut down; ``EOWNERDEAD``: the loader died) and ``ValueError``
        for a path holding a NUL byte.

        ``tag``: an integer (0 to 2**64 - 1) the entry returns as
        :attr:`Entry.tag` / ``Batch.tags``, e.g. the path's index in your
        list; 0 when not given.
        """
        p = _fspath_bytes(filepath)
        lib = _ffi.lib()
        if tag is None:
            rc = lib.al_worker_request_bytes(self._h, p, len(p))
        else:
            rc = lib.al_worker_request_tagged(self._h, p, len(p), _u64(tag, "tag"))
        if rc == 0:
            return True
        if rc == -_errno.EAGAIN:
            return False
        raise _oserror(-rc, "request", filepath)

    def request_many(self, paths: Sequence[PathLike], first_tag: int = 0) -> int:
        """Requests ``paths`` in order, in one library call, and returns how
        many were queued (a prefix; it stops when the queue is full). The
        i-th path gets the tag ``first_tag + i``. Raises like
        :meth:`request` only when the first path cannot be queued for a
        reason other than a full queue; a bad path later in the list ends
        the prefix instead."""
        if not paths:
            return 0
        packed, n_ok, bad = _pack(paths)
        n = 0
        if n_ok:
            accepted = c_size_t(0)
            rc = _ffi.lib().al_worker_request_packed(
                self._h, packed, len(packed), _u64(first_tag, "first_tag"), byref(accepted)
            )
            n = accepted.value
            if rc < 0 and rc != -_errno.EAGAIN and n == 0:
                raise _oserror(-rc, "request", paths[0])
            if n < n_ok:
                return n
        if bad is not None and n == 0:
            raise bad
        return n

    # -- byte ranges and destination memory ----------------------------------

    def request_ranges(
        self,
        path: PathLike,
        ranges: Any,
        first_tag: int = 0,
        start: int = 0,
        count: Optional[int] = None,
    ) -> int:
        """Requests byte ranges of ``path`` from a table of ``al_range``
        records, in order, in one library call, and returns how many were
        queued (a prefix; it stops when the queue is full: 0 then, and
        when ``count`` is 0 or ``start`` the end of the table). Each
        range is requested as :meth:`request_range` (``mem`` is
        :data:`asyncloader.NO_DEST`: into an entry buffer) or
        :meth:`request_into` (any other ``mem``) would request it.

        ``ranges``: a buffer of 32-byte records - a ``bytearray`` from
        :func:`asyncloader.pack_ranges`, or a numpy array of the same
        layout (see there) - built once, for a whole shard's index say.
        ``start`` and ``count`` pick records ``start .. start + count - 1``
        (``count=None``: to the end; cut to the records there are), with no
        Python work per record and no copy: the library reads them in
        place (a read-only buffer other than ``bytes`` is copied, the
        records asked for). The record at index ``j`` **of the table** gets
        the tag ``first_tag + j`` (modulo 2**64): with the default, its
        index, whatever ``start`` is. So a loop keeps the queue full with::

            n = worker.request_ranges(shard, table, start=next_j, count=room)
            next_j += n

        Raises like :meth:`request_range` / :meth:`request_into` (``OSError``
        with the library's errno and message: ``EINVAL``, ``EFBIG``,
        ``EXDEV``, ...; ``EINVAL`` too for a record whose ``reserved`` half
        is not 0) only when the record at ``start`` cannot be queued for a
        reason other than a full queue; a bad record later ends the prefix
        instead (the next call, from ``start + returned``, raises its
        error). ``ValueError`` for a buffer that is not whole records, a
        ``start`` past its end or a negative ``count``.
        """
        p = path if type(path) is bytes and b"\0" not in path else _fspath_bytes(path)
        fn = _ffi.lib().al_worker_request_ranges or _ffi.lib().need("al_worker_request_ranges")
        if type(first_tag) is not int or not 0 <= first_tag < _U64:
            first_tag = _u64(first_tag, "first_tag")
        addr, n, keep = _table_at(ranges, start, count)
        if n == 0:
            return 0  # nothing asked for
        if type(start) is not int:
            start = _u64(start, "start")
        accepted = c_size_t(0)
        rc = fn(self._h, p, len(p), addr, n, (first_tag + start) % _U64, byref(accepted))
        del keep
        got = accepted.value
        if rc < 0 and rc != -_errno.EAGAIN and got == 0:
            raise _request_error(rc, "request_ranges", path, f"record {start}")
        return got

    def request_range(self, path: PathLike, offset: int, length: int, tag: int = 0) -> bool:
        """Requests ``length`` bytes of ``path`` at byte ``offset``, read
        into an entry buffer like a whole file. The entry holds the bytes
        actually read: fewer at the end of the file, none for a range past
        it (not an error), never more than ``length``; :attr:`Entry.offset`
        is ``offset``. Ranges of one file requested close together share
        one open of it.

        Returns ``True`` when queued, ``False`` when the queue is full (as
        :meth:`request`). Raises ``ValueError`` for an ``offset`` or
        ``length`` outside ``0 .. 2**64 - 1`` (``TypeError`` for a
        non-integer), and the library's refusals as ``OSError``:
        ``EINVAL`` when ``offset + length`` goes past the largest file
        offset (``2**63 - 1``), ``EFBIG`` when ``length`` is more than
        ``max_file_size`` (split it, or load it into destination memory
        with :meth:`request_into`), and :meth:`request`'s errors.
        """
        p = path if type(path) is bytes and b"\0" not in path else _fspath_bytes(path)
        fn = _ffi.lib().al_worker_request_range_bytes or _ffi.lib().need("al_worker_request_range_bytes")
        if not (
            type(offset) is int
            and type(length) is int
            and type(tag) is int
            and 0 <= offset < _U64
            and 0 <= length < _U64
            and 0 <= tag < _U64
        ):
            offset, length, tag = _u64(offset, "offset"), _u64(length, "length"), _u64(tag, "tag")
        rc = fn(self._h, p, len(p), offset, length, tag)
        if rc == 0:
            return True
        if rc == -_errno.EAGAIN:
            return False
        raise _request_error(rc, "request_range", path)

    def request_into(
        self,
        path: PathLike,
        offset: int,
        length: int,
        dest: int,
        dest_offset: int = 0,
        tag: int = 0,
    ) -> bool:
        """Requests ``length`` bytes of ``path`` at ``offset``, read
        straight into destination memory ``dest`` at ``dest_offset``:
        :data:`asyncloader.ARENA` (the loader's :attr:`Loader.arena`) or an
        id from :meth:`Loader.register`. No ``max_file_size`` limit: files
        of any size load this way (in 1 MiB reads, several in flight).

        The entry's size is the bytes read (short at the end of the file);
        its data (``get_data()``, ``memoryview()``, ``Batch.view(i)``) is
        the destination span itself. Until the entry is released the loader
        may write that span: do not read it before the entry is delivered,
        and never request overlapping spans at the same time.

        Returns ``True`` / ``False`` (queue full) as :meth:`request`.
        Raises ``ValueError``/``TypeError`` for arguments that are not
        unsigned 64-bit integers, and ``OSError``: ``EINVAL`` when ``dest``
        names no memory or ``dest_offset .. dest_offset + length`` is not
        inside it (nothing is written) or the range overflows,
        ``EXDEV`` for registered memory while the loads run in another
        process (a loader process: use the arena), and :meth:`request`'s
        errors.
        """
        p = path if type(path) is bytes and b"\0" not in path else _fspath_bytes(path)
        fn = _ffi.lib().al_worker_request_into or _ffi.lib().need("al_worker_request_into")
        if not (
            type(offset) is int
            and type(length) is int
            and type(dest) is int
            and type(dest_offset) is int
            and type(tag) is int
            and 0 <= offset < _U64
            and 0 <= length < _U64
            and 0 <= dest < _U32
            and 0 <= dest_offset < _U64
            and 0 <= tag < _U64
        ):
            offset, length = _u64(offset, "offset"), _u64(length, "length")
            dest, dest_offset, tag = _u32(dest, "dest"), _u64(dest_offset, "dest_offset"), _u64(tag, "tag")
        rc = fn(self._h, p, len(p), offset, length, dest, dest_offset, tag)
        if rc == 0:
            return True
        if rc == -_errno.EAGAIN:
            return False
        raise _request_error(rc, "request_into", path)

    @property
    def arena(self) -> Optional[memoryview]:
        """The loader's arena as mapped in this process (see
        :attr:`Loader.arena`): a writable ``memoryview``, ``None`` without
        one. Works in any process the worker was pickled to."""
        from ._loader import _arena_span, _arena_view

        if self._arena is None:
            self._arena = _arena_span(_ffi.lib().need("al_worker_arena"), self._h)
        return _arena_view(self._arena, self)

    def load_ranges(
        self, items: Iterable[Tuple[PathLike, int, int]], window: Optional[int] = None
    ) -> Iterator[bytes]:
        """Loads byte ranges - ``(path, offset, length)`` each, ``length``
        at most ``max_file_size`` - and yields their bytes **in the order of
        ``items``** (short or empty at the end of a file, as
        :meth:`request_range`). Up to ``window`` ranges are in flight
        (``None``: ``queue_depth``) and at most ``window`` finished ranges
        wait for their turn, so memory stays bounded for any number of
        items. A range that failed (or cannot be requested) raises its
        ``OSError`` when its turn comes. The worker should have nothing
        else in flight (as for :meth:`load`); leaving the loop early waits
        for and releases the ranges in flight.

        Consecutive items of one path are packed into a table and queued
        with :meth:`request_ranges`, one library call per refill of the
        window rather than one per range: a refill waits until there is
        room for ``min(16, window // 4)`` ranges (at least 1), and up to
        ``max(64, 2 * window)`` items are taken from ``items`` ahead of
        the window to pack them.

        The members of a tar file, say::

            index = [(m.name, m.offset_data, m.size) for m in tarfile.open(shard) if m.isfile()]
            items = [(shard, off, size) for _name, off, size in index]
            for (name, _off, _size), data in zip(index, worker.load_ranges(items)):
                ...
        """
        window = self._qd if window is None else max(1, min(_u32(window, "window"), self._qd))
        lib = _ffi.lib()
        many = lib.al_worker_request_ranges
        one = lib.need("al_worker_request_range_bytes") if many is None else None
        h = self._h
        run_cap = max(64, 2 * window)  # items packed per run, at most
        refill = max(1, min(16, window // 4))  # ranges queued per call, at least
        it = iter(items)
        done: Dict[int, Any] = {}  # tag -> bytes or the exception
        nxt: Any = _NONE  # the next item, taken from `it` but not packed
        bad: Any = None  # the exception of an item that could not be packed
        # The current run: consecutive items of one path, checked and packed.
        run_path: Any = _NONE
        pb = b""
        offs: List[int] = []
        lens: List[int] = []
        base = 0  # address of the run's table
        table: Any = None
        run_n = run_pos = 0
        acc = c_size_t(0)
        pacc = byref(acc)
        n_req = 0  # items taken and queued or failed (the tag of the next one)
        n_out = 0  # items yielded
        outstanding = 0
        exhausted = False
        try:
            while True:
                # Refill, never more than `window` items ahead of the output,
                # and only once there is room for `refill` (a call per
                # yielded item otherwise: room comes one item at a time).
                while min(window - outstanding, n_out + window - n_req) >= refill:
                    if run_pos == run_n:
                        if bad is not None:  # it fails in its turn
                            done[n_req] = bad
                            bad = None
                            n_req += 1
                            continue
                        if exhausted:
                            break
                        # Pack the next run.
                        offs = []
                        lens = []
                        while len(offs) < run_cap:
                            if nxt is _NONE:
                                nxt = next(it, _NONE)
                                if nxt is _NONE:
                                    exhausted = True
                                    break
                            try:
                                path, off, length = nxt
                                if offs:
                                    if path is not run_path and path != run_path:
                                        break  # it starts the next run
                                elif path is not run_path:
                                    pb = _fspath_bytes(path)
                                    run_path = path
                                if not (
                                    type(off) is int
                                    and type(length) is int
                                    and 0 <= off < _U64
                                    and 0 <= length < _U64
                                ):
                                    off, length = _u64(off, "offset"), _u64(length, "length")
                            except (ValueError, TypeError) as e:
                                if offs:
                                    break  # the run ends before it
                                bad = e
                                run_path = _NONE
                                nxt = _NONE
                                break
                            offs.append(off)
                            lens.append(length)
                            nxt = _NONE
                        run_n = len(offs)
                        run_pos = 0
                        if many is not None and run_n:
                            table = _no_dest_table(offs, lens)
                            base = table.buffer_info()[0]
                        continue
                    want = min(window - outstanding, n_out + window - n_req, run_n - run_pos)
                    if many is not None:
                        rc = many(h, pb, len(pb), base + RANGE_SIZE * run_pos, want, n_req, pacc)
                        k = acc.value
                    else:  # a library without al_worker_request_ranges
                        k = rc = 0
                        while k < want:
                            rc = one(h, pb, len(pb), offs[run_pos + k], lens[run_pos + k], n_req + k)
                            if rc < 0:
                                break
                            k += 1
                    run_pos += k
                    n_req += k
                    outstanding += k
                    if rc == 0:
                        continue
                    if rc == -_errno.EAGAIN:
                        break  # queue full
                    # The library refused the range at run_pos: it fails in its turn.
                    e = _request_error(rc, "request_range", run_path)
                    if e.errno in (_errno.ESHUTDOWN, _errno.EOWNERDEAD):
                        raise e
                    done[n_req] = e
                    n_req += 1
                    run_pos += 1
                if n_out in done:
                    v = done.pop(n_out)
                    n_out += 1
                    if isinstance(v, BaseException):
                        raise v
                    yield v
                    continue
                if outstanding == 0:
                    if exhausted and run_pos == run_n and bad is None and n_out == n_req:
                        return
                    raise RuntimeError(
                        f"worker {self._id}: queue full with no range of this "
                        "load in flight: release the entries you hold"
                    )
                # Every completion that is ready, in one call.
                with self.get_batch(outstanding) as b:
                    outstanding -= len(b)
                    for i, t in enumerate(b.tags):
                        done[t] = b.exception(i) if b.errors[i] else b.data(i)
        finally:
            self._drain_in_flight(outstanding)

    def read_into(
        self,
        path: PathLike,
        dest: Any,
        dest_offset: int = 0,
        offset: int = 0,
        length: Optional[int] = None,
    ) -> int:
        """Reads ``path`` (or ``length`` bytes of it from ``offset``; the
        rest of the file when ``None``) into destination memory with one
        :meth:`request_into`, of any size, waits for it, and returns the
        number of bytes read (fewer than asked at the end of the file).

        ``dest``: :data:`asyncloader.ARENA`, an id from
        :meth:`Loader.register`, or a writable C-contiguous buffer
        (``bytearray``, numpy array, ``mmap``), which is registered for
        the call and unregistered after it (so, as for any registered
        memory, not with a loader process: use the arena there). The bytes
        land at ``dest_offset``. The worker should have nothing else in
        flight. Raises the load's ``OSError`` (``FileNotFoundError``...),
        ``OSError(EINVAL)`` when the bytes do not fit in ``dest`` (nothing
        written), ``RuntimeError`` when the queue is full of entries held
        elsewhere. The wait can be interrupted (Ctrl-C): then the load is
        waited for a little longer, and a buffer registered for the call
        stays pinned until the loader goes if it did not finish.
        """
        loader = self._loader
        temp = None
        if isinstance(dest, int) and not isinstance(dest, bool):
            mem = dest
        else:
            mem = temp = loader.register(dest)
        in_flight = 0
        try:
            if length is None:
                length = max(0, os.stat(path).st_size - _u64(offset, "offset"))
            if not self.request_into(path, offset, length, mem, dest_offset):
                raise RuntimeError(
                    f"worker {self._id}: queue full: release the entries you hold before read_into"
                )
            in_flight = 1
            with self.get_batch(1) as b:  # waits without limit, in slices
                in_flight = 0
                b.raise_for_error()
                return b.sizes[0]
        finally:
            if in_flight:
                in_flight = self._drain_in_flight(in_flight)
            if temp is not None:
                if in_flight:
                    # The load may still write the buffer: keep it pinned.
                    loader._retired.append(loader._mems[temp])
                loader.unregister(temp)

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

    def _drain_in_flight(self, outstanding: int) -> int:
        """Takes and releases ``outstanding`` entries still in flight (5 s at
        most per batch; stops at an error), so their buffers come back when a
        consumer leaves a loading loop early. Returns how many it did not
        get."""
        while outstanding > 0:
            try:
                b = self.get_batch(outstanding, timeout=5.0)
            except OSError:
                break
            if not len(b):
                break
            outstanding -= len(b)
            b._release_deferred()
        return outstanding

    def get_batch(self, max_n: int = 32, timeout: Optional[float] = None) -> Batch:
        """Waits (like :meth:`wait_get`) until at least one entry is ready,
        then takes up to ``max_n`` ready entries without waiting further,
        in ONE library call, as a :class:`Batch` (lists of tags, sizes and
        errors; views and copies per entry). Release the batch (or use it
        in a ``with`` block) to give all its buffers back at once.

        ``timeout=0`` never blocks; ``None`` or ``-1`` waits without limit
        (other negative values and ``nan`` raise ``ValueError``). Returns an
        empty batch when the timeout passes with nothing ready. Raises
        ``OSError`` (``ESHUTDOWN``/``EOWNERDEAD``) when nothing can ever
        arrive.
        """
        deadline = _deadline(timeout)
        if max_n <= 0:
            return Batch(self)
        # A fresh array per call: the GIL is released during the call, so a
        # buffer shared by threads using this Worker could be overwritten.
        items = (_ffi.al_batch_item * max_n)()
        got = c_size_t(0)
        fn = _ffi.lib().al_worker_get_batch
        while True:
            slice_ns = _slice_ns(deadline)
            rc = fn(self._h, items, max_n, slice_ns, byref(got))
            n = got.value
            if n:
                return Batch(self, items, n)
            if rc != -_errno.ETIMEDOUT and rc != -_errno.EAGAIN and rc < 0:
                raise _oserror(-rc, "get_batch")
            if deadline is not None and time.monotonic() >= deadline:
                return Batch(self)

    def get_many(self, max_n: int, timeout: Optional[float] = None) -> List[Entry]:
        """Waits (like :meth:`wait_get`) until at least one entry is ready,
        then returns up to ``max_n`` ready entries without waiting further
        (one library call; :meth:`get_batch` without an object per entry).

        ``timeout=0`` never blocks; ``None`` or ``-1`` waits without limit
        (other negative values and ``nan`` raise ``ValueError``). Returns
        ``[]`` when the timeout passes with nothing ready (it does not raise
        ``TimeoutError``).
        """
        return _entries(self, self.get_batch(max_n, timeout))

    def _buffer_area(self) -> Tuple[int, Any]:
        """(address, ctypes array type) of this worker's buffers in this
        process, asked once (``al_worker_buffers``)."""
        a = self._area
        if a is None:
            base = ctypes.c_void_p()
            n = c_size_t()
            _check(_ffi.lib().al_worker_buffers(self._h, byref(base), byref(n)), "buffers")
            a = self._area = (base.value or 0, ctypes.c_uint8 * n.value)
        return a

    # -- the window pattern --------------------------------------------------

    def _window(self, paths: Iterable[PathLike], window: Optional[int], batch: int) -> Iterator[Batch]:
        """The window loop behind :meth:`load` and :meth:`load_batches`:
        keeps up to ``window`` requests in flight (``None``: see
        :data:`WINDOW_BYTES`), each tagged with its path's index in
        ``paths``, and yields batches of up to ``batch`` completions (a
        path that cannot even be requested as a failed one-entry batch that
        owns no buffer). The consumer releases each batch (or takes its
        entries) before asking for the next; closing the generator waits
        for and releases the requests still in flight.
        """
        # O_DIRECT reads bypass the CPU cache (DMA) and want depth: no cap.
        auto = window is None and not self._loader.direct
        window = self._qd if window is None else max(1, min(window, self._qd))
        seen_files = seen_bytes = 0
        batch = max(1, batch)
        it = iter(paths)
        pending: List[Any] = []  # requested next, as given
        tag = 0  # index of pending[0] in paths
        exhausted = False
        outstanding = 0
        try:
            while True:
                # Fill the window.
                while outstanding < window:
                    want = window - outstanding
                    if len(pending) < want and not exhausted:
                        k = len(pending)
                        pending += islice(it, want - k)
                        exhausted = len(pending) < want
                    if not pending:
                        break
                    chunk = pending[:want]
                    try:
                        n = self.request_many(chunk, tag)
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
                        tag += 1
                        yield Batch._failed(self, tag - 1, pb, code)
                        continue
                    del pending[:n]
                    tag += n
                    outstanding += n
                    if n < len(chunk):
                        break  # queue full: entries are held elsewhere
                if outstanding == 0:
                    if exhausted and not pending:
                        return
                    raise RuntimeError(
                        f"worker {self._id}: queue full with no request of this "
                        "load in flight: release the entries you hold"
                    )
                b = self.get_batch(min(batch, outstanding))
                outstanding -= len(b)
                if auto and seen_files < 4096:
                    # The window in bytes: settles on the files' mean size.
                    seen_files += len(b)
                    seen_bytes += sum(b.sizes)
                    fit = WINDOW_BYTES * seen_files // max(1, seen_bytes)
                    window = max(min(WINDOW_MIN, self._qd), min(self._qd, fit))
                yield b
        finally:
            self._drain_in_flight(outstanding)

    def load_batches(
        self, paths: Iterable[PathLike], window: Optional[int] = None, batch: int = 32
    ) -> Iterator[Batch]:
        """Loads every path like :meth:`load`, but yields :class:`Batch`
        objects (up to ``batch`` entries each, in completion order): one
        Python object and one library call per batch, not per file. Each
        entry's tag (``batch.tags[i]``) is its path's index in ``paths``
        (counting from 0 in iteration order), so results go straight to
        their place::

            out = [None] * len(paths)
            for b in worker.load_batches(paths):
                for i, tag in enumerate(b.tags):
                    out[tag] = b.data(i)        # or b.view(i) while b lives

        Each batch is released when the generator resumes: copy what you
        keep, or drop the views first (a view still alive then raises
        ``BufferError`` from the loop, and the batch is released when the
        last view goes). Failed loads are in the batches too (check
        ``b.errors[i]``, or let ``b.data(i)`` raise); a path that cannot
        even be requested (too long, NUL byte) comes as a one-entry batch
        with ``ENAMETOOLONG``/``EINVAL``. ``window`` as for :meth:`load`. Leaving the loop early waits for and
        releases the requests still in flight.
        """
        gen = self._window(paths, window, batch)
        held: Optional[Batch] = None
        try:
            for held in gen:
                yield held
                b, held = held, None
                b.release()  # BufferError if a derived view is alive
        finally:
            if held is not None:
                held._release_deferred()
            gen.close()

    def load(
        self, paths: Iterable[PathLike], window: Optional[int] = None, batch: int = 32
    ) -> Iterator[Entry]:
        """Loads every path, keeping up to ``window`` requests in flight, and
        yields entries in completion order (not request order).

        Each entry is released when the generator resumes (the caller asks
        for the next one), so **copy what you keep** (``get_data()`` or
        ``bytes(view)``); releasing raises ``BufferError`` if a view derived
        from ``entry.memoryview()`` is still alive. Failed loads are yielded
        too: check ``entry.error`` or let ``get_data()`` raise. A path that
        cannot even be requested (too long, NUL byte) is yielded as a failed
        entry (``ENAMETOOLONG`` / ``EINVAL``) that owns no buffer.
        ``entry.tag`` is the path's index in ``paths``.

        ``window``: requests kept in flight, capped at the worker's
        ``queue_depth``; ``None`` sizes it from the files as they arrive (as
        many as :data:`WINDOW_BYTES` of data hold, at least 8: small files
        fill the queue, large ones keep their buffers in the CPU cache;
        with ``direct=True``, the whole queue).
        ``batch`` is how many completions are fetched per library call. Leaving the loop early
        (``break``) waits for and releases the requests still in flight.
        (:meth:`load_batches` does the same with one object per batch.)
        """
        gen = self._window(paths, window, batch)
        current: List[Entry] = []
        held: Optional[Entry] = None
        done: List[Any] = []  # handles detached, released in one call
        try:
            for b in gen:
                if b._handles[0] == 0:  # a path that could not be requested
                    current = [Entry(self, None, path=b._paths[0], err=b.errors[0])]  # type: ignore[index]
                    current[0]._tag = b.tags[0]
                else:
                    current = _entries(self, b)
                current.reverse()
                while current:
                    held = current.pop()
                    yield held
                    e, held = held, None
                    h = e._detach()  # BufferError if a derived view is alive
                    if h is not None:
                        done.append(h)
                # Before the window refills: their buffers are its room.
                if done:
                    self._release_handles(done)
        finally:
            if done:
                self._release_handles(done)
            if held is not None:
                held._release_deferred()
            for e in current:
                e._release_deferred()
            gen.close()

    def load_into(
        self, paths: Sequence[PathLike], out: Any, window: Optional[int] = None
    ) -> List[Tuple[int, int]]:
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
        result: List[Tuple[int, int]] = [(0, 0)] * len(paths)
        used = 0
        need = 0
        missed = 0
        failure: Optional[BaseException] = None
        memmove = ctypes.memmove
        for b in self.load_batches(paths, window=window):
            errors = b.errors
            if failure is None and any(errors):
                failure = b.exception(next(i for i, e in enumerate(errors) if e))
            for tag, src, size, err in zip(b.tags, b._datas, b.sizes, errors):
                if err:
                    continue
                need += size
                if used + size > cap:
                    missed += 1
                    continue
                if size:
                    memmove(base + used, src, size)
                result[tag] = (used, size)
                used += size
        del pin
        if need > cap:
            raise ValueError(
                f"load_into: the files need {need} bytes, the destination holds {cap}: "
                f"{missed} of {len(paths)} files were not copied"
            )
        if failure is not None:
            raise failure
        return result

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
        from ._loader import _attach_worker

        return (_attach_worker, (self._loader.name, self._id))

    def __repr__(self) -> str:
        return f"<asyncloader.Worker id={self._id} loader={self._loader.name!r}>"


def _request_error(rc: int, what: str, path: Any, where: str = "") -> OSError:
    """The ``OSError`` of a refused request, with the library's message
    (which says why: the range, the destination, the limit), and ``where``
    (which record of a table) after it."""
    msg = _ffi.lib().last_error_message() or what
    return _oserror(-rc, f"{msg}; {where}" if where else msg, path)


def _entries(worker: Worker, b: Batch) -> List[Entry]:
    """The entries of batch ``b`` as ``Entry`` objects, which own the
    handles from then on (``b`` is marked released)."""
    out = [
        Entry._delivered(worker, h, d, s, e, t, pp, pl)
        for h, d, s, e, t, pp, pl in zip(b._handles, b._datas, b.sizes, b.errors, b.tags, b._pptrs, b._plens)
    ]
    b._released = True
    return out
