"""Functions run in child processes (importable by spawn/forkserver)."""

import os
import hashlib


def load_all(worker, paths, window=8):
    """Loads paths through a (pickled) worker; returns {path: data}."""
    out = {}
    for e in worker.load(paths, window=window):
        out[e.get_filepath()] = e.get_data()
    return out


def load_digests(args):
    worker, paths = args
    return {p: hashlib.sha256(d).hexdigest() for p, d in load_all(worker, paths).items()} | {
        "__pid__": os.getpid()
    }


def run_become(loader, q):
    """Child: becomes the loader of a (pickled, so attached) Loader."""
    q.put(("started", os.getpid()))
    try:
        loader.become_loader()
        q.put(("returned", None))
    except BaseException as e:  # report, the test asserts
        q.put(("error", repr(e)))


def worker_process(worker, paths, q):
    try:
        res = load_all(worker, paths)
        q.put(("ok", {p: hashlib.sha256(d).hexdigest() for p, d in res.items()}))
    except BaseException as e:
        q.put(("error", repr(e)))
