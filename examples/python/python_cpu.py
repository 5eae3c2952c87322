#!/usr/bin/env python3
"""How much CPU Python itself spends per file when it loads through
asyncloader: the worker thread's CPU time, minus the CPU spent inside the
library's calls (the engine's share), per file.

One process, one worker; the loads run in loader threads (``drive=
"loader"``), so the worker thread's CPU clock (``time.thread_time``) holds
only what the consumer does: its Python code, ctypes, and the library calls
it makes (requests, taking batches, releases). Each library function the
package calls is wrapped to add its own thread CPU time to a counter; the
wrapper's cost (a Python call and two clock reads per library call, a few
per batch) is counted as Python, so the Python figure is an upper bound.

    python3 examples/python/python_cpu.py            # the 20,000-file small set, warm
    python3 examples/python/python_cpu.py --dir DIR

Rows (each over every file, ``--repeat`` times, medians reported):

* ``load_batches + data(i)``: ``Batch.data(i)`` (a ``bytes`` copy) per file;
* ``load_batches + view(i)``: ``Batch.view(i)`` (zero-copy) per file;
* ``load + get_data()``: one ``Entry`` per file (the original API).

Every row takes each file's length and first byte; a run that did not load
every file (count and bytes against ``os.stat``) prints no figure and makes
the script exit 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_python import consume, dataset, list_files, stat_sizes, warm  # noqa: E402

try:
    import asyncloader
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(HERE.parent.parent / "python"))
    import asyncloader
from asyncloader import _ffi  # noqa: E402

# The library calls the window loops make (everything else is Python).
WRAPPED = (
    "al_worker_request_packed",
    "al_worker_request_bytes",
    "al_worker_request_tagged",
    "al_worker_get_batch",
    "al_batch_release",
    "al_entry_release",
    "al_entry_release_many",
    "al_entry_latency_ns",
    "al_worker_buffers",
)


class Meter:
    """Wraps the library's functions to sum the thread CPU spent in them."""

    def __init__(self, lib: _ffi.Lib):
        self.ns = 0
        self.calls = 0
        clock = time.thread_time_ns
        for name in WRAPPED:
            fn = getattr(lib, name, None)
            if fn is None:
                continue

            def wrapped(*args, _fn=fn):
                t0 = clock()
                try:
                    return _fn(*args)
                finally:
                    self.ns += clock() - t0
                    self.calls += 1

            setattr(lib, name, wrapped)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, help="directory of files (default: the generated small set)")
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    paths = list_files(args.dir) if args.dir else dataset("small", args.files, 1, None)
    sizes = stat_sizes(paths)
    nbytes = sum(sizes)
    max_file_size = max(4096, (max(sizes) + 4095) // 4096 * 4096)
    lib = _ffi.lib()
    meter = Meter(lib)
    rows = {  # bench_python's modes
        "batch": "load_batches + data(i)",
        "bview": "load_batches + view(i)",
        "bytes": "load + get_data()",
    }
    res: dict[str, list] = {k: [] for k in rows}
    print(
        f"{len(paths)} files, {nbytes / 1e6:.1f} MB, warm; one worker thread, loads in loader "
        f"threads; library {asyncloader.find_library()}"
    )
    with asyncloader.Loader(queue_depth=64, max_file_size=max_file_size, n_workers=1, drive="loader") as ld:
        ld.start()
        w = ld.get_worker_context(0)
        for r in range(args.repeat):
            for mode in rows:
                warm(paths)
                ns0, calls0 = meter.ns, meter.calls
                c0 = time.thread_time_ns()
                t0 = time.perf_counter()
                total, files, _ = consume(w, paths, None, mode)
                wall = time.perf_counter() - t0
                cpu = time.thread_time_ns() - c0
                lib_ns = meter.ns - ns0
                if files != len(paths) or total != nbytes:
                    print(f"{rows[mode]}: loaded {files} of {len(paths)} files, {total} of {nbytes} bytes", file=sys.stderr)
                    return 1
                res[mode].append((cpu / files, lib_ns / files, (cpu - lib_ns) / files, files / wall, (meter.calls - calls0) / files))
    print(f"median of {args.repeat}, ns per file (worker thread CPU = Python + library calls):")
    for mode, label in rows.items():
        med = [statistics.median(x[i] for x in res[mode]) for i in range(5)]
        print(
            f"  {label:24s} thread CPU {med[0]:6.0f}  in library calls {med[1]:6.0f}  "
            f"Python {med[2]:6.0f}  ({med[4]:.2f} library calls per file, {med[3]:.0f} files/s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
