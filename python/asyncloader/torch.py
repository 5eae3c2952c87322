"""PyTorch datasets over asyncloader: ``FileDataset`` (map-style, batched),
``RangeDataset`` (the same over byte ranges: samples inside tar shards)
and ``ShardedFileIterable`` (iterable-style, sharded, epoch-shuffled).

``torch`` is imported lazily (only when a class is used), so ``import
asyncloader`` and even ``import asyncloader.torch`` work without it.

Design (see docs/python.md, "PyTorch"):

* **One loader, created in the main process** when the dataset is
  constructed, running as loader threads there (``Loader.start()``). The
  loader's name encodes its creator's pid and attaching needs the creator
  alive; the main process outlives every DataLoader worker, while a worker
  process (non-persistent workers exit after each epoch) does not, so the
  creator must be the main process. ``fork`` children inherit the
  ``Loader``; ``spawn``/``forkserver`` children unpickle the dataset and the
  ``Loader`` in it reattaches by name.
* **Worker ids are claimed, not assigned**: each process that loads (the
  main process with ``num_workers=0``, each DataLoader worker) claims the
  first free id by binding an abstract Unix socket named after the loader
  and the id. The kernel releases the name when the process exits, however
  it exits (SIGKILL included), so two live processes never share an id —
  not even two DataLoaders over one dataset, or an old iterator's workers
  still alive while a new epoch's start — and no file is left behind. The
  process that claims an id first calls ``reclaim_worker(id)``, which
  returns buffers a dead previous holder left behind.
* The DataLoader worker index (``get_worker_info().id``) is used for
  sharding in ``ShardedFileIterable``, never as the loader's worker id.
"""

from __future__ import annotations

import errno as _errno
import hashlib
import operator
import os
import random
import re
import socket
import stat as _stat
import time
import threading
from collections import deque
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from . import _entry, _loader, _util, _worker
from .tar_index import tar_members

__all__ = [
    "FileDataset",
    "RangeDataset",
    "ShardedFileIterable",
    "EpochBatchSampler",
    "BatchLoadError",
    "SKIP",
    "collate_bytes",
    "tar_members",
]

#: Returned by an ``on_error`` callable: leave the sample out.
SKIP: Any = object()

_DEFAULT_QUEUE_DEPTH = 128

# How long a packed batch waits for the main process to take earlier ones.
_PACKED_WAIT_S = 600.0


try:
    # `import asyncloader` never imports torch; this module does, so that the
    # classes are torch Datasets (DataLoader tells iterable-style datasets by
    # isinstance). Without torch they still work as plain Python objects.
    from torch.utils.data import Dataset as _Dataset
    from torch.utils.data import IterableDataset as _IterableDataset
except ImportError:  # pragma: no cover - exercised only without torch
    _Dataset = object  # type: ignore[misc,assignment]
    _IterableDataset = object  # type: ignore[misc,assignment]


def _worker_info():
    try:
        from torch.utils.data import get_worker_info
    except ImportError:  # pragma: no cover - used without torch
        return None
    return get_worker_info()


class BatchLoadError(OSError):
    """A file of a batch failed to load (``on_error="raise"``). ``errno``
    and ``filename`` are the failed file's; ``index`` is its dataset index.

    A DataLoader worker's exception reaches the main process rebuilt from
    its message (``BatchLoadError(message)``, the worker's traceback): then
    ``errno``, ``filename`` and ``index`` are parsed back from it."""

    def __init__(self, code: Any, path: Optional[str] = None, index: Optional[int] = None):
        if path is None and isinstance(code, str):  # rebuilt from a message
            msg = code
            m = re.search(r"BatchLoadError: \[Errno (\d+)\] (.*?): '(.*)'$", msg, re.M)
            im = re.search(r"\(dataset index (\d+)\)", msg)
            if m:
                super().__init__(int(m.group(1)), msg, m.group(3))
            else:
                super().__init__(msg)
            self.index = int(im.group(1)) if im else None
            return
        where = f" (dataset index {index})" if index is not None else ""
        super().__init__(code, f"{os.strerror(code)}: asyncloader could not load{where}", path)
        self.index = index

    def __reduce__(self):
        return (type(self), (self.errno, self.filename, self.index))


# ---------------------------------------------------------------------------
# The loader a dataset uses, and per-process worker-id claims
# ---------------------------------------------------------------------------


def _sizes(paths: Sequence[Any]) -> List[int]:
    """The size of each path (stat); 0 for a path that cannot be stat'ed
    or is not a regular file: its load fails later, with the path and
    errno, like any other failure."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append(0)
            continue
        out.append(st.st_size if _stat.S_ISREG(st.st_mode) else 0)
    return out


def _make_loader(paths, sizes, max_file_size, n_workers, queue_depth, loader_kwargs) -> _loader.Loader:
    sized = max_file_size is None
    if sized:
        max_file_size = max(sizes, default=0) or 1
    try:
        ld = _loader.Loader(
            queue_depth=queue_depth, max_file_size=max_file_size, n_workers=n_workers, **loader_kwargs
        )
    except ValueError as e:
        if sized and "max_file_size" in str(e):
            biggest = [os.fspath(p) for p, n in zip(paths, sizes) if n == max_file_size][:3]
            raise ValueError(
                f"the largest file is {max_file_size} bytes ({', '.join(map(str, biggest))}), "
                f"more than the library accepts: {e}"
            ) from None
        raise
    ld.start()
    return ld


class _Claim:
    """A claimed worker id of a loader in this process (see the module doc)."""

    def __init__(self, loader: _loader.Loader):
        tag = hashlib.sha1(loader.name.encode()).hexdigest()[:24]
        for wid in range(loader.n_workers):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                s.bind(f"\0asyncloader-torch-{tag}-{wid}")
            except OSError as e:
                s.close()
                if e.errno == _errno.EADDRINUSE:
                    continue
                raise
            self.sock = s
            self.id = wid
            self.lookahead: Optional[_Lookahead] = None
            self.pid = os.getpid()
            # A previous holder of this id is dead (its name is free): take
            # back whatever it left outstanding.
            loader.reclaim_worker(wid)
            self.worker = loader.get_worker_context(wid)
            return
        raise RuntimeError(
            f"all {loader.n_workers} worker ids of the asyncloader loader are in use by live "
            "processes: create the dataset with a larger n_workers (it must be at least the "
            "DataLoader's num_workers, plus 1 for loading in the main process, for every "
            "DataLoader using this dataset at the same time)"
        )

    def close(self) -> None:
        try:
            self.worker.close()
        finally:
            self.sock.close()


class _LoaderMixin:
    """Owns (or borrows) a Loader and hands each process its worker."""

    def _init_loader(self, paths, loader, max_file_size, n_workers, queue_depth, loader_kwargs,
                     need_sizes=False, sizes=None):
        # File sizes: for max_file_size=None and for the lookahead's budget
        # (``sizes``: known already, the lengths of byte ranges say).
        self._file_sizes: Optional[List[int]] = sizes
        if sizes is None and ((max_file_size is None and loader is None) or need_sizes):
            self._file_sizes = _sizes(paths)
        if loader is not None:
            self._loader = loader
            self._owns = False
        else:
            if n_workers is None:
                n_workers = max(8, os.cpu_count() or 1) + 1
            self._loader = _make_loader(
                paths, self._file_sizes, max_file_size, n_workers, queue_depth, loader_kwargs
            )
            self._owns = True
        self._claim: Optional[_Claim] = None
        self._lock = threading.Lock()

    @property
    def loader(self) -> _loader.Loader:
        """The asyncloader ``Loader`` this dataset loads through."""
        return self._loader

    def _worker(self) -> _worker.Worker:
        c = self._claim
        if c is None or c.pid != os.getpid():  # new process (fork): claim again
            with self._lock:
                c = self._claim
                if c is None or c.pid != os.getpid():
                    if self._loader is None:
                        raise ValueError("dataset is closed")
                    c = self._claim = _Claim(self._loader)
        return c.worker

    def close(self) -> None:
        """Releases this process's worker id; shuts the loader down if this
        dataset created it, in the process that created it. Idempotent."""
        c, self._claim = self._claim, None
        if c is not None and c.pid == os.getpid():
            if c.lookahead is not None:
                c.lookahead.drop(c.worker)
            c.close()
        ld, self._loader = self._loader, None
        if ld is not None and self._owns:
            ld.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> Dict[str, Any]:
        if self._loader is None:
            raise ValueError("dataset is closed")
        st = self.__dict__.copy()
        st["_claim"] = None
        st["_lock"] = None
        st["_owns"] = False  # a copy never shuts the loader down
        return st

    def __setstate__(self, st: Dict[str, Any]) -> None:
        self.__dict__.update(st)
        self._lock = threading.Lock()


def _check_on_error(on_error):
    if on_error in ("raise", "skip") or callable(on_error):
        return on_error
    raise ValueError(f'on_error must be "raise", "skip" or a callable, not {on_error!r}')


def _failed(on_error, code: int, path: str, index: Optional[int]) -> Any:
    """The sample for a failed load, or ``SKIP``; raises for ``"raise"``."""
    if on_error == "raise":
        raise BatchLoadError(code, path, index)
    if on_error == "skip":
        return SKIP
    return on_error(path, OSError(code, os.strerror(code), path))


def _load_ordered(worker: _worker.Worker, paths: Sequence[Any], on_done: Callable[[int, Any], None]) -> None:
    """Requests ``paths`` (a window of up to ``queue_depth``) and calls
    ``on_done(position, entry)`` as each completes; the entry is released
    after the call (released in groups, one library call per group). On any
    exception, what is in flight is waited for and released before it
    propagates (no buffer stays claimed)."""
    qd = worker.loader.queue_depth
    pos_of: Dict[bytes, Any] = {}
    bs = [_util._fspath_bytes(p) for p in paths]
    n = len(bs)
    nxt = 0
    outstanding = 0
    got: List[_entry.Entry] = []
    done: List[Any] = []  # detached handles, released together
    try:
        while nxt < n or outstanding:
            if nxt < n and outstanding < qd:
                k = worker.request_many(bs[nxt : nxt + qd - outstanding])
                for j in range(nxt, nxt + k):
                    b = bs[j]
                    q = pos_of.get(b)
                    if q is None:
                        pos_of[b] = j  # the common case: a path once per batch
                    elif isinstance(q, deque):
                        q.append(j)
                    else:
                        pos_of[b] = deque((q, j))
                nxt += k
                outstanding += k
            if outstanding == 0:
                raise RuntimeError(
                    f"asyncloader worker {worker.id}: queue full with nothing of this batch "
                    "in flight (entries held elsewhere in this process?)"
                )
            got = worker.get_many(outstanding)
            outstanding -= len(got)
            got.reverse()
            while got:
                e = got.pop()
                try:
                    q = pos_of[e.path_bytes]
                    on_done(q.popleft() if isinstance(q, deque) else q, e)
                finally:
                    h = e._detach() if not e.released else None
                    if h is not None:
                        done.append(h)
            if done:
                worker._release_handles(done)
    finally:
        if done:
            worker._release_handles(done)
        for e in got:
            e._release_deferred()
        worker._drain_in_flight(outstanding)


def _pack_tensors(sizes: List[int], data: Any):
    """(data, offsets) tensors for samples of ``sizes`` laid out in ``data``."""
    import torch

    offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64)
    if sizes:
        torch.cumsum(torch.tensor(sizes, dtype=torch.int64), 0, out=offsets[1:])
    return data, offsets


def collate_bytes(batch: Sequence[bytes]):
    """A ``collate_fn`` for raw samples: packs a batch of ``bytes`` into one
    ``uint8`` tensor and an ``int64`` tensor of ``len(batch) + 1`` offsets
    (sample ``i`` is ``data[offsets[i]:offsets[i+1]]``). One tensor crosses
    from a DataLoader worker to the main process (through shared memory)
    instead of ``len(batch)`` pickled ``bytes`` objects.

    A batch of a ``FileDataset(packed=True)`` is not copied in the worker:
    only the tickets of its entries cross to the main process, which copies
    the bytes once, straight from the loader's shared memory, into the
    batch tensor (see :class:`FileDataset`)."""
    import torch

    if isinstance(batch, PackedSamples):
        return batch if _worker_info() is not None else batch.unpack()
    sizes = [len(b) for b in batch]
    buf = bytearray(b"".join(batch))
    data = torch.frombuffer(buf, dtype=torch.uint8) if buf else torch.empty(0, dtype=torch.uint8)
    return _pack_tensors(sizes, data)


class PackedSamples:
    """The samples of a ``FileDataset(packed=True)`` batch, still in the
    loader's shared memory: one ticket per sample (see
    :meth:`asyncloader.Batch.handoff`). :func:`collate_bytes` turns it into
    the usual ``(data, offsets)`` pair; pickled (from a DataLoader worker to
    the main process) it travels as the tickets alone and is unpacked, once,
    in the receiving process. Each ticket must be unpacked (or dropped) by
    exactly one process: a ``PackedSamples`` that is never unpacked keeps
    its buffers until the loader closes."""

    __slots__ = ("loader_name", "tickets", "sizes", "keep", "extra")

    def __init__(self, loader_name: str, tickets: List[int], sizes: List[int], keep: Optional[List[int]], extra: Dict[int, bytes]):
        self.loader_name = loader_name
        self.tickets = tickets  # one per requested position
        self.sizes = sizes
        self.keep = keep  # positions kept, in order (None: all)
        self.extra = extra  # position -> replacement bytes (on_error callable)

    def __len__(self) -> int:
        return len(self.tickets) if self.keep is None else len(self.keep)

    def __reduce__(self):
        return (_unpack_packed, (self.loader_name, self.tickets, self.sizes, self.keep, self.extra))

    def unpack(self):
        """The ``(data, offsets)`` tensors: copies the bytes out of the
        shared memory (one copy) and releases the entries."""
        return _unpack_packed(self.loader_name, self.tickets, self.sizes, self.keep, self.extra)


def _unpack_packed(name: str, tickets: List[int], sizes: List[int], keep, extra):
    import torch

    loader = _loader._known.get(name) or _loader.Loader.attach(name)
    data = torch.empty(sum(sizes), dtype=torch.uint8)
    got = loader.take(tickets, data.numpy()) if tickets else []
    if keep is None:
        return _pack_tensors(got, data)
    # Some samples were skipped or replaced (on_error): lay them out anew.
    offs = [0]
    for n in got:
        offs.append(offs[-1] + n)
    raw = data.numpy()
    parts = [extra[p] if p in extra else raw[offs[p] : offs[p + 1]].tobytes() for p in keep]
    return collate_bytes(parts)


# ---------------------------------------------------------------------------
# Batches the workers can predict, and the lookahead over them
# ---------------------------------------------------------------------------


class _Batch(list):
    """A batch of indices that says where it is in its epoch (``spec``: the
    sampler's parameters, ``epoch``, ``number``), so that the DataLoader
    worker receiving it can compute its next batches. Pickles as a list
    plus those three attributes."""

    __slots__ = ("spec", "epoch", "number")

    def __reduce__(self):
        return (_make_batch, (list(self), self.spec, self.epoch, self.number))


def _make_batch(items, spec, epoch, number) -> _Batch:
    b = _Batch(items)
    b.spec, b.epoch, b.number = spec, epoch, number
    return b


_orders: Dict[Any, List[int]] = {}  # (spec, epoch) -> this rank's order (the last 4)


def _rank_order(spec, epoch: int) -> List[int]:
    key = (spec, epoch)
    order = _orders.get(key)
    if order is None:
        n, _bs, shuffle, seed, drop_last, replicas, rank = spec
        order = list(range(n))
        if shuffle:
            random.Random(seed + epoch).shuffle(order)
        if drop_last:
            order = order[: n - n % replicas]
        elif n % replicas and n:
            need = replicas - n % replicas
            order += (order * (need // n + 1))[:need]
        order = order[rank::replicas]
        while len(_orders) >= 4:  # a few samplers (train, val...) over a dataset
            del _orders[next(iter(_orders))]
        _orders[key] = order
    return order


def _batch_of(spec, epoch: int, number: int) -> Optional[List[int]]:
    bs, drop_last = spec[1], spec[4]
    order = _rank_order(spec, epoch)
    part = order[number * bs : (number + 1) * bs]
    if not part or (drop_last and len(part) < bs):
        return None
    return part


def _dist_rank_world():
    """(rank, world size) from ``torch.distributed`` when initialised, else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return 0, 1


class EpochBatchSampler:
    """A batch sampler whose batches are a pure function of ``(seed,
    epoch)``: ``DistributedSampler``'s order (shuffled with
    ``random.Random(seed + epoch)``, padded to a multiple of
    ``num_replicas`` or with ``drop_last`` the tail dropped, then
    ``rank::num_replicas``) cut into batches of ``batch_size``. Call
    :meth:`set_epoch` before each epoch.

    Each batch tells the dataset where it is, so a DataLoader worker can
    compute its next batches and :class:`FileDataset` can request them
    ahead (``lookahead_bytes``). Made by :meth:`FileDataset.batch_sampler`.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        self.spec = (int(n), int(batch_size), bool(shuffle), int(seed), bool(drop_last),
                     int(num_replicas), int(rank))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(_rank_order(self.spec, self.epoch))
        bs = self.spec[1]
        return n // bs if self.spec[4] else (n + bs - 1) // bs

    def __iter__(self) -> Iterator[List[int]]:
        for k in range(len(self)):
            yield _make_batch(_batch_of(self.spec, self.epoch, k), self.spec, self.epoch, k)


class _Lookahead:
    """Per process: requests issued ahead for predicted batches, and the
    entries that completed for them, bounded by a byte budget."""

    def __init__(self) -> None:
        self.owners: Dict[bytes, deque] = {}  # path -> FIFO of owners in flight
        self.ready: Dict[int, List[_entry.Entry]] = {}  # index -> held entries
        self.flying: Dict[int, int] = {}  # index -> lookahead requests in flight
        self.bytes = 0  # sizes of ready + flying lookahead files
        self.outstanding = 0  # this process's requests in flight (all)
        self.wanted: set = set()  # indices of the predicted batches

    def drop(self, worker: _worker.Worker) -> None:
        """Releases everything held and waits for what is in flight."""
        for es in self.ready.values():
            for e in es:
                e._release_deferred()
        self.ready.clear()
        worker._drain_in_flight(self.outstanding)
        self.owners.clear()
        self.flying.clear()
        self.bytes = 0
        self.outstanding = 0
        self.wanted = set()


def _load_packed(ds: Any, worker: _worker.Worker, idx: List[int], request: Callable[[int], int],
                 name: Callable[[int], str], short: Optional[List[int]] = None) -> "PackedSamples":
    """The batch loop of ``packed=True`` (:class:`FileDataset`,
    :class:`RangeDataset`): ``request(nxt)`` queues positions ``nxt, ...``
    of the batch, each tagged with its position, and returns how many it
    queued; the entries are handed over as tickets. ``name(pos)`` is the
    path ``on_error`` sees; with ``short`` (the lengths asked for), an
    entry of fewer bytes fails with ``ENODATA``."""
    loader = ds._loader
    n = len(idx)
    if n > worker.loader.queue_depth:
        raise ValueError(
            f"a batch of {n} samples does not fit in queue_depth={worker.loader.queue_depth} "
            "(packed=True holds a whole batch): raise queue_depth"
        )
    tickets = [0] * n
    sizes = [0] * n
    errors: Dict[int, int] = {}
    nxt = inflight = 0
    waited = 0.0
    try:
        while nxt < n or inflight:
            if nxt < n:
                k = request(nxt)
                nxt += k
                inflight += k
                if k == 0 and inflight == 0:
                    # The queue holds batches handed to the main process
                    # and not taken yet: it takes them in order, and
                    # they were sent before this one.
                    if waited > _PACKED_WAIT_S:
                        raise RuntimeError(
                            f"asyncloader worker {worker.id}: queue full for {waited:.0f} s with "
                            "batches handed over and not taken (is the main process consuming?)"
                        )
                    time.sleep(0.001)
                    waited += 0.001
                    continue
            b = worker.get_batch(inflight)
            inflight -= len(b)
            for pos, size, err in zip(b.tags, b.sizes, b.errors):
                sizes[pos] = size
                if err:
                    errors[pos] = err
                elif short is not None and size < short[pos]:
                    errors[pos] = _errno.ENODATA
            for pos, t in zip(b.tags, b.handoff()):
                tickets[pos] = t
    except BaseException:
        loader.drop_tickets([t for t in tickets if t])
        worker._drain_in_flight(inflight)  # what is still in flight goes back too
        raise
    keep: Optional[List[int]] = None
    extra: Dict[int, bytes] = {}
    if errors:
        keep = []
        try:
            for pos in range(n):
                if pos not in errors:
                    keep.append(pos)
                    continue
                sample = _failed(ds.on_error, errors[pos], name(pos), idx[pos])
                if sample is not SKIP:
                    extra[pos] = bytes(sample)
                    keep.append(pos)
        except BaseException:
            loader.drop_tickets([t for t in tickets if t])
            raise
        ds.skipped += n - len(keep)
    return PackedSamples(loader.name, tickets, sizes, keep, extra)


# ---------------------------------------------------------------------------
# FileDataset
# ---------------------------------------------------------------------------


class _MapStyle:
    """``__getitem__`` of the map-style datasets: a batch of one."""

    def __getitem__(self, index: int) -> Any:
        out = self.__getitems__([index])
        if not out:
            raise KeyError(f"sample {index} was skipped (on_error)")
        return out[0]


class FileDataset(_MapStyle, _LoaderMixin, _Dataset):
    """A map-style dataset: sample ``i`` is ``transform(bytes of paths[i])``
    (the bytes themselves without a transform).

    ``DataLoader`` calls :meth:`__getitems__` with a whole batch of indices:
    they are requested from the loader at once, gathered as they complete,
    and returned in index order. Works with any sampler (``shuffle=True``,
    ``DistributedSampler``, ``BatchSampler``), ``num_workers`` 0 or more,
    ``persistent_workers`` and the ``fork``/``spawn``/``forkserver`` start
    methods.

    * ``max_file_size``: ``None`` stats every path and uses the largest size.
    * ``loader``: an already running ``asyncloader.Loader`` to use instead of
      creating one (then ``n_workers``, ``queue_depth``, ``loader_kwargs``
      are ignored and :meth:`close` leaves it running).
    * ``n_workers``: worker contexts, i.e. processes that can load at the
      same time (DataLoader workers + the main process); default
      ``max(8, cpus) + 1``.
    * ``queue_depth``: requests in flight per process (default 128).
    * ``on_error``: ``"raise"`` (a :class:`BatchLoadError` naming the path,
      errno and index), ``"skip"`` (the sample is left out: the batch is
      shorter, and :attr:`skipped` counts it in this process) or a callable
      ``on_error(path, exc)`` returning the replacement sample (or ``SKIP``).
    * ``loader_kwargs``: more ``Loader`` arguments (``loader_threads``,
      ``direct``, ``backend``...).
    * ``packed``: for raw bytes with ``collate_fn=collate_bytes`` (no
      ``transform``): a DataLoader worker does not copy the batch; it hands
      its entries over (tickets, a few bytes each) and the main process
      copies the bytes once, from the loader's shared memory, into the
      ``(data, offsets)`` tensors. Saves the worker's copies and the
      per-batch shared-memory tensor that DataLoader would send. A batch
      holds its buffers until the main process takes it, so
      ``queue_depth`` must hold a whole batch (and ``prefetch_factor + 1``
      batches to keep a worker busy); batches the main process never
      receives (a DataLoader shut down mid-epoch without persistent
      workers) keep their buffers until the dataset closes.

    Call :meth:`close` (or use ``with``) to shut the loader down at once;
    otherwise it goes when the dataset is garbage-collected.
    """

    def __init__(
        self,
        paths: Sequence[Union[str, bytes, "os.PathLike"]],
        transform: Optional[Callable[[bytes], Any]] = None,
        *,
        max_file_size: Optional[int] = None,
        loader: Optional[_loader.Loader] = None,
        n_workers: Optional[int] = None,
        queue_depth: int = _DEFAULT_QUEUE_DEPTH,
        on_error: Union[str, Callable[[str, OSError], Any]] = "raise",
        loader_kwargs: Optional[Dict[str, Any]] = None,
        lookahead_bytes: int = 64 << 20,
        packed: bool = False,
    ):
        if packed and transform is not None:
            raise ValueError("packed=True hands raw bytes to collate_bytes: it takes no transform")
        self.packed = bool(packed)
        self.paths = list(paths)
        self.transform = transform
        self.on_error = _check_on_error(on_error)
        self.skipped = 0
        self.lookahead_bytes = int(lookahead_bytes)
        self._init_loader(self.paths, loader, max_file_size, n_workers, queue_depth,
                          loader_kwargs or {}, need_sizes=self.lookahead_bytes > 0)

    def batch_sampler(self, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                      drop_last: bool = False, num_replicas: Optional[int] = None,
                      rank: Optional[int] = None) -> EpochBatchSampler:
        """An :class:`EpochBatchSampler` over this dataset, for
        ``DataLoader(ds, batch_sampler=...)``: with it each worker requests
        its next batches ahead, within ``lookahead_bytes``. ``num_replicas``
        and ``rank`` default to ``torch.distributed`` when initialised (else
        1 and 0), as ``DistributedSampler``'s do."""
        if num_replicas is None or rank is None:
            r, w = _dist_rank_world()
            num_replicas = w if num_replicas is None else num_replicas
            rank = r if rank is None else rank
        return EpochBatchSampler(len(self.paths), batch_size, shuffle=shuffle, seed=seed,
                                 drop_last=drop_last, num_replicas=num_replicas, rank=rank)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitems__(self, indices: Sequence[int]) -> List[Any]:
        """The samples of ``indices``, in that order (one batched request).
        With batches from :meth:`batch_sampler`, the next batches of this
        worker are requested ahead, within ``lookahead_bytes``."""
        idx = [int(i) for i in indices]
        paths = self.paths
        if self.packed:
            return self._getitems_packed(idx)  # type: ignore[return-value]
        bs = [_util._fspath_bytes(paths[i]) for i in idx]  # IndexError before any request
        worker = self._worker()
        claim = self._claim
        la = claim.lookahead
        if la is None:
            la = claim.lookahead = _Lookahead()
        out: List[Any] = [SKIP] * len(idx)
        transform = self.transform
        on_error = self.on_error
        sizes = self._file_sizes
        qd = worker.loader.queue_depth
        done: List[Any] = []  # detached handles, released together
        got: List[_entry.Entry] = []  # received, not yet handed out

        def use(pos: int, e: _entry.Entry) -> None:
            try:
                err = e.error
                if err:
                    out[pos] = _failed(on_error, err, e.get_filepath(), idx[pos])
                else:
                    data = e.get_data()
                    out[pos] = transform(data) if transform is not None else data
            finally:
                h = e._detach()
                if h is not None:
                    done.append(h)

        try:
            # 1. What the lookahead already has or has in flight.
            todo: List[int] = []
            left = 0
            for pos, i in enumerate(idx):
                held = la.ready.get(i)
                if held:
                    e = held.pop()
                    if not held:
                        del la.ready[i]
                    la.bytes -= sizes[i] if sizes else 0
                    use(pos, e)
                elif la.flying.get(i):
                    q = la.owners[bs[pos]]
                    q[q.index(("l", i))] = ("c", pos)  # it is this batch's now
                    la.flying[i] -= 1
                    la.bytes -= sizes[i] if sizes else 0
                    left += 1
                else:
                    todo.append(pos)
            # 2. Request the rest, then the next batches' files, then wait.
            nxt = 0
            plan = self._plan(indices, la)
            while True:
                while nxt < len(todo) and la.outstanding < qd:
                    chunk = [bs[p] for p in todo[nxt : nxt + qd - la.outstanding]]
                    k = worker.request_many(chunk)
                    for p in todo[nxt : nxt + k]:
                        la.owners.setdefault(bs[p], deque()).append(("c", p))
                    nxt += k
                    left += k
                    la.outstanding += k
                    if k == 0:
                        break
                if nxt == len(todo) and plan:
                    self._ahead(worker, la, plan, qd)
                if left == 0:
                    break
                if la.outstanding == 0 and la.ready:
                    # Held lookahead entries fill the queue (a batch larger
                    # than predicted): give them back and go on.
                    for i, es in la.ready.items():
                        for e in es:
                            la.bytes -= sizes[i] if sizes else 0
                            e._release_deferred()
                    la.ready.clear()
                    la.wanted = set()
                    plan = []
                    continue
                if la.outstanding == 0:
                    raise RuntimeError(
                        f"asyncloader worker {worker.id}: queue full with nothing of this "
                        "batch in flight (entries held elsewhere in this process?)"
                    )
                got = worker.get_many(la.outstanding)
                la.outstanding -= len(got)
                got.reverse()
                while got:
                    e = got.pop()
                    kind, who = la.owners[e.path_bytes].popleft()
                    if kind == "c":
                        left -= 1
                        use(who, e)
                    else:
                        la.flying[who] -= 1
                        if who in la.wanted:
                            la.ready.setdefault(who, []).append(e)
                        else:  # no longer predicted
                            la.bytes -= sizes[who] if sizes else 0
                            e._release_deferred()
                if done:
                    worker._release_handles(done)
        except BaseException:
            if done:
                worker._release_handles(done)
            for e in got:
                e._release_deferred()
            # Waits for everything in flight (this batch's and the
            # lookahead's) and releases it: nothing stays claimed.
            la.drop(worker)
            raise
        if done:
            worker._release_handles(done)
        if any(s is SKIP for s in out):
            kept = [s for s in out if s is not SKIP]
            self.skipped += len(out) - len(kept)
            return kept
        return out

    def _getitems_packed(self, idx: List[int]) -> "PackedSamples":
        """``packed=True``: loads the batch and hands its entries over
        (tickets) instead of copying them; see :class:`PackedSamples`."""
        paths = [self.paths[i] for i in idx]  # IndexError before any request
        worker = self._worker()

        def request(nxt: int) -> int:
            return worker.request_many(paths[nxt:], first_tag=nxt)

        return _load_packed(self, worker, idx, request, lambda pos: os.fsdecode(paths[pos]))

    def _plan(self, batch: Any, la: _Lookahead) -> List[int]:
        """The indices of this worker's next batches, as far as the byte
        budget goes (empty without a predictable batch). Releases held
        lookahead entries that are no longer predicted."""
        spec = getattr(batch, "spec", None)
        if spec is None or self.lookahead_bytes <= 0 or not self._file_sizes or spec[0] != len(self.paths):
            la.wanted = set()
            plan: List[int] = []
        else:
            info = _worker_info()
            step = info.num_workers if info is not None else 1
            sizes = self._file_sizes
            budget = self.lookahead_bytes
            # No more than the queue can hold next to a batch like this one.
            cap = self._loader.queue_depth - len(batch)
            plan = []
            total = 0
            k = batch.number + step
            while total < budget and len(plan) < cap:
                nb = _batch_of(spec, batch.epoch, k)
                if nb is None:
                    break
                for i in nb:
                    total += sizes[i]
                    if total > budget or len(plan) >= cap:
                        total = budget
                        break
                    plan.append(i)
                k += step
            la.wanted = set(plan)
        for i in [i for i in la.ready if i not in la.wanted]:
            for e in la.ready.pop(i):
                la.bytes -= self._file_sizes[i] if self._file_sizes else 0
                e._release_deferred()
        return plan

    def _ahead(self, worker: _worker.Worker, la: _Lookahead, plan: List[int], qd: int) -> None:
        """Requests the planned indices not yet held or in flight, while the
        queue and the byte budget allow."""
        sizes = self._file_sizes or []
        have: Dict[int, int] = {}
        want: List[int] = []
        for i in plan:
            have[i] = have.get(i, 0) + 1
            if len(la.ready.get(i, ())) + la.flying.get(i, 0) < have[i]:
                want.append(i)
        # Keep room for a whole batch of the current kind to be requested.
        room = qd - la.outstanding - sum(len(v) for v in la.ready.values())
        picked = []
        for i in want:
            if room <= len(picked) or la.bytes + sizes[i] > self.lookahead_bytes:
                break
            picked.append(i)
            la.bytes += sizes[i]
        if not picked:
            return
        pb = [_util._fspath_bytes(self.paths[i]) for i in picked]
        k = worker.request_many(pb)
        for i, b in zip(picked[:k], pb[:k]):
            la.owners.setdefault(b, deque()).append(("l", i))
            la.flying[i] = la.flying.get(i, 0) + 1
        for i in picked[k:]:
            la.bytes -= sizes[i]
        la.outstanding += k


# ---------------------------------------------------------------------------
# RangeDataset
# ---------------------------------------------------------------------------

_MAX_OFF = (1 << 63) - 1  # the largest file offset: offset + length must not pass it


def _check_items(items: Sequence[Any]) -> List[Tuple[Any, int, int]]:
    out = []
    for i, item in enumerate(items):
        try:
            path, off, length = item
        except (TypeError, ValueError):
            raise ValueError(f"item {i} is not (path, offset, length): {item!r}") from None
        if isinstance(off, bool) or isinstance(length, bool):
            raise TypeError(f"item {i}: offset and length must be integers, not bool")
        off, length = operator.index(off), operator.index(length)
        if off < 0 or length < 0 or off + length > _MAX_OFF:
            raise ValueError(
                f"item {i}: offset {off} and length {length} must be >= 0 with offset + length "
                f"at most {_MAX_OFF}"
            )
        out.append((path, off, length))
    return out


def _range_requester(worker: _worker.Worker, items: Sequence[Tuple[Any, int, int]]) -> Callable[[int], int]:
    """``request(nxt)`` for a batch of ranges: queues items ``nxt, ...`` (the
    record of batch position ``p`` is tagged ``p``), a run of consecutive
    items of one path per ``request_ranges`` call, and returns how many it
    queued."""
    from ._ranges import _no_dest_table

    n = len(items)
    pbs = [_util._fspath_bytes(p) for p, _o, _n in items]
    table = _no_dest_table([o for _p, o, _n in items], [ln for _p, _o, ln in items])
    run_end = [n] * n  # where the run of one path holding position p ends
    for p in range(n - 2, -1, -1):
        run_end[p] = run_end[p + 1] if pbs[p] == pbs[p + 1] else p + 1

    def request(nxt: int) -> int:
        queued = 0
        while nxt < n:
            want = run_end[nxt] - nxt
            try:
                k = worker.request_ranges(pbs[nxt], table, start=nxt, count=want)
            except OSError:
                if queued:
                    return queued  # the next call raises it, with nothing lost
                raise
            queued += k
            nxt += k
            if k < want:
                break
        return queued

    return request


class RangeDataset(_MapStyle, _LoaderMixin, _Dataset):
    """A map-style dataset over byte ranges: sample ``i`` is
    ``transform(length bytes of path at offset)`` for ``items[i] = (path,
    offset, length)`` - samples stored inside larger files: tar shards
    (see :func:`tar_members`), record files, an index you wrote. Behaves
    like :class:`FileDataset` (a batch per :meth:`__getitems__`, the
    loader created once in the main process and a worker id claimed by
    each DataLoader worker, any sampler and start method,
    :func:`collate_bytes`, ``packed=True``) with these differences:

    * ``max_file_size``: ``None`` uses the largest ``length`` (nothing is
      stat'ed); a ``length`` over ``max_file_size`` (or over the
      ``loader``'s) is a ``ValueError`` here, not a failed load.
    * A range that ends past the end of its file reads fewer bytes: that
      sample fails with ``ENODATA`` (through ``on_error``, like a missing
      file), unless ``allow_short=True`` (then its bytes are what there
      is, possibly none).
    * ``on_error`` callables get the item's path; the error's ``index`` is
      the dataset index.
    * No ``lookahead_bytes`` (:meth:`FileDataset.batch_sampler`'s
      read-ahead): each batch is requested when it is asked for.

    Ranges of one file that are consecutive in a batch go to the loader
    in one call (``Worker.request_ranges``) and share its open.
    """

    def __init__(
        self,
        items: Sequence[Tuple[Union[str, bytes, "os.PathLike"], int, int]],
        transform: Optional[Callable[[bytes], Any]] = None,
        *,
        allow_short: bool = False,
        max_file_size: Optional[int] = None,
        loader: Optional[_loader.Loader] = None,
        n_workers: Optional[int] = None,
        queue_depth: int = _DEFAULT_QUEUE_DEPTH,
        on_error: Union[str, Callable[[str, OSError], Any]] = "raise",
        loader_kwargs: Optional[Dict[str, Any]] = None,
        packed: bool = False,
    ):
        if packed and transform is not None:
            raise ValueError("packed=True hands raw bytes to collate_bytes: it takes no transform")
        self.items = _check_items(items)
        self.packed = bool(packed)
        self.transform = transform
        self.allow_short = bool(allow_short)
        self.on_error = _check_on_error(on_error)
        self.skipped = 0
        lengths = [ln for _p, _o, ln in self.items]
        limit = loader.max_file_size if loader is not None else max_file_size
        if limit is not None:
            for i, ln in enumerate(lengths):
                if ln > limit:
                    raise ValueError(
                        f"item {i} ({os.fsdecode(self.items[i][0])!r} at {self.items[i][1]}) is "
                        f"{ln} bytes, more than max_file_size={limit}"
                    )
        self._init_loader([p for p, _o, _n in self.items], loader, max_file_size, n_workers,
                          queue_depth, loader_kwargs or {}, sizes=lengths)
        self._file_sizes = None  # the lengths are in the items (no lookahead to budget)

    def __len__(self) -> int:
        return len(self.items)

    def __getitems__(self, indices: Sequence[int]) -> List[Any]:
        """The samples of ``indices``, in that order: the batch's ranges
        are requested at once (a window of ``queue_depth``) and gathered
        as they complete."""
        idx = [int(i) for i in indices]
        items = [self.items[i] for i in idx]  # IndexError before any request
        worker = self._worker()
        request = _range_requester(worker, items)
        short = None if self.allow_short else [ln for _p, _o, ln in items]
        if self.packed:
            return _load_packed(self, worker, idx, request,  # type: ignore[return-value]
                                lambda pos: os.fsdecode(items[pos][0]), short)
        n = len(idx)
        out: List[Any] = [SKIP] * n
        transform = self.transform
        on_error = self.on_error
        qd = worker.loader.queue_depth
        nxt = inflight = 0
        try:
            while nxt < n or inflight:
                if nxt < n and inflight < qd:
                    k = request(nxt)
                    nxt += k
                    inflight += k
                if inflight == 0:
                    raise RuntimeError(
                        f"asyncloader worker {worker.id}: queue full with nothing of this batch "
                        "in flight (entries held elsewhere in this process?)"
                    )
                with worker.get_batch(inflight) as b:
                    inflight -= len(b)
                    for i, pos in enumerate(b.tags):
                        err = b.errors[i]
                        if not err and short is not None and b.sizes[i] < short[pos]:
                            err = _errno.ENODATA
                        if err:
                            out[pos] = _failed(on_error, err, os.fsdecode(items[pos][0]), idx[pos])
                        else:
                            data = b.data(i)
                            out[pos] = transform(data) if transform is not None else data
        finally:
            worker._drain_in_flight(inflight)
        if any(s is SKIP for s in out):
            kept = [s for s in out if s is not SKIP]
            self.skipped += n - len(kept)
            return kept
        return out


# ---------------------------------------------------------------------------
# ShardedFileIterable
# ---------------------------------------------------------------------------


class ShardedFileIterable(_LoaderMixin, _IterableDataset):
    """An iterable-style dataset for streaming: each (rank, DataLoader
    worker) iterates its own shard of ``paths``.

    * Order: ``shuffle=True`` permutes with ``random.Random(seed + epoch)``,
      the same permutation in every rank and worker; call
      :meth:`set_epoch` before each epoch (as with ``DistributedSampler``).
    * Sharding: the (permuted) list is split across ranks
      (``rank``/``world_size``; default: ``torch.distributed`` when it is
      initialised, else 0/1) with ``rank::world_size``, then across
      DataLoader workers with ``worker::num_workers``.
    * ``even``: ``"pad"`` (repeat samples from the start) or ``"drop"``
      (drop the tail) so every rank gets the same number of samples, like
      ``DistributedSampler(drop_last=False/True)``; ``None`` (default)
      leaves the last ranks one sample shorter when it does not divide.
    * ``ordered``: ``False`` yields samples in completion order (fastest);
      ``True`` in shard order (a reorder buffer of ``window`` entries).
    * ``transform``, ``max_file_size``, ``loader``, ``n_workers``,
      ``queue_depth``, ``on_error``, ``loader_kwargs``: as
      :class:`FileDataset` (``"skip"`` leaves a sample out of the stream).
    """

    def __init__(
        self,
        paths: Sequence[Union[str, bytes, "os.PathLike"]],
        transform: Optional[Callable[[bytes], Any]] = None,
        *,
        shuffle: bool = False,
        seed: int = 0,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        even: Optional[str] = None,
        ordered: bool = False,
        window: int = 64,
        max_file_size: Optional[int] = None,
        loader: Optional[_loader.Loader] = None,
        n_workers: Optional[int] = None,
        queue_depth: int = _DEFAULT_QUEUE_DEPTH,
        on_error: Union[str, Callable[[str, OSError], Any]] = "raise",
        loader_kwargs: Optional[Dict[str, Any]] = None,
    ):
        if even not in (None, "pad", "drop"):
            raise ValueError(f'even must be None, "pad" or "drop", not {even!r}')
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.paths = list(paths)
        self.transform = transform
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.rank = rank
        self.world_size = world_size
        self.even = even
        self.ordered = ordered
        self.window = max(1, window)
        self.on_error = _check_on_error(on_error)
        self.skipped = 0
        self._init_loader(self.paths, loader, max_file_size, n_workers, queue_depth, loader_kwargs or {})

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch that seeds the shuffle (call before each epoch)."""
        self.epoch = int(epoch)

    def _rank_world(self):
        if self.world_size is not None:
            return self.rank, self.world_size
        return _dist_rank_world()

    def rank_indices(self) -> List[int]:
        """The indices of this rank for the current epoch (all workers)."""
        n = len(self.paths)
        order = list(range(n))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        rank, world = self._rank_world()
        if self.even == "drop":
            order = order[: n - n % world]
        elif self.even == "pad" and n % world and n:
            need = world - n % world
            order += (order * (need // n + 1))[:need]
        return order[rank::world]

    def shard_indices(self) -> List[int]:
        """The indices this process (DataLoader worker) iterates."""
        idx = self.rank_indices()
        info = _worker_info()
        if info is not None:
            idx = idx[info.id :: info.num_workers]
        return idx

    def __len__(self) -> int:
        return len(self.rank_indices())

    def __iter__(self) -> Iterator[Any]:
        idx = self.shard_indices()
        worker = self._worker()
        transform = self.transform
        on_error = self.on_error

        def sample(e: _entry.Entry, index: int) -> Any:
            err = e.error
            if err:
                return _failed(on_error, err, e.get_filepath(), index)
            data = e.get_data()
            return transform(data) if transform is not None else data

        if not self.ordered:
            # Completion order: Worker.load keeps `window` in flight. Which
            # index an entry was is only needed for errors: map by path.
            pos: Dict[bytes, deque] = {}
            paths = []
            for i in idx:
                b = _util._fspath_bytes(self.paths[i])
                pos.setdefault(b, deque()).append(i)
                paths.append(b)
            for e in worker.load(paths, window=self.window):
                s = sample(e, pos[e.path_bytes].popleft())
                if s is SKIP:
                    self.skipped += 1
                    continue
                yield s
            return
        # Shard order: load windows of `window` and yield each in order.
        for start in range(0, len(idx), self.window):
            part = idx[start : start + self.window]
            out: List[Any] = [SKIP] * len(part)

            def done(p: int, e: _entry.Entry, part=part, out=out) -> None:
                out[p] = sample(e, part[p])

            _load_ordered(worker, [self.paths[i] for i in part], done)
            for s in out:
                if s is SKIP:
                    self.skipped += 1
                    continue
                yield s

