#!/usr/bin/env python3
"""A torch-style iterable dataset whose worker processes get files through
asyncloader.

With PyTorch installed, ``AsyncLoaderDataset`` is a
``torch.utils.data.IterableDataset`` and plugs into ``DataLoader``::

    loader = asyncloader.Loader(queue_depth=64, max_file_size=8 << 20,
                                n_workers=4, dispatch_n=8, idle_iters=16)
    loader.start()                       # loader threads in this process
    ds = AsyncLoaderDataset(paths, loader, decode=my_decode)
    for batch in torch.utils.data.DataLoader(ds, batch_size=32, num_workers=4):
        ...

Each DataLoader worker process receives the dataset (pickled under
``spawn``/``forkserver``, inherited under ``fork``); the ``Loader`` inside it
reattaches by name, and the process uses worker context ``worker_id``. Files
are sharded across workers (``paths[worker_id::num_workers]``) and loaded
with ``Worker.load``, which keeps a window of requests in flight and yields
entries as they complete. ``decode(data: bytes, path: str)`` runs in the
worker process; it receives a copy (``get_data()``), so it may keep it.

Without PyTorch, ``SimpleDataLoader`` does the same with ``multiprocessing``:
N processes, each iterating its shard of the dataset, samples sent back
through a queue.

Run the demo (generates a few thousand files in a temporary directory unless
``--dir`` is given)::

    python3 examples/python/torch_dataset.py [--dir DIR] [--workers 2]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import queue as queue_mod
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

try:
    import asyncloader
except ImportError:  # source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "python"))
    import asyncloader

try:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info

    HAVE_TORCH = True
except ImportError:  # the example still runs, with SimpleDataLoader
    torch = None
    HAVE_TORCH = False

    class IterableDataset:  # type: ignore[no-redef]
        """Stand-in base class when torch is not installed."""

    def get_worker_info():  # type: ignore[no-redef]
        return None


def default_decode(data: bytes, path: str) -> Any:
    """Returns the raw bytes (as a uint8 tensor when torch is present)."""
    if HAVE_TORCH:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return data


class AsyncLoaderDataset(IterableDataset):
    """Iterates ``decode(data, path)`` over ``paths``, loaded by asyncloader.

    ``loader`` needs ``n_workers >= num_workers`` of the DataLoader (or 1
    when iterated in the main process) and must be running (``start()`` or
    ``spawn_loader()``) before iteration. Order is completion order.
    Failed loads raise (``FileNotFoundError``, ...) unless ``skip_errors``.
    """

    def __init__(
        self,
        paths: Sequence[str],
        loader: "asyncloader.Loader",
        decode: Callable[[bytes, str], Any] = default_decode,
        window: int = 64,
        skip_errors: bool = False,
        shard: Optional[tuple] = None,
    ):
        self.paths = list(paths)
        self.loader = loader
        self.decode = decode
        self.window = window
        self.skip_errors = skip_errors
        self.shard = shard  # (index, count) when not under a torch DataLoader

    def _my_shard(self) -> tuple:
        info = get_worker_info()
        if info is not None:
            return info.id, info.num_workers
        if self.shard is not None:
            return self.shard
        return 0, 1

    def __iter__(self) -> Iterator[Any]:
        wid, n = self._my_shard()
        if wid >= self.loader.n_workers:
            raise ValueError(
                f"worker {wid} but the loader has n_workers={self.loader.n_workers}"
            )
        worker = self.loader.get_worker_context(wid)
        for entry in worker.load(self.paths[wid::n], window=self.window):
            if entry.error:
                if self.skip_errors:
                    continue
                entry.raise_for_error()
            yield self.decode(entry.get_data(), entry.get_filepath())

    def __len__(self) -> int:
        return len(self.paths)


# ---------------------------------------------------------------------------
# Without torch: a tiny multiprocessing DataLoader.
# ---------------------------------------------------------------------------

_DONE = "__asyncloader_done__"


def _produce(ds: AsyncLoaderDataset, q) -> None:
    try:
        for sample in ds:
            q.put(sample)
        q.put((_DONE, None))
    except BaseException as e:  # hand the failure to the consumer
        q.put((_DONE, repr(e)))


class SimpleDataLoader:
    """Runs ``num_workers`` processes, each iterating its shard of an
    ``AsyncLoaderDataset``; yields samples as they arrive."""

    def __init__(self, dataset: AsyncLoaderDataset, num_workers: int = 2, start_method: str = "spawn"):
        self.dataset = dataset
        self.num_workers = num_workers
        self.ctx = mp.get_context(start_method)

    def __iter__(self) -> Iterator[Any]:
        q = self.ctx.Queue(maxsize=1024)
        procs = []
        for i in range(self.num_workers):
            shard = AsyncLoaderDataset(
                self.dataset.paths,
                self.dataset.loader,
                self.dataset.decode,
                self.dataset.window,
                self.dataset.skip_errors,
                shard=(i, self.num_workers),
            )
            p = self.ctx.Process(target=_produce, args=(shard, q), daemon=True)
            p.start()
            procs.append(p)
        running = len(procs)
        try:
            while running:
                try:
                    item = q.get(timeout=1.0)
                except queue_mod.Empty:
                    if not any(p.is_alive() for p in procs) and q.empty():
                        raise RuntimeError("worker processes died")
                    continue
                if isinstance(item, tuple) and len(item) == 2 and item[0] == _DONE:
                    running -= 1
                    if item[1] is not None:
                        raise RuntimeError(f"worker failed: {item[1]}")
                    continue
                yield item
        finally:
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.terminate()


# ---------------------------------------------------------------------------
# Demo
# ---------------------------------------------------------------------------


def checksum_decode(data: bytes, path: str) -> tuple:
    """Demo decode: what a real pipeline would turn into a tensor."""
    return path, len(data), hashlib.blake2b(data, digest_size=8).hexdigest()


def make_demo_files(root: Path, n: int) -> list:
    rng = random.Random(42)
    paths = []
    for i in range(n):
        p = root / f"c{i % 10}" / f"img{i:06d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(rng.randint(1000, 50000)))
        paths.append(str(p))
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description="asyncloader dataset demo")
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--start-method", default="spawn", choices=["fork", "spawn", "forkserver"])
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.dir:
            paths = sorted(str(p) for p in args.dir.rglob("*") if p.is_file())
        else:
            paths = make_demo_files(Path(tmp), args.files)
        expect = {}
        for p in paths:
            with open(p, "rb") as f:
                d = f.read()
            expect[p] = (len(d), hashlib.blake2b(d, digest_size=8).hexdigest())

        with asyncloader.Loader(
            queue_depth=64, max_file_size=16 << 20, n_workers=args.workers, dispatch_n=8, idle_iters=16
        ) as loader:
            loader.start()
            ds = AsyncLoaderDataset(paths, loader, decode=checksum_decode)
            t = time.perf_counter()
            got = {}
            if HAVE_TORCH:
                from torch.utils.data import DataLoader

                dl = DataLoader(
                    ds,
                    batch_size=None,  # samples one by one (tuples of str/int)
                    num_workers=args.workers,
                    multiprocessing_context=args.start_method,
                )
                how = f"torch DataLoader({args.workers} workers, {args.start_method})"
            else:
                dl = SimpleDataLoader(ds, num_workers=args.workers, start_method=args.start_method)
                how = f"SimpleDataLoader({args.workers} processes, {args.start_method}; torch not installed)"
            for path, size, digest in dl:
                got[path] = (size, digest)
            dt = time.perf_counter() - t
            st = loader.stats()
        ok = got == expect
        print(
            f"{how}: {len(got)} files in {dt:.2f}s ({len(got) / dt:.0f} files/s), "
            f"all bytes match: {ok}; loader: {st['completions']} completions via {st['backend']}"
        )
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
