"""PyTorch datasets over asyncloader: ``FileDataset`` (map-style, batched)
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
import os
import random
import re
import socket
import stat as _stat
import threading
from collections import deque
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

from . import _core

__all__ = ["FileDataset", "ShardedFileIterable", "BatchLoadError", "SKIP", "collate_bytes"]

#: Returned by an ``on_error`` callable: leave the sample out.
SKIP: Any = object()

_DEFAULT_QUEUE_DEPTH = 128


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


def _size_limit(paths: Sequence[Any]) -> int:
    """The largest size among ``paths`` (stat), at least 1. Files that
    cannot be stat'ed are left out: their load fails later, with the path
    and errno, like any other failure."""
    biggest = 0
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        if _stat.S_ISREG(st.st_mode) and st.st_size > biggest:
            biggest = st.st_size
    return max(1, biggest)


def _make_loader(paths, max_file_size, n_workers, queue_depth, loader_kwargs) -> _core.Loader:
    sized = max_file_size is None
    if sized:
        max_file_size = _size_limit(paths)
    try:
        ld = _core.Loader(
            queue_depth=queue_depth, max_file_size=max_file_size, n_workers=n_workers, **loader_kwargs
        )
    except ValueError as e:
        if sized and "max_file_size" in str(e):
            biggest = [os.fspath(p) for p in paths if _safe_size(p) == max_file_size][:3]
            raise ValueError(
                f"the largest file is {max_file_size} bytes ({', '.join(map(str, biggest))}), "
                f"more than the library accepts: {e}"
            ) from None
        raise
    ld.start()
    return ld


def _safe_size(p) -> int:
    try:
        return os.stat(p).st_size
    except OSError:
        return -1


class _Claim:
    """A claimed worker id of a loader in this process (see the module doc)."""

    def __init__(self, loader: _core.Loader):
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

    def _init_loader(self, paths, loader, max_file_size, n_workers, queue_depth, loader_kwargs):
        if loader is not None:
            self._loader = loader
            self._owns = False
        else:
            if n_workers is None:
                n_workers = max(8, os.cpu_count() or 1) + 1
            self._loader = _make_loader(paths, max_file_size, n_workers, queue_depth, loader_kwargs)
            self._owns = True
        self._claim: Optional[_Claim] = None
        self._lock = threading.Lock()

    @property
    def loader(self) -> _core.Loader:
        """The asyncloader ``Loader`` this dataset loads through."""
        return self._loader

    def _worker(self) -> _core.Worker:
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


def _load_ordered(worker: _core.Worker, paths: Sequence[Any], on_done: Callable[[int, Any], None]) -> None:
    """Requests ``paths`` (a window of up to ``queue_depth``) and calls
    ``on_done(position, entry)`` as each completes; the entry is released
    after the call (released in groups, one library call per group). On any
    exception, what is in flight is waited for and released before it
    propagates (no buffer stays claimed)."""
    qd = worker.loader.queue_depth
    pos_of: Dict[bytes, Any] = {}
    bs = [_core._fspath_bytes(p) for p in paths]
    n = len(bs)
    nxt = 0
    outstanding = 0
    got: List[_core.Entry] = []
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
        while outstanding > 0:
            try:
                more = worker.get_many(outstanding, timeout=10.0)
            except OSError:
                break
            if not more:
                break
            outstanding -= len(more)
            for e in more:
                e._release_deferred()


# ---------------------------------------------------------------------------
# FileDataset
# ---------------------------------------------------------------------------


class FileDataset(_LoaderMixin, _Dataset):
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

    Call :meth:`close` (or use ``with``) to shut the loader down at once;
    otherwise it goes when the dataset is garbage-collected.
    """

    def __init__(
        self,
        paths: Sequence[Union[str, bytes, "os.PathLike"]],
        transform: Optional[Callable[[bytes], Any]] = None,
        *,
        max_file_size: Optional[int] = None,
        loader: Optional[_core.Loader] = None,
        n_workers: Optional[int] = None,
        queue_depth: int = _DEFAULT_QUEUE_DEPTH,
        on_error: Union[str, Callable[[str, OSError], Any]] = "raise",
        loader_kwargs: Optional[Dict[str, Any]] = None,
    ):
        self.paths = list(paths)
        self.transform = transform
        self.on_error = _check_on_error(on_error)
        self.skipped = 0
        self._init_loader(self.paths, loader, max_file_size, n_workers, queue_depth, loader_kwargs or {})

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        out = self.__getitems__([index])
        if not out:
            raise KeyError(f"sample {index} was skipped (on_error)")
        return out[0]

    def __getitems__(self, indices: Sequence[int]) -> List[Any]:
        """The samples of ``indices``, in that order (one batched request)."""
        idx = [int(i) for i in indices]
        paths = [self.paths[i] for i in idx]  # IndexError before any request
        worker = self._worker()
        out: List[Any] = [SKIP] * len(idx)
        transform = self.transform
        on_error = self.on_error

        def done(pos: int, e: _core.Entry) -> None:
            err = e.error
            if err:
                out[pos] = _failed(on_error, err, e.get_filepath(), idx[pos])
                return
            data = e.get_data()
            out[pos] = transform(data) if transform is not None else data

        _load_ordered(worker, paths, done)
        if any(s is SKIP for s in out):
            kept = [s for s in out if s is not SKIP]
            self.skipped += len(out) - len(kept)
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
        loader: Optional[_core.Loader] = None,
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
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                return dist.get_rank(), dist.get_world_size()
        except ImportError:  # pragma: no cover
            pass
        return 0, 1

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

        def sample(e: _core.Entry, index: int) -> Any:
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
                b = _core._fspath_bytes(self.paths[i])
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

            def done(p: int, e: _core.Entry, part=part, out=out) -> None:
                out[p] = sample(e, part[p])

            _load_ordered(worker, [self.paths[i] for i in part], done)
            for s in out:
                if s is SKIP:
                    self.skipped += 1
                    continue
                yield s

