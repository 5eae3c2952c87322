#!/usr/bin/env python3
"""Benchmark: Python worker processes loading files through asyncloader vs a
``multiprocessing.Pool`` doing ``open(p, 'rb').read()`` - in the same run.

Warm (default): 20,000 files of 4-16 KiB (generated once, deterministically,
into a cache directory unless ``--dir`` is given), read once before every run
to warm the page cache; 2 worker processes vs ``Pool(2)``::

    python3 examples/python/bench_python.py --dir ~/.cache/asyncloader/small-20000-s1

Cold, direct: an ImageNet-like set (log-normal sizes, median ~110 KiB),
``O_DIRECT`` loader, caches dropped before every run, vs ``Pool(4)``::

    python3 examples/python/bench_python.py --imagenet --direct --cold --pool 4

``--cold`` drops the page cache with ``sync; echo 3 > /proc/sys/vm/drop_caches``
(root, and a writable /proc/sys); where that is refused (containers) it evicts
each file of the set with ``posix_fadvise(POSIX_FADV_DONTNEED)`` instead and
says so.

Rows (each run ``--repeat`` times, the rows interleaved; medians reported):

* ``pool``: ``multiprocessing.Pool(--pool)`` (fork), its processes started
  and warmed by a trivial ``map`` before the clock starts; one task per chunk
  of ``--chunksize`` paths (default 256; fewer when the set has fewer than
  256 per process, so that no process idles), each task doing
  ``open(p, 'rb').read()`` per path and returning ONE integer per chunk (its
  total bytes). The strongest plain-Python baseline: per-path results would
  cost a pickle and a pipe write each. ``--pool-per-file`` adds the old
  per-file ``imap_unordered(..., chunksize=--chunksize)`` as an extra row.
* ``asyncloader get_data()``: ``--workers`` processes, each
  ``Worker.load(paths[i::workers])`` copying every file into ``bytes``.
* ``asyncloader memoryview()``: the same with ``Entry.memoryview()``
  (zero-copy).

Every row does the same per file: take its length and read its first byte,
and every process returns its total bytes. Each run is verified: the count of
files loaded and the total bytes must equal what ``os.stat`` says. A run that
lost a file makes the whole benchmark fail (exit status 1) without a
comparison: the failing rows and what they lost are printed instead.

Reported per row: files/s, MB/s, the Python worker processes' CPU time per
file (process CPU clock of each pool process / ``time.process_time()`` in each
asyncloader worker, over the timed part) and the CPU per file of all
processes (the workers plus the main process: the pool's feeder/result
threads, or the loader threads), then the median files/s ratio of each
asyncloader row to the pool row.

``max_file_size`` is the largest file's size (rounded up to 4 KiB); a file
over the library's limit (1 GiB) is an error.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import random
import resource
import stat
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

# The library's largest max_file_size (src/config.rs, limits::MAX_FILE_SIZE).
MAX_FILE_SIZE = 1 << 30

# Files per load_into() call in the load_into row: a training batch, copied
# into one destination reused from batch to batch (as a pinned staging
# buffer would be).
INTO_BATCH = 256


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


def list_files(root: Path) -> list[str]:
    """The regular files under root (following symlinks), dot files left out."""
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def stat_sizes(paths: list[str]) -> list[int]:
    """os.stat size of every path; raises for a path that is not a regular file."""
    sizes = []
    for p in paths:
        st = os.stat(p)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{p}: not a regular file")
        sizes.append(st.st_size)
    return sizes


def warm(paths: list[str]) -> None:
    for p in paths:
        try:
            with open(p, "rb") as f:
                f.read()
        except OSError:
            pass  # verified (and reported) by the runs


def make_cold(paths: list[str]) -> str:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "drop_caches"
    except OSError:
        pass
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "fadvise(DONTNEED)"


# ---------------------------------------------------------------------------
# CPU clocks
# ---------------------------------------------------------------------------


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


_TICK = os.sysconf("SC_CLK_TCK")


def _pid_cpu(pid: int) -> float:
    """CPU seconds (user+sys, all threads) of another live process: Linux's
    process CPU clock for a pid (CPUCLOCK_SCHED, ns resolution), else the
    clock ticks of /proc/PID/stat."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)
    except (OSError, OverflowError, ValueError):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK


# ---------------------------------------------------------------------------
# The loaders. Every one returns (seconds, files loaded, bytes, files failed,
# worker CPU seconds, CPU seconds of all processes).
# ---------------------------------------------------------------------------


def _read_chunk(chunk: list[str]) -> int:
    """Pool task: reads every path of the chunk; returns ONE integer, the
    chunk's total bytes, or minus the number of paths that failed."""
    total = 0
    failed = 0
    touch = 0
    for p in chunk:
        try:
            with open(p, "rb") as f:
                d = f.read()
        except OSError:
            failed += 1
            continue
        n = len(d)
        total += n
        if n:
            touch ^= d[0]  # one byte read, as the memoryview row does
    return -failed if failed else total


def _read_one(p: str) -> int:
    """Per-file pool task (--pool-per-file): the file's length, or -1."""
    try:
        with open(p, "rb") as f:
            d = f.read()
    except OSError:
        return -1
    if d:
        d[0]
    return len(d)


def pool_run(paths: list[str], procs: int, chunksize: int, per_file: bool = False):
    ctx = mp.get_context("fork")
    chunks = [paths[i : i + chunksize] for i in range(0, len(paths), chunksize)]
    with ctx.Pool(procs) as pool:
        # The processes start with the pool; a trivial map makes sure every
        # one runs and has served a task before the clock starts.
        pool.map(abs, range(procs * 4), chunksize=1)
        pids = [p.pid for p in pool._pool]
        w0 = sum(_pid_cpu(p) for p in pids)
        s0 = _cpu_self()
        t0 = time.perf_counter()
        if per_file:
            res = list(pool.imap_unordered(_read_one, paths, chunksize=chunksize))
        else:
            res = list(pool.imap_unordered(_read_chunk, chunks))
        dt = time.perf_counter() - t0
        wcpu = sum(_pid_cpu(p) for p in pids) - w0
        scpu = _cpu_self() - s0
        pool.close()
        pool.join()
    failed = -sum(r for r in res if r < 0)
    total = sum(r for r in res if r >= 0)
    return dt, len(paths) - failed, total, failed, wcpu, wcpu + scpu


def into_setup(paths, sizes):
    """For the ``into`` mode: the paths in batches of ``INTO_BATCH`` and one
    destination for the largest batch, allocated and written (the caller's
    preallocated batch array, reused), before anything is timed."""
    chunks = [paths[k : k + INTO_BATCH] for k in range(0, len(paths), INTO_BATCH)]
    most = max((sum(sizes[k : k + INTO_BATCH]) for k in range(0, len(paths), INTO_BATCH)), default=0)
    return chunks, bytearray(b"\1") * most


def consume(worker, paths, window, mode, into=None):
    """Loads ``paths`` through ``worker`` the way row ``mode`` does, taking
    each file's length and first byte; returns (bytes, files, failures).
    ``into``: ``into_setup``'s result, for the ``into`` mode."""
    total = files = failed = touch = 0
    if mode == "mv":
        for e in worker.load(paths, window=window):
            try:
                mv = e.memoryview()  # released by load() with the entry
            except OSError:
                failed += 1
                continue
            n = len(mv)
            total += n
            files += 1
            if n:
                touch ^= mv[0]
    elif mode == "bytes":
        for e in worker.load(paths, window=window):
            try:
                d = e.get_data()
            except OSError:
                failed += 1
                continue
            n = len(d)
            total += n
            files += 1
            if n:
                touch ^= d[0]
    elif mode in ("batch", "bview"):
        zero_copy = mode == "bview"
        for b in worker.load_batches(paths, window=window):
            get = b.view if zero_copy else b.data
            for i, err in enumerate(b.errors):
                if err:
                    failed += 1
                    continue
                d = get(i)
                n = len(d)
                total += n
                files += 1
                if n:
                    touch ^= d[0]
            if zero_copy:
                del d  # views must be gone when the batch is released
    else:  # "into": each batch of files copied once into one reused buffer
        chunks, out = into
        for chunk in chunks:
            try:
                spans = worker.load_into(chunk, out, window=window)
            except OSError:
                failed += 1  # load_into raises the first failure (after loading all)
                continue
            for off, n in spans:
                total += n
                files += 1
                if n:
                    touch ^= out[off]
    return total, files, failed


def _al_worker(worker, paths, sizes, window, mode, ready, start, q):
    try:
        into = into_setup(paths, sizes) if mode == "into" else None
        ready.release()
        start.wait()
        c0 = time.process_time()
        total, files, failed = consume(worker, paths, window, mode, into)
        q.put(("ok", total, files, failed, time.process_time() - c0))
    except BaseException as exc:  # report it: the parent must not wait forever
        q.put(("error", repr(exc)))


def _collect(q, procs, timeout=600.0):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < len(procs):
        try:
            out.append(q.get(timeout=0.2))
            continue
        except Exception:  # queue.Empty
            pass
        dead = [p for p in procs if p.exitcode not in (None, 0)]
        if dead or time.monotonic() > deadline:
            for p in procs:
                if p.exitcode is None:
                    p.kill()
            raise RuntimeError(
                f"asyncloader worker process failed (exit codes {[p.exitcode for p in procs]})"
            )
    bad = [r[1] for r in out if r[0] != "ok"]
    if bad:
        raise RuntimeError(f"asyncloader worker failed: {bad[0]}")
    return out


def loader_kwargs(args, max_file_size: int) -> dict:
    kw = dict(
        queue_depth=args.queue_depth,
        max_file_size=max_file_size,
        n_workers=args.workers,
        dispatch_n=args.dispatch_n,
        idle_iters=args.idle_iters,
        direct=args.direct,
        loader_threads=args.loader_threads,
        ring_window=args.ring_window,
    )
    if args.drive is not None:
        kw["drive"] = args.drive
    return kw


def asyncloader_run(paths, sizes, args, max_file_size, mode, info):
    workers = args.workers
    ctx = mp.get_context("fork")
    with asyncloader.Loader(**loader_kwargs(args, max_file_size)) as ld:
        start = ctx.Event()
        ready = ctx.Semaphore(0)
        q = ctx.Queue()
        procs = [
            ctx.Process(
                target=_al_worker,
                args=(
                    ld.get_worker_context(i),
                    paths[i::workers],
                    sizes[i::workers],
                    args.window or None,
                    mode,
                    ready,
                    start,
                    q,
                ),
            )
            for i in range(workers)
        ]
        for p in procs:
            p.start()
        ld.start()
        for _ in procs:  # every process set up (a load_into destination allocated)
            if not ready.acquire(timeout=600):
                raise RuntimeError("an asyncloader worker process did not start")
        time.sleep(0.1)  # processes waiting, loader threads parked
        s0 = _cpu_self()
        t0 = time.perf_counter()
        start.set()
        try:
            res = _collect(q, procs)
        finally:
            dt = time.perf_counter() - t0
            scpu = _cpu_self() - s0
            for p in procs:
                p.join()
            ld.shutdown()
        stats = ld.stats()
    info["drive"] = stats.get("drive")
    if args.verbose:
        print(f"  stats: {stats}", file=sys.stderr)
    total = sum(r[1] for r in res)
    files = sum(r[2] for r in res)
    failed = sum(r[3] for r in res)
    wcpu = sum(r[4] for r in res)
    return dt, files, total, failed, wcpu, wcpu + scpu


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
    ap.add_argument(
        "--chunksize", type=int, default=256, help="paths per Pool task, at most len/pool (per-file row: imap chunksize)"
    )
    ap.add_argument(
        "--pool-per-file",
        action="store_true",
        help="add a row with the old per-file Pool.imap_unordered (one result per file)",
    )
    ap.add_argument(
        "--window", type=int, default=0, help="requests in flight per worker (0 = the package default: sized from the files)"
    )
    ap.add_argument("--queue-depth", type=int, default=64)
    ap.add_argument("--dispatch-n", type=int, default=0, help="0 = the library's auto")
    ap.add_argument("--idle-iters", type=int, default=16)
    ap.add_argument("--loader-threads", type=int, default=0, help="0 = one per core")
    ap.add_argument("--ring-window", type=int, default=0, help="0 = engine default")
    ap.add_argument(
        "--drive",
        choices=("auto", "loader", "worker"),
        default=None,
        help="asyncloader.Loader(drive=...): who loads a worker's requests (default: the library's, auto)",
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--zero-copy", action="store_true", help="(kept for compatibility: memoryview() is always a row now)")
    # Test hook: appends a path that does not exist, to check that a run that
    # loses a file prints no comparison and fails.
    ap.add_argument("--inject-missing", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if args.repeat < 1 or args.workers < 1 or args.pool < 1 or args.chunksize < 1:
        ap.error("--repeat, --workers, --pool and --chunksize must be at least 1")

    if args.dir:
        if not args.dir.is_dir():
            ap.error(f"--dir {args.dir}: not a directory")
        paths = list_files(args.dir)
    else:
        paths = dataset("imagenet" if args.imagenet else "small", args.files, args.seed, None)
    if not paths:
        print("no files to load", file=sys.stderr)
        return 2
    sizes = stat_sizes(paths)
    largest = max(sizes)
    if largest > MAX_FILE_SIZE:
        big = paths[sizes.index(largest)]
        print(
            f"error: {big} is {largest} bytes, more than asyncloader's largest "
            f"max_file_size ({MAX_FILE_SIZE} bytes, 1 GiB); leave such files out",
            file=sys.stderr,
        )
        return 2
    # Entry buffers are whole pages anyway: round up to 4 KiB.
    max_file_size = max(4096, (largest + 4095) // 4096 * 4096)
    n_expected = len(paths)
    nbytes = sum(sizes)
    if args.inject_missing:
        paths.append(os.path.join(os.path.dirname(paths[0]), ".bench-python-missing-file"))
        sizes.append(0)
        n_expected += 1
    # Never fewer tasks than pool processes (a small set would leave some idle).
    chunk = max(1, min(args.chunksize, -(-len(paths) // args.pool)))
    print(
        f"{n_expected} files, {nbytes / 1e6:.1f} MB, {nbytes / len(sizes) / 1024:.1f} KiB mean, "
        f"largest {largest} B (max_file_size {max_file_size}); "
        f"{'cold' if args.cold else 'warm'}; asyncloader {args.workers} workers"
        f"{' O_DIRECT' if args.direct else ''}"
        f"{f' drive={args.drive}' if args.drive else ''} vs Pool({args.pool}) "
        f"{chunk}-path tasks; {os.cpu_count()} CPUs; "
        f"library {asyncloader.find_library()}",
        flush=True,
    )

    rows = {
        "pool": f"Pool({args.pool}) open().read()",
        "al-bytes": "asyncloader get_data()",
        "al-mv": "asyncloader memoryview()",
        "al-batch": "asyncloader Batch.data()",
        "al-bview": "asyncloader Batch.view()",
        "al-into": "asyncloader load_into()",
    }
    if args.pool_per_file:
        rows["pool-file"] = f"Pool({args.pool}) per-file imap"
    runs: dict[str, list] = {name: [] for name in rows}
    lost: list[str] = []
    info: dict = {}
    method = None
    width = max(len(v) for v in rows.values())
    names = list(rows)
    try:
        for r in range(args.repeat):
            k = r % len(names)
            for name in names[k:] + names[:k]:  # rotate: every row goes first in turn
                if args.cold:
                    method = make_cold(paths)
                else:
                    warm(paths)
                if name == "pool":
                    res = pool_run(paths, args.pool, chunk)
                elif name == "pool-file":
                    res = pool_run(paths, args.pool, args.chunksize, per_file=True)
                else:
                    res = asyncloader_run(paths, sizes, args, max_file_size, name[3:], info)
                dt, files, total, failed, wcpu, acpu = res
                runs[name].append(res)
                note = ""
                if files != n_expected or total != nbytes:
                    what = (
                        f"lost {n_expected - files} of {n_expected} files, "
                        f"read {total} of {nbytes} bytes"
                    )
                    if name.startswith("pool") and failed:
                        what += " (a pool task with a failed path returns only its failure count)"
                    note = f"  FAILED: {what}"
                    lost.append(f"{rows[name]}, run {r + 1}: {what}")
                print(
                    f"  run {r + 1} {rows[name]:{width}s} {len(paths) / dt:9.0f} files/s "
                    f"{nbytes / dt / 1e6:8.1f} MB/s  worker CPU {wcpu / len(paths) * 1e6:6.1f} us/file"
                    f"  all CPU {acpu / len(paths) * 1e6:6.1f} us/file{note}",
                    flush=True,
                )
    except ValueError as e:  # the library refused the configuration
        print(f"error: asyncloader.Loader: {e}", file=sys.stderr)
        return 2
    if method:
        print(f"cold via {method}")
    if info.get("drive"):
        print(f"asyncloader drive: {info['drive']}")

    if lost:
        print(
            f"NOT COMPARABLE: every method must load all {n_expected} files "
            f"({nbytes} bytes); these did not:",
            file=sys.stderr,
        )
        for line in lost:
            print(f"  {line}", file=sys.stderr)
        return 1

    def med(name, i):
        return statistics.median(x[i] for x in runs[name])

    def fps(name):
        return statistics.median(len(paths) / x[0] for x in runs[name])

    base = fps("pool")
    print(
        f"median of {args.repeat} (files/s, MB/s, worker-process CPU per file, "
        f"CPU per file of all processes):"
    )
    for name, label in rows.items():
        v = fps(name)
        line = (
            f"median {label + ':':{width + 1}s} {v:9.0f} files/s {v * nbytes / len(paths) / 1e6:8.1f} MB/s"
            f"  worker CPU {med(name, 4) / len(paths) * 1e6:6.1f} us/file"
            f"  all CPU {med(name, 5) / len(paths) * 1e6:6.1f} us/file"
        )
        if name.startswith("al-"):
            line += f"  ratio {v / base:.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
