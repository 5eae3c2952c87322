#!/usr/bin/env python3
"""Benchmark: Python worker processes loading files through asyncloader vs a
``multiprocessing.Pool`` doing ``open(p, 'rb').read()`` - in the same run.

Warm (default): 20,000 files of 4-16 KiB (generated once, deterministically,
into a cache directory unless ``--dir`` is given), read once to warm the page
cache; 2 worker processes vs ``Pool(2)``::

    python3 examples/python/bench_python.py

Cold, direct: an ImageNet-like set (log-normal sizes, median ~110 KiB),
``O_DIRECT`` loader, caches dropped before every run, vs ``Pool(4)``::

    python3 examples/python/bench_python.py --imagenet --direct --cold --pool 4

``--cold`` drops the page cache with ``sync; echo 3 > /proc/sys/vm/drop_caches``
(root, and a writable /proc/sys); where that is refused (containers) it evicts
each file of the set with ``posix_fadvise(POSIX_FADV_DONTNEED)`` instead and
says so.

Both sides produce a ``bytes`` object per file in a worker process (the
asyncloader side through ``Entry.get_data()``; ``--zero-copy`` measures
``Entry.memoryview()`` too). Reported: files/s, MB/s, CPU seconds per 1,000
files (user+sys of all processes, loader threads included), and the ratio.
Medians of ``--repeat`` runs, the two loaders alternating.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import asyncloader
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(HERE.parent.parent / "python"))
    import asyncloader


# ---------------------------------------------------------------------------
# Data sets
# ---------------------------------------------------------------------------


def _sizes(kind: str, n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    if kind == "small":
        return [rng.randint(4096, 16384) for _ in range(n)]
    # ImageNet-like: log-normal, median 110 KiB, sigma 0.5, 4 KiB .. 2 MiB.
    return [
        int(min(2 << 20, max(4096, round(110 * 1024 * math.exp(0.5 * rng.gauss(0, 1))))))
        for _ in range(n)
    ]


def dataset(kind: str, n: int, seed: int, root: Path | None) -> list[str]:
    """Creates (once) a deterministic data set; returns its paths."""
    if root is None:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        root = base / "asyncloader-bench" / f"py-{kind}-{n}-s{seed}"
    marker = root / ".complete"
    sizes = _sizes(kind, n, seed)
    paths = []
    for i in range(n):
        d = root / (f"n{i % 100:08d}" if kind == "imagenet" else f"d{i % 20:03d}")
        ext = "JPEG" if kind == "imagenet" else "bin"
        paths.append(str(d / f"f{i:08d}.{ext}"))
    if marker.exists():
        return paths
    print(f"generating {n} {kind} files in {root} ...", file=sys.stderr, flush=True)
    rng = random.Random(seed ^ 0x5EED)
    block = rng.randbytes(4 << 20)
    for i, (p, size) in enumerate(zip(paths, sizes)):
        os.makedirs(os.path.dirname(p), exist_ok=True)
        off = (i * 7919) % (len(block) - size)
        with open(p, "wb") as f:
            # Unique head per file, deterministic body.
            f.write(i.to_bytes(8, "little") + block[off + 8 : off + size])
    marker.write_text(f"{kind} {n} {seed}\n")
    return paths


def warm(paths: list[str]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            f.read()


def make_cold(paths: list[str]) -> str:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "drop_caches"
    except OSError:
        pass
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "fadvise(DONTNEED)"


# ---------------------------------------------------------------------------
# The two loaders
# ---------------------------------------------------------------------------


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def read_len(p: str) -> int:
    with open(p, "rb") as f:
        return len(f.read())


def pool_run(paths: list[str], procs: int, chunksize: int) -> tuple[float, int, float]:
    ctx = mp.get_context("fork")
    with ctx.Pool(procs) as pool:
        pool.map(abs, range(procs * 4))  # start the processes first
        c0 = _cpu_children() + _cpu_self()
        t0 = time.perf_counter()
        total = sum(pool.imap_unordered(read_len, paths, chunksize=chunksize))
        dt = time.perf_counter() - t0
        pool.close()
        pool.join()
        cpu = _cpu_children() + _cpu_self() - c0
    return dt, total, cpu


def _al_worker(worker, paths, window, zero_copy, start, q):
    start.wait()
    total = 0
    errors = 0
    if zero_copy:
        for e in worker.load(paths, window=window):
            if e.error:
                errors += 1
                continue
            mv = e.memoryview()
            total += len(mv)
            mv.release()
    else:
        for e in worker.load(paths, window=window):
            try:
                total += len(e.get_data())
            except OSError:
                errors += 1
    q.put((total, errors))


def asyncloader_run(paths, workers, args, zero_copy=False) -> tuple[float, int, float]:
    max_size = (2 << 20) if args.imagenet else (64 << 10)
    ctx = mp.get_context("fork")
    with asyncloader.Loader(
        queue_depth=args.queue_depth,
        max_file_size=max_size,
        n_workers=workers,
        dispatch_n=args.dispatch_n,
        idle_iters=args.idle_iters,
        direct=args.direct,
        loader_threads=args.loader_threads,
        ring_window=args.ring_window,
    ) as ld:
        start = ctx.Event()
        q = ctx.Queue()
        procs = [
            ctx.Process(
                target=_al_worker,
                args=(ld.get_worker_context(i), paths[i::workers], args.window, zero_copy, start, q),
            )
            for i in range(workers)
        ]
        for p in procs:
            p.start()
        ld.start()
        time.sleep(0.2)  # processes up, loader threads parked
        c0 = _cpu_children() + _cpu_self()
        t0 = time.perf_counter()
        start.set()
        res = [q.get(timeout=600) for _ in procs]
        dt = time.perf_counter() - t0
        for p in procs:
            p.join()
        ld.shutdown()
        cpu = _cpu_children() + _cpu_self() - c0
        stats = ld.stats()
    errors = sum(r[1] for r in res)
    if errors:
        print(f"  ({errors} files failed to load)", file=sys.stderr)
    if args.verbose:
        print(f"  stats: {stats}", file=sys.stderr)
    return dt, sum(r[0] for r in res), cpu


# ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, help="directory of files to load (default: generated set)")
    ap.add_argument("--files", type=int, default=20000, help="files in the generated set")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--imagenet", action="store_true", help="ImageNet-like sizes (~110 KiB)")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each run")
    ap.add_argument("--direct", action="store_true", help="asyncloader reads with O_DIRECT")
    ap.add_argument("--workers", type=int, default=2, help="asyncloader worker processes")
    ap.add_argument("--pool", type=int, default=2, help="multiprocessing.Pool size")
    ap.add_argument("--chunksize", type=int, default=64, help="Pool imap chunksize")
    ap.add_argument("--window", type=int, default=64, help="requests in flight per worker")
    ap.add_argument("--queue-depth", type=int, default=64)
    ap.add_argument("--dispatch-n", type=int, default=8)
    ap.add_argument("--idle-iters", type=int, default=16)
    ap.add_argument("--loader-threads", type=int, default=0, help="0 = one per core")
    ap.add_argument("--ring-window", type=int, default=0, help="0 = engine default")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--zero-copy", action="store_true", help="also measure Entry.memoryview()")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    if args.dir:
        paths = sorted(str(p) for p in args.dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    else:
        paths = dataset("imagenet" if args.imagenet else "small", args.files, args.seed, None)
    nbytes = sum(os.path.getsize(p) for p in paths)
    print(
        f"{len(paths)} files, {nbytes / len(paths) / 1024:.1f} KiB mean, "
        f"{'cold' if args.cold else 'warm'}, asyncloader {args.workers} workers"
        f"{' O_DIRECT' if args.direct else ''} vs Pool({args.pool}); "
        f"{os.cpu_count()} CPUs; library {asyncloader.find_library()}"
    )

    runs = {"pool": [], "asyncloader": [], "asyncloader-mv": []}
    method = None
    for r in range(args.repeat):
        order = ["pool", "asyncloader"] + (["asyncloader-mv"] if args.zero_copy else [])
        if r % 2:
            order.reverse()
        for name in order:
            if args.cold:
                method = make_cold(paths)
            else:
                warm(paths)
            if name == "pool":
                dt, total, cpu = pool_run(paths, args.pool, args.chunksize)
            else:
                dt, total, cpu = asyncloader_run(paths, args.workers, args, zero_copy=name.endswith("mv"))
            if total != nbytes:
                print(f"  {name}: read {total} bytes, expected {nbytes}", file=sys.stderr)
            runs[name].append((dt, cpu))
            print(
                f"  run {r + 1} {name:15s} {len(paths) / dt:10.0f} files/s "
                f"{nbytes / dt / 1e6:8.1f} MB/s  {cpu / len(paths) * 1000:6.3f} CPU-s/1k files",
                flush=True,
            )
    if method:
        print(f"cold via {method}")

    def med(name):
        return statistics.median(len(paths) / dt for dt, _ in runs[name])

    base = med("pool")
    print(f"median Pool({args.pool}) open().read():     {base:10.0f} files/s")
    for name in ("asyncloader", "asyncloader-mv"):
        if runs[name]:
            v = med(name)
            label = f"asyncloader {args.workers} workers" + (" (memoryview)" if name.endswith("mv") else "")
            print(f"median {label + ':':33s} {v:10.0f} files/s  ratio {v / base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
