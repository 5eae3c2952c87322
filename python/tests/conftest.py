"""Shared fixtures. Every test runs under a watchdog so that nothing hangs:
SIGALRM after TEST_TIMEOUT seconds raises in the test (blocking calls wait
in 100 ms slices, so the handler runs), and faulthandler kills the run with
tracebacks if even that does not help."""

import faulthandler
import os
import random
import signal

import sys

import pytest

try:
    import asyncloader
except ImportError:  # not installed: test the source tree (python/asyncloader)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (sys.path[0], os.environ.get("PYTHONPATH")) if p
    )
    import asyncloader

TEST_TIMEOUT = int(os.environ.get("ASYNCLOADER_TEST_TIMEOUT", "60"))


class WatchdogTimeout(Exception):
    pass


@pytest.fixture(autouse=True)
def _watchdog():
    def on_alarm(signum, frame):
        raise WatchdogTimeout(f"test took more than {TEST_TIMEOUT}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT)
    faulthandler.dump_traceback_later(TEST_TIMEOUT + 30, exit=True)
    try:
        yield
    finally:
        signal.alarm(0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, old)


def make_files(root, n, lo=0, hi=20000, seed=1234):
    """n files with deterministic random content; returns {path: bytes}."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        size = rng.randint(lo, hi)
        data = rng.randbytes(size) if hasattr(rng, "randbytes") else os.urandom(size)
        p = root / f"f{i:05d}.bin"
        p.write_bytes(data)
        out[str(p)] = data
    return out


@pytest.fixture
def files(tmp_path):
    return make_files(tmp_path / "data", 200)


@pytest.fixture
def loader():
    with asyncloader.Loader(
        queue_depth=16, max_file_size=1 << 20, n_workers=4, dispatch_n=4, idle_iters=8
    ) as ld:
        ld.start()
        yield ld
