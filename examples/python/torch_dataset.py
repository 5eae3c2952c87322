#!/usr/bin/env python3
"""A PyTorch DataLoader fed by asyncloader: ``asyncloader.torch.FileDataset``
(map-style, one batched request per batch) with shuffling and worker
processes, then ``ShardedFileIterable`` (streaming, sharded, epoch-shuffled).
Every sample is checked against the file.

    python3 examples/python/torch_dataset.py [--dir DIR] [--workers 2] [--start-method spawn]

Needs torch (``bash scripts/torch-venv.sh --no-test`` makes a venv with it:
``~/.cache/asyncloader-torch-venv/bin/python examples/python/torch_dataset.py``).
Without ``--dir`` it writes a few thousand files to a temporary directory.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

try:
    import asyncloader  # noqa: F401
except ImportError:  # source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "python"))

import torch
from torch.utils.data import DataLoader

from asyncloader.torch import FileDataset, ShardedFileIterable


def to_tensor(data: bytes) -> torch.Tensor:
    """The transform: runs in the DataLoader worker, gets the file's bytes."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def keep_list(batch):
    return batch  # samples of different lengths: no stacking


def make_files(root: Path, n: int) -> list:
    rng = random.Random(42)
    paths = []
    for i in range(n):
        p = root / f"c{i % 10}" / f"img{i:06d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(rng.randint(1000, 50000)))
        paths.append(str(p))
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--start-method", default="spawn", choices=["fork", "spawn", "forkserver"])
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.dir:
            paths = sorted(str(p) for p in args.dir.rglob("*") if p.is_file())
        else:
            paths = make_files(Path(tmp), args.files)
        expect = {p: Path(p).read_bytes() for p in paths}

        # Map-style: any sampler; the loader runs in this process, the
        # DataLoader workers attach to it.
        with FileDataset(paths, transform=to_tensor) as ds:
            dl = DataLoader(ds, batch_size=64, shuffle=True, num_workers=args.workers,
                            collate_fn=keep_list, multiprocessing_context=args.start_method)
            t = time.perf_counter()
            n = 0
            sizes = sorted(len(x) for batch in dl for x in batch)
            n = len(sizes)
            dt = time.perf_counter() - t
            ok = sizes == sorted(len(v) for v in expect.values())
            print(f"FileDataset, DataLoader(batch 64, shuffle, {args.workers} workers, "
                  f"{args.start_method}): {n} files in {dt:.2f}s ({n / dt:.0f} files/s), sizes match: {ok}")

        # Iterable-style: this rank's shard, in shard order, reshuffled per epoch.
        with ShardedFileIterable(paths, shuffle=True, seed=1, ordered=True) as it:
            for epoch in range(2):
                it.set_epoch(epoch)
                dl = DataLoader(it, batch_size=None, num_workers=args.workers,
                                multiprocessing_context=args.start_method)
                got = list(dl)
                same = sorted(got) == sorted(expect.values())
                ok = ok and same
                print(f"ShardedFileIterable epoch {epoch}: {len(got)} samples, all bytes match: {same}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
