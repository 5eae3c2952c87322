#!/usr/bin/env python3
"""Tar shards through asyncloader's byte ranges: every member of a
WebDataset-style shard loaded by range, verified against ``tarfile``, and
timed against ``tarfile`` and a thread pool of ``os.pread``.

The shard (``--shard PATH``, or generated once, deterministically, into a
cache directory): ``--samples`` samples (default 1,000), each an image-like
``.jpg`` member of 1-200 KB plus a small ``.cls`` and ``.json`` member,
written with Python's ``tarfile``. The member index (name, offset of the
data, size) comes from ``tarfile.TarInfo.offset_data``, once, before the
clock starts (a WebDataset index)::

    python3 examples/python/tar_shard.py --repeat 5

Rows (each run ``--repeat`` times, the rows interleaved, their order rotated
from run to run; page cache warm, the same shard; medians reported). Every
row produces every member's bytes:

* ``tarfile extractfile``: ``tf.extractfile(m).read()`` for every member, in
  shard order, the members already listed (the shard opened before the
  clock).
* ``tarfile open+extract``: the same, including ``tarfile.open`` and the
  walk over the headers (how a shard is read without an index).
* ``pread pool(T)``: a ``ThreadPoolExecutor`` of ``T`` threads (cores and
  2 x cores) doing ``os.pread`` on one shared descriptor, the members split
  into 4 chunks per thread (one task per chunk: no per-member task cost).
* ``pread pool(T) into buffer``: the same pool reading every member with
  ``os.preadv`` into its place in one reused buffer (allocated once), then
  one ``memoryview`` slice per member: the plain counterpart of the arena
  row.
* ``asyncloader load_ranges``: ``Worker.load_ranges`` of every member's
  ``(shard, offset_data, size)`` (the list built before the clock):
  ``bytes`` per member, in index order. It packs runs of the items into
  range tables itself, inside the clock.
* ``asyncloader request_ranges``: the same bytes through
  ``Worker.request_ranges`` from a table of every member
  (``asyncloader.pack_ranges``, built once before the clock, like the
  pools' index): one library call per refill of the queue, a ``bytes`` per
  member put in its place by its tag.
* ``asyncloader arena views``: ``Worker.request_ranges`` of a table that
  sends every member into the loader's arena, packed (built once before
  the clock), then one ``memoryview`` slice of the arena per member (no
  copy; what a decoder reading from memory gets).
* ``asyncloader arena views, 1 call/member``: the same with one
  ``Worker.request_into`` per member (for comparison: what the table
  saves).

``caller CPU``: the CPU time of the thread that runs the row (the Python
thread), per member, median of the runs: less noisy than the clock on a
busy machine, and what Python pays per member. The ``pread`` pools' work is
in their threads, not counted there: compare it between the asyncloader
rows only.

Each run is verified member by member against ``tarfile``'s extraction
(count, and every byte). A run that lost or mismatched a member makes the
benchmark fail (exit status 1) without any ratio: the failing rows and what
they got wrong are printed instead.

``--check``: a quick self-test on a small generated shard (one run of every
row, verified; no timing claims), used by the tests.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import asyncloader
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(HERE.parent.parent / "python"))
    import asyncloader


# ---------------------------------------------------------------------------
# The shard
# ---------------------------------------------------------------------------


def write_shard(path: Path, samples: int, seed: int, lo: int = 1000, hi: int = 200_000) -> None:
    """A WebDataset-style shard: per sample ``KEY.jpg`` (``lo``..``hi``
    bytes), ``KEY.cls`` and ``KEY.json``."""
    rng = random.Random(seed)
    block = rng.randbytes(max(hi, 1) * 4)
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(samples):
            key = f"sample{i:06d}"
            size = rng.randint(lo, hi)
            off = rng.randrange(len(block) - size + 1)
            # A unique head per member, then a slice of the block.
            img = (i.to_bytes(8, "little") + block[off + 8 : off + size])[:size]
            cls = str(rng.randrange(1000)).encode()
            meta = json.dumps({"key": key, "label": int(cls), "size": size}).encode()
            for ext, data in ((".jpg", img), (".cls", cls), (".json", meta)):
                ti = tarfile.TarInfo(key + ext)
                ti.size = len(data)
                ti.mtime = 1_700_000_000
                ti.mode = 0o644
                tf.addfile(ti, io.BytesIO(data))
    os.replace(tmp, path)


def default_shard(samples: int, seed: int) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    root = base / "asyncloader-bench"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"shard-{samples}-s{seed}.tar"
    if not path.exists():
        print(f"generating {path} ({samples} samples) ...", file=sys.stderr, flush=True)
        write_shard(path, samples, seed)
    return path


def index(path: str) -> list[tuple[str, int, int]]:
    """``(name, offset_data, size)`` of every regular member, in shard order."""
    with tarfile.open(path) as tf:
        return [(m.name, m.offset_data, m.size) for m in tf.getmembers() if m.isfile()]


def reference(path: str) -> dict[str, bytes]:
    """Every member's bytes as ``tarfile`` extracts them."""
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}


def warm(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


# ---------------------------------------------------------------------------
# The rows. Each returns (seconds, [(name, bytes-like)]).
# ---------------------------------------------------------------------------


def row_tarfile(tf: tarfile.TarFile, members: list) -> tuple[float, list]:
    t0 = time.perf_counter()
    out = [(m.name, tf.extractfile(m).read()) for m in members]
    return time.perf_counter() - t0, out


def row_tarfile_open(path: str) -> tuple[float, list]:
    t0 = time.perf_counter()
    with tarfile.open(path) as tf:
        out = [(m.name, tf.extractfile(m).read()) for m in tf if m.isfile()]
    return time.perf_counter() - t0, out


def _pread_chunk(fd: int, chunk: list) -> list:
    out = []
    for name, off, size in chunk:
        data = os.pread(fd, size, off)
        while len(data) < size:  # pread may return fewer bytes
            more = os.pread(fd, size - len(data), off + len(data))
            if not more:
                break
            data += more
        out.append((name, data))
    return out


def row_pread_pool(pool: ThreadPoolExecutor, threads: int, path: str, idx: list) -> tuple[float, list]:
    n_chunks = max(1, min(len(idx), threads * 4))
    step = -(-len(idx) // n_chunks)
    chunks = [idx[i : i + step] for i in range(0, len(idx), step)]
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        out = [x for part in pool.map(lambda c: _pread_chunk(fd, c), chunks) for x in part]
    finally:
        os.close(fd)
    return time.perf_counter() - t0, out


def _preadv_chunk(fd: int, mv: memoryview, chunk: list) -> None:
    for off, size, place in chunk:
        got = 0
        while got < size:
            n = os.preadv(fd, [mv[place + got : place + size]], off + got)
            if n <= 0:
                break
            got += n


def row_pread_into(
    pool: ThreadPoolExecutor, threads: int, path: str, idx: list, mv: memoryview, places: list
) -> tuple[float, list]:
    """The pread pool reading every member into one reused buffer at
    ``places[i]`` (``os.preadv`` into a slice): the baseline of the arena
    row, no allocation per member."""
    todo = [(off, size, places[i]) for i, (_n, off, size) in enumerate(idx)]
    n_chunks = max(1, min(len(todo), threads * 4))
    step = -(-len(todo) // n_chunks)
    chunks = [todo[i : i + step] for i in range(0, len(todo), step)]
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        list(pool.map(lambda c: _preadv_chunk(fd, mv, c), chunks))
    finally:
        os.close(fd)
    out = [(name, mv[places[i] : places[i] + size]) for i, (name, _o, size) in enumerate(idx)]
    return time.perf_counter() - t0, out


def row_load_ranges(worker, path: str, idx: list) -> tuple[float, list]:
    items = [(path, off, size) for _name, off, size in idx]
    t0 = time.perf_counter()
    datas = list(worker.load_ranges(items))
    dt = time.perf_counter() - t0
    return dt, [(name, d) for (name, _o, _s), d in zip(idx, datas)]


def _window(worker, p: bytes, table, n: int, on_batch) -> None:
    """Every record of ``table`` through ``request_ranges``, the queue kept
    full (one call per refill, once there is room for 16 ranges);
    ``on_batch(b)`` for each batch taken."""
    qd = worker.loader.queue_depth
    refill = max(1, min(16, qd // 4))  # ranges per call, at least
    nxt = done = 0
    while done < n:
        if nxt < n and (qd - (nxt - done) >= refill or nxt == done):
            nxt += worker.request_ranges(p, table, start=nxt, count=qd - (nxt - done))
            if nxt == done:
                raise RuntimeError("queue full with nothing of this row in flight")
        with worker.get_batch(qd) as b:
            on_batch(b)
            done += len(b)


def row_request_ranges(worker, path: str, idx: list, table) -> tuple[float, list]:
    """``bytes`` of every member from a table of ranges into entry buffers
    (built before the clock), each put in its place by its tag."""
    n = len(idx)
    datas: list = [None] * n

    def on_batch(b):
        for i, t in enumerate(b.tags):
            datas[t] = b.data(i)  # raises for a failed member

    t0 = time.perf_counter()
    _window(worker, os.fsencode(path), table, n, on_batch)
    dt = time.perf_counter() - t0
    return dt, [(name, d) for (name, _o, _s), d in zip(idx, datas)]


def row_arena(worker, path: str, idx: list, places: list, table) -> tuple[float, list]:
    """Every member into the arena at ``places[i]`` from a table of ranges
    (built before the clock), a window of requests in flight; then one
    view per member."""
    n = len(idx)
    sizes = [-1] * n

    def on_batch(b):
        for t, s, e in zip(b.tags, b.sizes, b.errors):
            sizes[t] = -e if e else s

    t0 = time.perf_counter()
    _window(worker, os.fsencode(path), table, n, on_batch)
    arena = worker.arena
    out = [(name, arena[places[i] : places[i] + max(sizes[i], 0)]) for i, (name, _o, _s) in enumerate(idx)]
    return time.perf_counter() - t0, out


def row_arena_per_call(worker, path: str, idx: list, places: list) -> tuple[float, list]:
    """As :func:`row_arena` with one ``request_into`` per member (no
    table)."""
    t0 = time.perf_counter()
    p = os.fsencode(path)
    qd = worker.loader.queue_depth
    n = len(idx)
    nxt = done = 0
    sizes = [-1] * n
    while done < n:
        while nxt < n and nxt - done < qd:
            _name, off, size = idx[nxt]
            if not worker.request_into(p, off, size, asyncloader.ARENA, places[nxt], tag=nxt):
                break
            nxt += 1
        with worker.get_batch(qd) as b:
            for t, s, e in zip(b.tags, b.sizes, b.errors):
                sizes[t] = -e if e else s
            done += len(b)
    arena = worker.arena
    out = [(name, arena[places[i] : places[i] + max(sizes[i], 0)]) for i, (name, _o, _s) in enumerate(idx)]
    return time.perf_counter() - t0, out


# ---------------------------------------------------------------------------
# Verification and the run
# ---------------------------------------------------------------------------


def verify(out: list, ref: dict) -> str:
    """"" when ``out`` holds every member of ``ref`` with its bytes, in any
    order; else what is wrong."""
    got = {}
    bad = []
    for name, data in out:
        got[name] = data
    missing = [n for n in ref if n not in got]
    for name, want in ref.items():
        if name in got and got[name] != want:
            bad.append(name)
    if not missing and not bad and len(got) == len(ref):
        return ""
    parts = []
    if missing:
        parts.append(f"lost {len(missing)} of {len(ref)} members (first: {missing[0]})")
    if bad:
        parts.append(f"{len(bad)} members differ from tarfile's (first: {bad[0]})")
    extra = len(got) - (len(ref) - len(missing))
    if extra:
        parts.append(f"{extra} unexpected members")
    return "; ".join(parts)


def run(args: argparse.Namespace) -> int:
    cores = os.cpu_count() or 1
    tmp = None
    if args.check:
        tmp = tempfile.TemporaryDirectory(prefix="tar-shard-check-")
        shard = Path(tmp.name) / "check.tar"
        write_shard(shard, args.samples or 40, args.seed, lo=1, hi=20_000)
    elif args.shard:
        shard = Path(args.shard)
    else:
        shard = default_shard(args.samples or 1000, args.seed)
    path = str(shard)
    idx = index(path)
    ref = reference(path)
    if args.inject_corrupt:
        # Test hook: the engine rows get a wrong offset for one member.
        name, off, size = idx[len(idx) // 2]
        eng_idx = list(idx)
        eng_idx[len(idx) // 2] = (name, off + 1, size)
    else:
        eng_idx = idx
    total = sum(s for _n, _o, s in idx)
    largest = max((s for _n, _o, s in idx), default=0)
    print(
        f"shard {path}: {len(idx)} members, {total / 1e6:.1f} MB of data "
        f"({os.path.getsize(path) / 1e6:.1f} MB file), largest {largest} bytes; "
        f"{cores} cores"
    )

    # The arena: every member packed, each at a 64-byte boundary.
    places = []
    at = 0
    for _n, _o, s in eng_idx:
        places.append(at)
        at += (s + 63) // 64 * 64
    loader = asyncloader.Loader(
        queue_depth=args.queue_depth,
        max_file_size=max(4096, (largest + 4095) // 4096 * 4096),
        n_workers=1,
        direct=args.direct,
        backend=args.backend,
        drive=args.drive,
        arena_size=max(4096, at),
    )
    loader.start()
    worker = loader.worker(0)
    # The range tables, built once (setup, like the index): every member
    # into an entry buffer, and every member into the arena at its place.
    buf_table = asyncloader.pack_ranges([(off, size) for _n, off, size in eng_idx])
    arena_table = asyncloader.pack_ranges(
        [(off, size, asyncloader.ARENA, places[i]) for i, (_n, off, size) in enumerate(eng_idx)]
    )
    tf = tarfile.open(path)
    members = [m for m in tf.getmembers() if m.isfile()]
    buf = memoryview(bytearray(max(1, at)))  # the pread rows' reused buffer
    pools = {t: ThreadPoolExecutor(t) for t in sorted({cores, 2 * cores})}
    for t, pool in pools.items():
        list(pool.map(lambda _: None, range(t)))  # threads started

    rows = {
        "tarfile extractfile": lambda: row_tarfile(tf, members),
        "tarfile open+extract": lambda: row_tarfile_open(path),
        **{f"pread pool({t})": (lambda t=t: row_pread_pool(pools[t], t, path, idx)) for t in pools},
        **{
            f"pread pool({t}) into buffer": (lambda t=t: row_pread_into(pools[t], t, path, idx, buf, places))
            for t in pools
        },
        "asyncloader load_ranges": lambda: row_load_ranges(worker, path, eng_idx),
        "asyncloader request_ranges": lambda: row_request_ranges(worker, path, eng_idx, buf_table),
        "asyncloader arena views": lambda: row_arena(worker, path, eng_idx, places, arena_table),
        "asyncloader arena views, 1 call/member": lambda: row_arena_per_call(worker, path, eng_idx, places),
    }
    names = list(rows)
    times: dict[str, list] = {n: [] for n in names}
    cpus: dict[str, list] = {n: [] for n in names}  # the calling thread's CPU
    failures: dict[str, str] = {}
    repeat = 1 if args.check else args.repeat
    try:
        warm(path)
        for r in range(repeat):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                try:
                    c0 = time.thread_time()
                    dt, out = rows[name]()
                    cpus[name].append(time.thread_time() - c0)
                    why = verify(out, ref)
                    del out
                except Exception as e:  # a row that cannot finish is a failure too
                    dt, why = float("nan"), f"raised {e!r}"
                if why:
                    failures.setdefault(name, why)
                times[name].append(dt)
    finally:
        st = loader.stats()
        tf.close()
        for pool in pools.values():
            pool.shutdown()
        loader.close()
    print(
        f"asyncloader: backend {st['backend']}, drive {st['drive']}, "
        f"loader_threads {st['loader_threads']}, queue_depth {args.queue_depth}, direct {args.direct}"
    )

    if failures:
        print(f"NOT COMPARABLE: every row must produce all {len(ref)} members byte for byte:")
        for name in names:
            print(f"  {name:38s} {'FAILED: ' + failures[name] if name in failures else 'ok'}")
        return 1
    if args.check:
        print(f"check ok: {len(names)} rows, every one gave all {len(ref)} members byte for byte")
        return 0

    med = {n: statistics.median(v) for n, v in times.items()}
    print(f"median of {repeat} runs (warm page cache, rows interleaved):")
    print(f"  {'row':38s} {'members/s':>11s} {'MB/s':>8s} {'caller CPU':>10s}   runs (members/s)")
    for n in names:
        runs = ", ".join(f"{len(idx) / t:,.0f}" for t in times[n])
        cpu = statistics.median(cpus[n]) / len(idx) * 1e6
        print(f"  {n:38s} {len(idx) / med[n]:11,.0f} {total / med[n] / 1e6:8.0f} {cpu:7.2f} us   {runs}")
    base = [n for n in names if not n.startswith("asyncloader")]
    for n in names:
        if n.startswith("asyncloader"):
            print(f"  {n}: " + ", ".join(f"ratio {med[b] / med[n]:.2f}x vs {b}" for b in base))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shard", help="an existing tar file (default: generated and cached)")
    ap.add_argument("--samples", type=int, default=0, help="samples of the generated shard (default 1000; 40 with --check)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5, help="runs per row (median reported)")
    ap.add_argument("--queue-depth", type=int, default=64)
    ap.add_argument("--direct", action="store_true", help="O_DIRECT loader")
    ap.add_argument("--backend", default="auto", choices=["auto", "io_uring", "threads"])
    ap.add_argument("--drive", default="auto", choices=["auto", "loader", "worker"])
    ap.add_argument("--check", action="store_true", help="quick self-test on a small generated shard")
    ap.add_argument("--inject-corrupt", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
