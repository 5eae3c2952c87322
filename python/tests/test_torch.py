"""asyncloader.torch with real PyTorch (CPU): every sample's bytes are
compared with its file. Skipped when torch is not installed (CI installs it
into a cached venv: scripts/torch-venv.sh)."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

if os.environ.get("ASYNCLOADER_REQUIRE_TORCH") == "1":  # scripts/torch-venv.sh
    import torch
else:
    torch = pytest.importorskip("torch")
from torch.utils.data import (  # noqa: E402
    DataLoader,
    DistributedSampler,
    SequentialSampler,
)

from asyncloader.torch import (  # noqa: E402
    SKIP,
    BatchLoadError,
    collate_bytes,
    FileDataset,
    ShardedFileIterable,
)
from conftest import make_files  # noqa: E402
from _torch_helpers import as_list, explode, fixed_batches, replace_with_marker, tagged  # noqa: E402

N = 300
BATCH = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchdata")
    files = make_files(root, N, lo=0, hi=40000, seed=7)
    return sorted(files), files


def check_batches(loader, batches, paths, files):
    """Each batch is exactly the files of its indices, in index order."""
    got = list(loader)
    assert len(got) == len(batches)
    for b, idx in zip(got, batches):
        assert [s for s in b] == [files[paths[i]] for i in idx]


def loader_threads_alive(ds):
    return ds.loader.stats()["loader_threads_alive"]


# -- FileDataset -------------------------------------------------------------


def test_shuffle_in_main_process_and_two_fork_workers(data):
    paths, files = data
    with FileDataset(paths) as ds:
        assert len(ds) == N
        assert ds.loader.max_file_size == max(len(v) for v in files.values())
        for nw in (0, 2):
            dl = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=nw,
                            collate_fn=as_list, multiprocessing_context="fork" if nw else None)
            seen = [s for b in dl for s in b]
            assert sorted(seen) == sorted(files.values())
            # exact order: batches given up front
            batches = fixed_batches(N, seed=nw, bs=BATCH)
            dl = DataLoader(ds, batch_sampler=batches, num_workers=nw, collate_fn=as_list,
                            multiprocessing_context="fork" if nw else None)
            check_batches(dl, batches, paths, files)
        assert ds[5] == files[paths[5]]
        assert ds.__getitems__([3, 3, 1]) == [files[paths[3]], files[paths[3]], files[paths[1]]]


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_spawn_and_forkserver_workers(data, method):
    paths, files = data
    with FileDataset(paths, transform=tagged) as ds:
        batches = fixed_batches(N, seed=11, bs=BATCH)
        dl = DataLoader(ds, batch_sampler=batches, num_workers=2, collate_fn=as_list,
                        multiprocessing_context=method)
        got = list(dl)
        for b, idx in zip(got, batches):
            assert b == [(len(files[paths[i]]), files[paths[i]]) for i in idx]
        assert len(got) == len(batches)


def test_distributed_sampler_two_ranks(data):
    paths, files = data
    with FileDataset(paths) as ds:
        seen = []
        for epoch in (0, 1):
            per_rank = []
            for rank in (0, 1):
                s = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=5)
                s.set_epoch(epoch)
                order = list(s)
                batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
                dl = DataLoader(ds, batch_size=BATCH, sampler=s, num_workers=2,
                                collate_fn=as_list, multiprocessing_context="fork")
                check_batches(dl, batches, paths, files)
                per_rank.append(order)
            assert sorted(per_rank[0] + per_rank[1]) == list(range(N))
            seen.append(per_rank[0])
        assert seen[0] != seen[1]  # set_epoch reshuffles


def test_persistent_and_non_persistent_workers_over_epochs(data):
    paths, files = data
    with FileDataset(paths, n_workers=3) as ds:  # 2 workers + the main process
        for persistent in (True, False):
            dl = DataLoader(ds, batch_size=BATCH, sampler=SequentialSampler(ds), num_workers=2,
                            persistent_workers=persistent, collate_fn=as_list,
                            multiprocessing_context="spawn")
            batches = [list(range(i, min(i + BATCH, N))) for i in range(0, N, BATCH)]
            for _epoch in range(3):  # non-persistent: ids freed and reclaimed
                check_batches(dl, batches, paths, files)
            del dl
        # the main process still gets an id
        assert ds.__getitems__([0, 1]) == [files[paths[0]], files[paths[1]]]


def test_collate_bytes_packs_a_batch(data):
    paths, files = data
    with FileDataset(paths) as ds:
        dl = DataLoader(ds, batch_size=BATCH, num_workers=2, collate_fn=collate_bytes,
                        multiprocessing_context="fork")
        got = []
        for buf, off in dl:
            got += [bytes(buf[off[i]:off[i + 1]].numpy()) for i in range(len(off) - 1)]
        assert got == [files[p] for p in paths]
    buf, off = collate_bytes([])
    assert buf.numel() == 0 and off.tolist() == [0]


def unpacked(dl):
    """The samples of (data, offsets) batches, as bytes, batch by batch."""
    return [[bytes(buf[off[i]:off[i + 1]].numpy()) for i in range(len(off) - 1)] for buf, off in dl]


def all_taken(ds):
    """Every entry handed over was taken: no worker id holds a buffer."""
    return all(ds.loader.get_worker_context(w).outstanding == 0 for w in range(ds.loader.n_workers))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_packed_batches_are_exact_in_process_and_through_workers(data, method):
    paths, files = data
    with FileDataset(paths, packed=True) as ds:
        batches = fixed_batches(N, seed=3, bs=BATCH)
        for nw in (0, 2):
            dl = DataLoader(ds, batch_sampler=batches, num_workers=nw, collate_fn=collate_bytes,
                            multiprocessing_context=method if nw else None)
            got = unpacked(dl)
            assert got == [[files[paths[i]] for i in idx] for idx in batches]
            del dl
            assert all_taken(ds)
        # shuffled, persistent workers, several epochs
        dl = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=2, persistent_workers=True,
                        collate_fn=collate_bytes, multiprocessing_context=method)
        for _epoch in range(3):
            seen = [x for b in unpacked(dl) for x in b]
            assert sorted(seen) == sorted(files.values())
        del dl
        assert all_taken(ds)


def test_packed_errors_raise_skip_or_replace_and_keep_nothing(data, tmp_path):
    paths, files = data
    gone = str(tmp_path / "gone.bin")
    p2 = paths[:20] + [gone] + paths[20:40]
    for on_error, want in (
        ("skip", [files[p] for p in paths[:40]]),
        (replace_with_marker, [files[p] for p in paths[:20]] + [b"missing:gone.bin:2"] + [files[p] for p in paths[20:40]]),
    ):
        with FileDataset(p2, packed=True, on_error=on_error) as ds:
            for nw in (0, 2):
                dl = DataLoader(ds, batch_size=len(p2), num_workers=nw, collate_fn=collate_bytes,
                                multiprocessing_context="fork" if nw else None)
                assert unpacked(dl) == [want]
                del dl
                assert all_taken(ds)
    with FileDataset(p2, packed=True) as ds:
        with pytest.raises(BatchLoadError) as ei:
            ds.__getitems__(list(range(len(p2))))
        assert ei.value.errno == errno.ENOENT and ei.value.index == 20
        assert all_taken(ds)
        dl = DataLoader(ds, batch_size=8, num_workers=2, collate_fn=collate_bytes,
                        multiprocessing_context="fork")
        with pytest.raises(BatchLoadError):
            list(dl)
        del dl
    with pytest.raises(ValueError, match="no transform"):
        FileDataset(paths, transform=tagged, packed=True)
    with FileDataset(paths, packed=True, queue_depth=4) as ds:
        with pytest.raises(ValueError, match="queue_depth"):
            ds.__getitems__(list(range(8)))


def test_packed_queue_smaller_than_the_prefetched_batches_still_flows(data):
    """Workers wait for the main process to take earlier batches when their
    queue is full of handed-over entries; nothing deadlocks."""
    paths, files = data
    with FileDataset(paths, packed=True, queue_depth=BATCH) as ds:
        dl = DataLoader(ds, batch_size=BATCH, num_workers=2, prefetch_factor=4, collate_fn=collate_bytes,
                        multiprocessing_context="fork")
        assert [x for b in unpacked(dl) for x in b] == [files[p] for p in paths]
        del dl
        assert all_taken(ds)


def test_too_few_worker_ids_is_a_clear_error(data):
    paths, _ = data
    with FileDataset(paths, n_workers=1) as ds:
        ds.__getitems__([0])  # the main process holds id 0
        dl = DataLoader(ds, batch_size=4, num_workers=1, collate_fn=as_list,
                        multiprocessing_context="fork")
        with pytest.raises(RuntimeError, match="worker ids .* in use"):
            list(dl)


def test_missing_file_raises_with_path_and_errno(data, tmp_path):
    paths, files = data
    gone = str(tmp_path / "no-such-file.bin")
    p2 = paths[:40] + [gone] + paths[40:80]
    with FileDataset(p2) as ds:
        with pytest.raises(BatchLoadError) as ei:
            ds.__getitems__(list(range(len(p2))))
        assert ei.value.errno == errno.ENOENT and ei.value.filename == gone
        assert ei.value.index == 40
        # nothing stayed outstanding: the next batch loads in full
        assert ds.__getitems__(list(range(40))) == [files[p] for p in paths[:40]]
        assert ds._worker().outstanding == 0
        # through DataLoader workers: re-raised in the main process
        dl = DataLoader(ds, batch_size=BATCH, num_workers=2, collate_fn=as_list,
                        multiprocessing_context="spawn")
        with pytest.raises(BatchLoadError) as ei:
            list(dl)
        assert ei.value.errno == errno.ENOENT and ei.value.filename == gone
        assert ei.value.index == 40


def test_on_error_skip_and_callable(data, tmp_path):
    paths, files = data
    gone = str(tmp_path / "gone.bin")
    p2 = [paths[0], gone, paths[1], str(tmp_path)]  # missing, a directory
    with FileDataset(p2, on_error="skip") as ds:
        assert ds.__getitems__([0, 1, 2, 3]) == [files[paths[0]], files[paths[1]]]
        assert ds.skipped == 2
    with FileDataset(p2, on_error=replace_with_marker) as ds:
        assert ds.__getitems__([3, 1, 0]) == [
            b"missing:" + os.path.basename(str(tmp_path)).encode() + b":%d" % errno.EISDIR,
            b"missing:gone.bin:%d" % errno.ENOENT,
            files[paths[0]],
        ]
    with pytest.raises(ValueError, match="on_error"):
        FileDataset(p2, on_error="ignore")


def test_exception_in_transform_leaves_nothing_outstanding(data):
    paths, files = data
    assert any(len(files[p]) % 7 == 3 for p in paths)
    with FileDataset(paths, transform=explode) as ds:
        with pytest.raises(ValueError, match="on purpose"):
            ds.__getitems__(list(range(N)))
        assert ds._worker().outstanding == 0
        good = [i for i, p in enumerate(paths) if len(files[p]) % 7 != 3]
        assert ds.__getitems__(good) == [files[paths[i]] for i in good]
        dl = DataLoader(ds, batch_size=BATCH, num_workers=2, collate_fn=as_list,
                        multiprocessing_context="fork")
        with pytest.raises(ValueError, match="on purpose"):
            list(dl)
        dl = DataLoader(ds, batch_sampler=[good[:BATCH]], num_workers=2, collate_fn=as_list,
                        multiprocessing_context="fork")
        assert list(dl) == [[files[paths[i]] for i in good[:BATCH]]]


def test_max_file_size_from_the_files_and_limit(tmp_path):
    small = tmp_path / "a"
    small.write_bytes(b"x" * 1000)
    big = tmp_path / "huge"
    with open(big, "wb") as f:  # sparse: 2 GiB, over the library's 1 GiB limit
        f.truncate(2 << 30)
    with FileDataset([str(small), str(tmp_path / "missing")]) as ds:
        assert ds.loader.max_file_size == 1000
    with pytest.raises(ValueError, match=r"largest file is 2147483648 bytes .*huge"):
        FileDataset([str(small), str(big)])


# -- lookahead ---------------------------------------------------------------


@pytest.mark.parametrize("nw,method", [(0, None), (2, "fork"), (2, "spawn")])
def test_lookahead_batch_sampler_epochs(data, nw, method):
    paths, files = data
    with FileDataset(paths, lookahead_bytes=1 << 20) as ds:
        sampler = ds.batch_sampler(BATCH, shuffle=True, seed=4)
        dl = DataLoader(ds, batch_sampler=sampler, num_workers=nw, collate_fn=as_list,
                        persistent_workers=nw > 0, multiprocessing_context=method)
        orders = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            batches = [list(b) for b in sampler]
            assert sorted(i for b in batches for i in b) == list(range(N))
            check_batches(dl, batches, paths, files)
            orders.append(batches)
        assert orders[0] != orders[1]


def test_lookahead_in_process_requests_ahead_within_budget(data):
    paths, files = data
    budget = 100_000
    with FileDataset(paths, lookahead_bytes=budget) as ds:
        sampler = ds.batch_sampler(BATCH, shuffle=True, seed=2, num_replicas=2, rank=1)
        batches = list(sampler)
        la = None
        for k, b in enumerate(batches):
            assert ds.__getitems__(b) == [files[paths[i]] for i in b]
            la = ds._claim.lookahead
            assert 0 <= la.bytes <= budget
            if k + 1 < len(batches):  # the next batch's files are on their way
                assert set(la.ready) | {i for i, c in la.flying.items() if c} <= set(batches[k + 1])
                assert la.ready or any(la.flying.values())
        # every file was requested once: nothing predicted went unused
        assert ds.loader.stats()["requests"] == sum(len(b) for b in batches)
        # batches out of the predicted order: still right, nothing leaks
        for b in reversed(batches):
            assert ds.__getitems__(b) == [files[paths[i]] for i in b]
        la.drop(ds._worker())
        assert ds._worker().outstanding == 0


def test_lookahead_held_entries_never_block_a_bigger_batch(data):
    paths, files = data
    with FileDataset(paths, queue_depth=16) as ds:
        sampler = ds.batch_sampler(2, shuffle=False)
        first = next(iter(sampler))
        assert ds.__getitems__(first) == [files[paths[i]] for i in first]
        la = ds._claim.lookahead
        # The next batch is on its way, or (a fast loader) already here.
        assert any(la.flying.values()) or la.ready
        big = list(range(100, 140))  # 40 files > queue_depth, none predicted
        assert ds.__getitems__(big) == [files[paths[i]] for i in big]


def test_lookahead_exception_in_transform_releases_everything(data):
    paths, files = data
    with FileDataset(paths, transform=explode) as ds:
        sampler = ds.batch_sampler(BATCH, shuffle=False)
        with pytest.raises(ValueError, match="on purpose"):
            for b in sampler:
                ds.__getitems__(b)
        assert ds._worker().outstanding == 0
        assert not ds._claim.lookahead.ready and ds._claim.lookahead.outstanding == 0


# -- cleanup -----------------------------------------------------------------

CLEANUP_SCRIPT = textwrap.dedent(
    """
    import os, sys, threading
    sys.path[:0] = {path!r}
    from torch.utils.data import DataLoader
    from asyncloader.torch import FileDataset
    paths = sys.argv[1:]
    def ntasks():
        return len(os.listdir("/proc/self/task"))
    def memfds():
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                if "memfd" in os.readlink(f"/proc/self/fd/{{fd}}"):
                    n += 1
            except OSError:
                pass
        return n
    def maps():
        return sum("memfd:" in l for l in open("/proc/self/maps"))
    if __name__ == "__main__":
        t0, f0, m0 = ntasks(), memfds(), maps()
        ds = FileDataset(paths)
        dl = DataLoader(ds, batch_size=16, num_workers=2, collate_fn=list,
                        multiprocessing_context={method!r})
        n = sum(len(b) for b in dl)
        assert n == len(paths), n
        del dl
        ds.close()
        del ds
        import gc, time; gc.collect()
        def state():
            kids = [k for k in open(f"/proc/self/task/{{os.getpid()}}/children").read().split()
                    # multiprocessing's own helper (spawn), not a DataLoader worker
                    if b"resource_tracker" not in open(f"/proc/{{k}}/cmdline", "rb").read()]
            loaders = [t for t in os.listdir("/proc/self/task")
                       if open(f"/proc/self/task/{{t}}/comm").read().startswith("al-")]
            return memfds(), maps(), loaders, kids
        # DataLoader shutdown may SIGTERM a worker without waiting: allow it a moment
        deadline = time.monotonic() + 10
        while state() != (f0, m0, [], []) and time.monotonic() < deadline:
            time.sleep(0.1)
        print("before", f0, m0, "after (memfds, maps, loader threads, children)", state())
        assert state() == (f0, m0, [], []), state()
        print("OK")
    """
)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_no_leaked_threads_processes_or_memory(data, method, tmp_path):
    paths, _ = data
    here = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    script = tmp_path / "cleanup.py"
    script.write_text(CLEANUP_SCRIPT.format(path=[p for p in sys.path if p] + here, method=method))
    r = subprocess.run([sys.executable, str(script), *paths[:100]], capture_output=True,
                       text=True, timeout=90)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


CTRL_C_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    sys.path[:0] = {path!r}
    from torch.utils.data import DataLoader
    from asyncloader.torch import FileDataset
    def slow(data):
        time.sleep(0.01)
        return data
    if __name__ == "__main__":
        ds = FileDataset(sys.argv[1:], transform=slow)
        dl = DataLoader(ds, batch_size=8, num_workers=2, collate_fn=list,
                        persistent_workers=True, multiprocessing_context="spawn")
        first = True
        try:
            while True:
                for b in dl:
                    if first:
                        print("workers", *[w.pid for w in dl._iterator._workers], flush=True)
                        first = False
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            raise
    """
)


def test_ctrl_c_shuts_everything_down(data, tmp_path):
    paths, _ = data
    here = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT.format(path=[p for p in sys.path if p] + here))
    p = subprocess.Popen([sys.executable, str(script), *paths], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("workers"), line + p.stderr.read()
        pids = [int(x) for x in line.split()[1:]]
        time.sleep(0.5)
        os.killpg(p.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert "interrupted" in out, out + err
    assert p.returncode != 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{q}") for q in pids):
        time.sleep(0.1)
    assert not any(os.path.exists(f"/proc/{q}") for q in pids), "DataLoader workers left"


# -- ShardedFileIterable -----------------------------------------------------


@pytest.mark.parametrize("even", [None, "pad", "drop"])
def test_sharded_iterable_ranks_workers_and_epochs(data, even):
    paths, files = data
    n = N + 1  # not divisible by 2 ranks x 2 workers
    p2 = paths + [paths[0]]
    files_list = [files[p] for p in p2]
    with ShardedFileIterable(p2, shuffle=True, seed=3, rank=0, world_size=2, even=even) as it0:
        orders = []
        for epoch in (0, 1):
            per_rank = []
            for rank in (0, 1):
                it = ShardedFileIterable(p2, shuffle=True, seed=3, rank=rank, world_size=2,
                                         even=even, loader=it0.loader)
                it.set_epoch(epoch)
                idx = it.rank_indices()
                dl = DataLoader(it, batch_size=None, num_workers=2,
                                multiprocessing_context="fork")
                got = list(dl)
                assert sorted(got) == sorted(files_list[i] for i in idx)
                assert len(it) == len(idx) == len(got)
                per_rank.append(idx)
                it.close()
            lens = [len(x) for x in per_rank]
            both = per_rank[0] + per_rank[1]
            if even == "pad":
                assert lens == [(n + 1) // 2] * 2 and set(both) == set(range(n))
            elif even == "drop":
                assert lens == [n // 2] * 2 and len(set(both)) == len(both) == n - 1
            else:
                assert sorted(both) == list(range(n))
            orders.append(per_rank[0])
        assert orders[0] != orders[1]


def test_sharded_iterable_ordered_delivery_and_spawn(data):
    paths, files = data
    with ShardedFileIterable(paths, transform=tagged, shuffle=True, seed=9, ordered=True,
                             window=16) as it:
        idx = it.shard_indices()
        assert list(it) == [tagged(files[paths[i]]) for i in idx]
        # two spawn workers: each worker's stream is in its shard's order
        dl = DataLoader(it, batch_size=None, num_workers=2, multiprocessing_context="spawn")
        got = [tuple(s) for s in dl]  # default_convert made the tuples lists
        w0 = [tagged(files[paths[i]]) for i in idx[0::2]]
        w1 = [tagged(files[paths[i]]) for i in idx[1::2]]
        assert got[0::2] == w0[: len(got[0::2])] and got[1::2] == w1[: len(got[1::2])]
        assert sorted(got) == sorted(w0 + w1)


def test_sharded_iterable_errors(data, tmp_path):
    paths, files = data
    gone = str(tmp_path / "gone")
    with ShardedFileIterable(paths[:10] + [gone]) as it:
        with pytest.raises(BatchLoadError) as ei:
            list(it)
        assert ei.value.errno == errno.ENOENT and ei.value.filename == gone
        assert it._worker().outstanding == 0
    with ShardedFileIterable(paths[:10] + [gone], on_error="skip", ordered=True) as it:
        assert list(it) == [files[p] for p in paths[:10]] and it.skipped == 1
    with ShardedFileIterable([gone], on_error=lambda p, e: SKIP) as it:
        assert list(it) == []
