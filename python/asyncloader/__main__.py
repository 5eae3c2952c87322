"""``python -m asyncloader``: the CLI's ``info``, and the way to the bench.

    python -m asyncloader [info] [PATH...] [--json]
        What this machine can do for the loader (the same report as the Rust
        binary's ``asyncloader info``, from the packaged library's al_probe).
    python -m asyncloader bench [ARGS...]    /    gen [ARGS...]
        Runs the ``asyncloader`` binary (Rust) with these arguments when it
        is on PATH or named by $ASYNCLOADER_BIN; otherwise says how to get it.
"""

import argparse
import os
import shutil
import subprocess
import sys

BENCH_HELP = """\
The benchmark is the Rust binary `asyncloader` (not part of this wheel).
From a clone of the repository:

    cargo run --release -- bench              # or: bench DIR --ext .JPEG
    cargo install --path . && asyncloader bench

Then `python -m asyncloader bench ...` runs it (it looks on PATH and at
$ASYNCLOADER_BIN). For Python's own throughput: examples/python/bench_python.py.
"""


def _binary():
    explicit = os.environ.get("ASYNCLOADER_BIN")
    if explicit:
        return explicit
    return shutil.which("asyncloader")


def _info(argv) -> int:
    p = argparse.ArgumentParser(
        prog="python -m asyncloader info",
        description="What this machine can do for asyncloader: io_uring (and why not), "
        "the opcodes it needs, the backend auto picks, and per PATH the file system, "
        "O_DIRECT and the block device's queue.",
    )
    p.add_argument("paths", nargs="*", help="files or directories data will be loaded from")
    p.add_argument("--json", action="store_true", help="print JSON")
    a = p.parse_args(argv)
    from . import _ffi

    text = _ffi.probe_report(a.paths, json_format=a.json)
    if a.json:
        import json

        v = json.loads(text)
        print(json.dumps(v, indent=2))
        return 1 if v["backend"]["error"] else 0
    sys.stdout.write(text)
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv and argv[0] in ("bench", "gen"):
        exe = _binary()
        if exe is None:
            sys.stderr.write(BENCH_HELP)
            return 2
        return subprocess.call([exe] + argv)
    if argv and argv[0] == "info":
        argv = argv[1:]
    return _info(argv)


if __name__ == "__main__":
    sys.exit(main())
