#!/usr/bin/env python3
"""DataLoader throughput: asyncloader.torch.FileDataset against a plain
Dataset doing ``open().read()``, same DataLoader settings (batch 64, 2
workers, shuffle, persistent workers), on

* raw bytes: the small set (20,000 files, ~10 KB; the one ``cargo run --
  bench`` generates under ~/.cache/asyncloader, made here if missing), each
  batch packed into one uint8 tensor + offsets (``collate_bytes``; with
  ``packed=True`` the workers hand the entries over and the main process
  copies them once into that tensor), and
* JPEG decoding: Pillow-generated 224x224 JPEGs decoded with Pillow into
  uint8 HWC tensors (stacked by the default collate).

Warm page cache: one untimed epoch per row first (it also starts the
workers), then ``--repeat`` timed epochs of every row, interleaved (each
row goes first in turn); the median is reported. ``--cold`` evicts
the set's files from the page cache (``posix_fadvise(DONTNEED)`` per file,
so only these files) before every epoch.

    ~/.cache/asyncloader-torch-venv/bin/python examples/python/torch_bench.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import time
from pathlib import Path

try:
    import asyncloader  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "python"))

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from asyncloader.torch import FileDataset, collate_bytes

CACHE = Path(os.environ.get("ASYNCLOADER_CACHE", Path.home() / ".cache" / "asyncloader"))

# packed=True: a worker holds its batches until the main process takes
# them; room for (prefetch_factor 2 + 1) batches of 64 and one more.
PACKED_QD = 256


class PlainDataset(Dataset):
    """The baseline: one open().read() per sample."""

    def __init__(self, paths, transform=None):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with open(self.paths[i], "rb") as f:
            data = f.read()
        return self.transform(data) if self.transform is not None else data


def decode_jpeg(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as im:
        return torch.from_numpy(np.array(im.convert("RGB")))


def small_set(n: int) -> list:
    root = CACHE / "small-20000-s1"
    paths = sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    if len(paths) < n:
        root = CACHE / f"torch-bench-small-{n}"
        if not root.is_dir():
            rng = random.Random(1)
            tmp = root.with_suffix(".tmp")
            tmp.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (tmp / f"f{i:06d}.bin").write_bytes(rng.randbytes(rng.randint(1024, 19 * 1024)))
            tmp.rename(root)
        paths = sorted(str(p) for p in root.iterdir())
    return paths[:n]


def jpeg_set(n: int) -> list:
    root = CACHE / f"torch-bench-jpeg-{n}"
    if not root.is_dir():
        rng = np.random.default_rng(1)
        tmp = root.with_suffix(".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            # smooth noise compresses like a photo more than white noise does
            base = rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((224, 224), Image.BILINEAR)
            img.save(tmp / f"img{i:06d}.jpg", quality=90)
        tmp.rename(root)
    return sorted(str(p) for p in root.iterdir())


def evict(paths) -> None:
    """Drops these files' pages from the page cache (cold reads)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class Row:
    """One dataset and its DataLoader (persistent workers), run an epoch at
    a time so that the rows' epochs interleave."""

    def __init__(self, ds, collate, args, lookahead=False):
        self.ds = ds
        self.args = args
        common = dict(num_workers=args.workers, persistent_workers=True, collate_fn=collate,
                      multiprocessing_context=args.start_method)
        if lookahead:  # batches the workers can predict: each requests its next ones ahead
            self.sampler = ds.batch_sampler(args.batch, shuffle=True)
            self.dl = DataLoader(ds, batch_sampler=self.sampler, **common)
        else:
            self.sampler = None
            self.dl = DataLoader(ds, batch_size=args.batch, shuffle=True, **common)
        self.epoch = 0
        self.times: list = []

    def epoch_time(self) -> float:
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        if self.args.cold:
            evict(self.ds.paths)
        t = time.perf_counter()
        n = 0
        for batch in self.dl:
            n += len(batch[1]) - 1 if isinstance(batch, tuple) else len(batch)
        dt = time.perf_counter() - t
        assert n == len(self.ds), (n, len(self.ds))
        return dt

    def close(self) -> None:
        del self.dl
        if hasattr(self.ds, "close"):
            self.ds.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20000, help="small files (raw bytes)")
    ap.add_argument("--jpegs", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cold", action="store_true", help="evict the files before each epoch")
    ap.add_argument("--start-method", default="fork", choices=["fork", "spawn", "forkserver"])
    args = ap.parse_args()

    print(f"torch {torch.__version__}, {os.cpu_count()} cpus; DataLoader(batch {args.batch}, "
          f"{args.workers} workers, shuffle, persistent, {args.start_method}); {'cold' if args.cold else 'warm'}, "
          f"median of {args.repeat} epochs")
    cases = [
        ("raw bytes", small_set(args.files), None, collate_bytes),
        ("JPEG decode", jpeg_set(args.jpegs), decode_jpeg, None),
    ]
    for name, paths, transform, collate in cases:
        size = sum(os.path.getsize(p) for p in paths)
        print(f"\n{name}: {len(paths)} files, {size / 1e6:.1f} MB")
        rows = {}
        variants = [
            ("plain open().read()", lambda: PlainDataset(paths, transform), False),
            ("asyncloader FileDataset", lambda: FileDataset(paths, transform), False),
            ("  + batch_sampler lookahead", lambda: FileDataset(paths, transform), True),
        ]
        if transform is None:  # raw bytes: the batch handed over, copied once in the main process
            variants.append(
                ("  packed=True", lambda: FileDataset(paths, packed=True, queue_depth=PACKED_QD), False)
            )
        runs = []
        try:
            for label, make, la in variants:
                runs.append((label, Row(make(), collate, args, la)))
                runs[-1][1].epoch_time()  # warms the cache and starts the workers
            # Epochs interleaved, each row first in turn (the machine drifts).
            for r in range(args.repeat):
                k = r % len(runs)
                for label, row in runs[k:] + runs[:k]:
                    row.times.append(row.epoch_time())
        finally:
            for _, row in runs:
                row.close()
        for label, row in runs:
            times = row.times
            med = statistics.median(times)
            rows[label] = med
            print(f"  {label:<28} {len(paths) / med:9.0f} files/s  {size / med / 1e6:8.1f} MB/s  "
                  f"(epochs: {', '.join(f'{t:.2f}s' for t in times)})")
        a = rows["plain open().read()"]
        line = (f"  ratio to plain: FileDataset {a / rows['asyncloader FileDataset']:.2f}x, "
                f"with lookahead {a / rows['  + batch_sampler lookahead']:.2f}x")
        if "  packed=True" in rows:
            line += f", packed {a / rows['  packed=True']:.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
