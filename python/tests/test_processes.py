"""Workers and loaders in other processes."""

import errno
import hashlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import asyncloader
import _helpers


def digests(files):
    return {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool(method, files):
    ctx = mp.get_context(method)
    n = 3
    with asyncloader.Loader(16, 1 << 20, n, 4, 8) as ld:
        ld.start()
        paths = sorted(files)
        chunks = [paths[i::n] for i in range(n)]
        args = [(ld.get_worker_context(i), chunks[i]) for i in range(n)]
        with ctx.Pool(n) as pool:
            results = pool.map(_helpers.load_digests, args, chunksize=1)
        merged = {}
        pids = set()
        for r in results:
            pids.add(r.pop("__pid__"))
            merged.update(r)
        assert os.getpid() not in pids
        assert merged == digests(files)
        st = ld.stats()
        assert st["completions"] >= len(files)


def test_pickled_loader_in_spawned_process(files):
    ctx = mp.get_context("spawn")
    with asyncloader.Loader(16, 1 << 20, 2, 4, 8) as ld:
        ld.spawn_loader()
        q = ctx.Queue()
        # Pickle the Loader itself; the child asks for its worker.
        p = ctx.Process(target=_loader_child, args=(ld, sorted(files), q))
        p.start()
        status, res = q.get(timeout=30)
        p.join(10)
        assert status == "ok", res
        assert res == digests(files)
        assert p.exitcode == 0


def _loader_child(loader, paths, q):
    _helpers.worker_process(loader.get_worker_context(1), paths, q)


def test_become_loader_in_child_with_attached_worker(files):
    ctx = mp.get_context("spawn")
    ld = asyncloader.Loader(16, 1 << 20, 2, 4, 8)
    try:
        lq = ctx.Queue()
        loader_proc = ctx.Process(target=_helpers.run_become, args=(ld, lq))
        loader_proc.start()
        assert lq.get(timeout=30)[0] == "started"
        wq = ctx.Queue()
        worker_proc = ctx.Process(
            target=_helpers.worker_process, args=(ld.get_worker_context(0), sorted(files), wq)
        )
        worker_proc.start()
        status, res = wq.get(timeout=30)
        worker_proc.join(10)
        assert status == "ok", res
        assert res == digests(files)
        # This process (the creator) can use worker 1 too.
        w1 = ld.get_worker_context(1)
        some = sorted(files)[:5]
        assert {e.get_filepath(): e.get_data() for e in w1.load(some)} == {p: files[p] for p in some}
        assert ld.stats()["loader_pid"] == loader_proc.pid
        ld.shutdown()
        assert lq.get(timeout=10) == ("returned", None)
        loader_proc.join(10)
        assert loader_proc.exitcode == 0
    finally:
        ld.shutdown()


def test_spawn_loader_mode(files):
    with asyncloader.Loader(16, 1 << 20, 1, 4, 8) as ld:
        ld.spawn_loader()
        pid = ld.stats()["loader_pid"]
        assert pid not in (0, os.getpid())
        w = ld.get_worker_context(0)
        assert {e.get_filepath(): e.get_data() for e in w.load(files)} == files
    # Shut down: the loader process is gone.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("loader child still alive after shutdown")


def test_attach_by_name_in_unrelated_process(files):
    with asyncloader.Loader(16, 1 << 20, 2, 4, 8) as ld:
        ld.start()
        p = sorted(files)[0]
        code = textwrap.dedent(
            f"""
            import asyncloader, hashlib
            ld = asyncloader.Loader.attach({ld.name!r})
            w = ld.get_worker_context(1)
            assert w.request({p!r})
            e = w.wait_get(timeout=10)
            print(hashlib.sha256(e.get_data()).hexdigest())
            e.release()
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=_env()
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == hashlib.sha256(files[p]).hexdigest()


def _env():
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(asyncloader.__file__)))
    env["PYTHONPATH"] = here + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.parametrize("call", ["wait_get()", "get_many(4)", "become"])
def test_keyboard_interrupt(call):
    if call == "become":
        body = "ld.become_loader()"
        setup = "w = None"
    else:
        body = f"w.{call}"
        setup = "w = ld.get_worker_context(0)"
    code = textwrap.dedent(
        f"""
        import sys, time, asyncloader
        ld = asyncloader.Loader(4, 4096, 1, 1, 1)
        {setup}
        print("ready", flush=True)
        t = time.monotonic()
        try:
            {body}
        except KeyboardInterrupt:
            print("interrupted %.3f" % (time.monotonic() - t), flush=True)
            sys.exit(42)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # let it block
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
    assert proc.returncode == 42, err
    assert "interrupted" in out
    assert elapsed < 1.0, elapsed


@pytest.fixture
def killed_loader(files):
    """A spawned loader that served one file and was then SIGKILLed; yields
    (loader, worker 0, a path)."""
    ld = asyncloader.Loader(8, 1 << 20, 1, 1, 1)
    try:
        ld.spawn_loader()
        w = ld.get_worker_context(0)
        p = sorted(files)[0]
        assert w.request(p)
        with w.wait_get(timeout=10) as e:
            assert e.get_data() == files[p]
        os.kill(ld.stats()["loader_pid"], signal.SIGKILL)
        yield ld, w, p
    finally:
        ld.shutdown()


def test_loader_death_makes_waiters_raise_eownerdead_in_bounded_time(killed_loader):
    _, w, _ = killed_loader
    t0 = time.monotonic()
    with pytest.raises(OSError) as ei:
        w.wait_get(timeout=10)
    assert ei.value.errno == errno.EOWNERDEAD
    assert time.monotonic() - t0 < 2.0


def test_dead_loader_state_is_dead_and_requests_raise_eownerdead(killed_loader):
    ld, w, p = killed_loader
    with pytest.raises(OSError):
        w.wait_get(timeout=10)  # notices the death
    assert ld.stats()["state"] == "dead"
    with pytest.raises(OSError) as ei:
        w.request(p)
    assert ei.value.errno == errno.EOWNERDEAD


def _hold_and_hang(worker, paths, ready):
    """Child: requests files, holds one entry, then waits to be killed."""
    for p in paths:
        assert worker.request(p)
    e = worker.wait_get(timeout=10)  # held, never released
    ready.set()
    time.sleep(60)
    e.release()


@pytest.fixture
def killed_worker(files):
    """A started loader (queue_depth 4, 2 workers) whose worker 0 was used by
    a forked process that requested 4 files, held one entry and was
    SIGKILLed; yields (loader, the 4 paths)."""
    ctx = mp.get_context("fork")
    paths = sorted(files)[:4]
    with asyncloader.Loader(4, 1 << 20, 2, 1, 1) as ld:
        ld.start()
        ld.prefault()
        ready = ctx.Event()
        child = ctx.Process(target=_hold_and_hang, args=(ld.get_worker_context(0), paths, ready))
        child.start()
        assert ready.wait(10)
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        yield ld, paths


def test_killed_worker_process_does_not_stop_the_other_workers(killed_worker, files):
    ld, paths = killed_worker
    w1 = ld.get_worker_context(1)
    got = {}
    for e in w1.load(paths, window=4):
        got[e.get_filepath()] = e.get_data()
    assert got == {p: files[p] for p in paths}


def test_killed_worker_process_slots_are_reclaimed(killed_worker, files):
    ld, paths = killed_worker
    w0 = ld.get_worker_context(0)
    assert ld.reclaim_worker(0) == 4
    for e in w0.load(paths, window=4):
        assert e.get_data() == files[e.get_filepath()]


def test_reclaim_worker_of_an_unknown_worker_raises(loader):
    with pytest.raises(OSError):
        loader.reclaim_worker(99)
