import errno
import gc
import os
import pickle
import threading
import time

import pytest

import asyncloader
from conftest import make_files


def drain(worker, n, timeout=10):
    got = {}
    for _ in range(n):
        with worker.wait_get(timeout=timeout) as e:
            got[e.get_filepath()] = e.get_data() if e.error == 0 else e.error
    return got


def test_basic_load_every_byte(loader, files):
    w = loader.get_worker_context(0)
    paths = list(files)
    got = {}
    i = 0
    while len(got) < len(paths):
        while i < len(paths) and w.request(paths[i]):
            i += 1
        e = w.wait_get(timeout=10)
        got[e.get_filepath()] = e.get_data()
        e.release()
    assert got == files


def test_original_api_names(files):
    # Positional arguments in the original module's order.
    ld = asyncloader.Loader(8, 1 << 20, 2, 1, 4, False)
    try:
        ld.spawn_loader()
        w = ld.get_worker_context(1)
        p = next(iter(files))
        assert w.request(p) is True
        e = None
        while e is None:
            e = w.try_get()
        assert isinstance(e.get_filepath(), str)
        assert e.get_filepath() == p
        assert e.get_data() == files[p]
        e.release()
    finally:
        ld.shutdown()


@pytest.fixture
def unstarted():
    """A worker of a loader that is not started: nothing completes."""
    with asyncloader.Loader(4, 4096, 1, 1, 1) as ld:
        yield ld.get_worker_context(0)


@pytest.fixture
def small_files_loader():
    """A started loader whose max_file_size is 4096, and its worker 0."""
    with asyncloader.Loader(16, 4096, 1, 1, 1) as ld:
        ld.start()
        yield ld, ld.get_worker_context(0)


def load_one(worker, path):
    """Requests `path` and returns its entry (the caller releases it)."""
    assert worker.request(path)
    return worker.wait_get(timeout=10)


def test_try_get_returns_none_when_nothing_completed(unstarted):
    assert unstarted.try_get() is None


def test_wait_get_raises_timeouterror_with_etimedout_after_the_timeout(unstarted):
    t = time.monotonic()
    with pytest.raises(TimeoutError) as ei:
        unstarted.wait_get(timeout=0.3)
    assert ei.value.errno == errno.ETIMEDOUT
    assert 0.25 < time.monotonic() - t < 2


def test_get_many_returns_an_empty_list_after_the_timeout(unstarted):
    assert unstarted.get_many(4, timeout=0.1) == []


@pytest.fixture
def odd_files(tmp_path):
    """Paths that fail or sit at the edge of max_file_size 4096, by name."""
    paths = {name: tmp_path / name for name in ["missing", "d", "fifo", "big", "exact", "empty"]}
    paths["d"].mkdir()
    os.mkfifo(paths["fifo"])
    paths["big"].write_bytes(b"x" * 5000)
    paths["exact"].write_bytes(b"y" * 4096)
    paths["empty"].write_bytes(b"")
    return paths


def test_missing_file_is_an_enoent_entry_and_get_data_raises_filenotfounderror(
    odd_files, small_files_loader
):
    _, w = small_files_loader
    with load_one(w, odd_files["missing"]) as e:
        assert e.error == errno.ENOENT
        with pytest.raises(FileNotFoundError) as ei:
            e.get_data()
        assert ei.value.errno == errno.ENOENT
        assert ei.value.filename == str(odd_files["missing"])


def test_directory_get_data_raises_isadirectoryerror(odd_files, small_files_loader):
    _, w = small_files_loader
    with load_one(w, odd_files["d"]) as e:
        with pytest.raises(IsADirectoryError):
            e.get_data()


def test_fifo_is_an_einval_entry_and_memoryview_raises(odd_files, small_files_loader):
    _, w = small_files_loader
    with load_one(w, odd_files["fifo"]) as e:
        assert e.error == errno.EINVAL
        with pytest.raises(OSError) as ei:
            e.memoryview()
        assert ei.value.errno == errno.EINVAL


def test_file_over_max_file_size_get_data_raises_efbig(odd_files, small_files_loader):
    _, w = small_files_loader
    with load_one(w, odd_files["big"]) as e:
        with pytest.raises(OSError) as ei:
            e.get_data()
        assert ei.value.errno == errno.EFBIG


def test_file_of_exactly_max_file_size_loads(odd_files, small_files_loader):
    _, w = small_files_loader
    with load_one(w, odd_files["exact"]) as e:
        assert e.get_data() == b"y" * 4096


def test_empty_file_loads_as_empty_bytes_and_memoryview(odd_files, small_files_loader):
    _, w = small_files_loader
    with load_one(w, odd_files["empty"]) as e:
        assert e.get_data() == b""
        assert bytes(e.memoryview()) == b""


def test_stats_count_failed_loads_as_errors(odd_files, small_files_loader):
    ld, w = small_files_loader
    for p in odd_files.values():
        load_one(w, p).release()
    st = ld.stats()
    assert st["errors"] == 4 and st["completions"] == 6


def test_path_over_path_max_raises_enametoolong(loader):
    w = loader.get_worker_context(0)
    with pytest.raises(OSError) as ei:
        w.request("/" + "a" * 5000)
    assert ei.value.errno == errno.ENAMETOOLONG


def test_path_with_nul_raises_valueerror(loader):
    w = loader.get_worker_context(0)
    with pytest.raises(ValueError):
        w.request("/tmp/a\0b")


def test_load_turns_a_bad_path_into_a_failed_entry(loader):
    w = loader.get_worker_context(0)
    res = [(e.path_bytes, e.error) for e in w.load(["/" + "a" * 5000, "/nonexistent-x"])]
    assert sorted(r[1] for r in res) == sorted([errno.ENAMETOOLONG, errno.ENOENT])


def test_queue_full_returns_false(files):
    with asyncloader.Loader(4, 1 << 20, 1, 1, 1) as ld:
        # Not started: requests stay queued.
        w = ld.get_worker_context(0)
        paths = list(files)[:6]
        assert [w.request(p) for p in paths] == [True] * 4 + [False] * 2
        assert w.outstanding == 4
        ld.start()
        got = drain(w, 4)
        assert got == {p: files[p] for p in paths[:4]}
        assert w.request(paths[4])
        assert drain(w, 1) == {paths[4]: files[paths[4]]}


def non_utf8_file(tmp_path):
    name = os.fsencode(tmp_path) + b"/\xff\xfe-caf\xe9.bin"
    with open(name, "wb") as f:
        f.write(b"non-utf8 content")
    return name


def test_non_utf8_bytes_path_loads(tmp_path, loader):
    name = non_utf8_file(tmp_path)
    w = loader.get_worker_context(0)
    assert w.request(name)
    with w.wait_get(timeout=10) as e:
        assert e.path_bytes == name
        assert e.get_filepath() == os.fsdecode(name)
        assert e.get_data() == b"non-utf8 content"


def test_str_path_with_surrogate_escapes_round_trips_to_the_same_bytes(tmp_path, loader):
    name = non_utf8_file(tmp_path)
    w = loader.get_worker_context(0)
    assert w.request(os.fsdecode(name))
    with w.wait_get(timeout=10) as e:
        assert e.path_bytes == name


def test_pathlike(loader, files):
    import pathlib

    w = loader.get_worker_context(0)
    p = next(iter(files))
    assert w.request(pathlib.Path(p))
    with w.wait_get(timeout=10) as e:
        assert e.get_data() == files[p]


def test_entry_with_block_releases_it_and_release_is_idempotent(loader, files):
    p = next(iter(files))
    w = loader.get_worker_context(0)
    w.request(p)
    with w.wait_get(timeout=10) as e:
        assert e.get_data() == files[p]
    assert e.released
    with pytest.raises(ValueError):
        e.get_data()
    e.release()  # idempotent


def test_loader_with_block_shuts_the_loader_down(files):
    p = next(iter(files))
    with asyncloader.Loader(4, 1 << 20, 1, 1, 1) as ld:
        ld.start()
        w = ld.get_worker_context(0)
        w.request(p)
        with w.wait_get(timeout=10) as e:
            assert e.get_data() == files[p]
    assert ld.stats()["state"] in ("stopped", "stopping")
    with pytest.raises(OSError) as ei:
        w.request(p)
    assert ei.value.errno == errno.ESHUTDOWN


def test_memoryview_is_readonly_bytes_and_dies_with_release(loader, files):
    w = loader.get_worker_context(0)
    p = next(iter(files))
    data = files[p]
    w.request(p)
    e = w.wait_get(timeout=10)
    mv = e.memoryview()
    assert mv.readonly and mv.format == "B" and len(mv) == len(data)
    assert bytes(mv) == data
    with pytest.raises(TypeError):
        mv[0] = 1
    e.release()
    with pytest.raises(ValueError):
        mv[0]
    with pytest.raises(ValueError):
        bytes(mv)


def test_live_slice_pins_the_buffer_and_release_refuses(loader, files):
    w = loader.get_worker_context(0)
    p = next(iter(files))
    data = files[p]
    w.request(p)
    e = w.wait_get(timeout=10)
    mv = e.memoryview()
    s = mv[1:5]
    with pytest.raises(BufferError):
        e.release()
    assert not e.released
    assert bytes(s) == data[1:5]
    del s
    e.release()
    assert e.released
    with pytest.raises(ValueError):
        len(mv.tobytes())


def test_entry_collected_while_a_slice_lives_is_released_when_the_slice_goes(loader, files):
    w = loader.get_worker_context(0)
    p = next(iter(files))
    data = files[p]
    w.request(p)
    e = w.wait_get(timeout=10)
    s = e.memoryview()[2:6]
    del e
    gc.collect()
    assert w.outstanding == 1
    assert bytes(s) == data[2:6]
    del s
    gc.collect()
    assert w.outstanding == 0


def test_memoryview_with_block_releases(loader, files):
    w = loader.get_worker_context(0)
    p = next(iter(files))
    w.request(p)
    with w.wait_get(timeout=10) as e:
        with e.memoryview() as mv:
            assert bytes(mv[:10]) == files[p][:10]
    assert e.released and w.outstanding == 0


def test_max_idle_iters_is_an_alias_of_idle_iters(files):
    with asyncloader.Loader(queue_depth=8, n_workers=1, dispatch_n=4, max_idle_iters=3) as ld:
        assert ld.config()["idle_iters"] == 3
        ld.start()
        w = ld.get_worker_context(0)
        got = {e.get_filepath(): e.get_data() for e in w.load(files)}
        assert got == files


def test_idle_iters_and_max_idle_iters_together_raise_typeerror():
    with pytest.raises(TypeError):
        asyncloader.Loader(8, idle_iters=2, max_idle_iters=3)


def test_max_file_size_defaults_to_the_librarys_default():
    with asyncloader.Loader(queue_depth=8, n_workers=1, dispatch_n=4, max_idle_iters=3) as ld:
        assert ld.config()["max_file_size"] == asyncloader.DEFAULT_MAX_FILE_SIZE


def test_zero_queue_depth_raises_valueerror_naming_the_field():
    with pytest.raises(ValueError) as ei:
        asyncloader.Loader(0, 1 << 20, 1, 1, 1)
    assert ei.value.errno == errno.EINVAL
    assert "queue_depth" in str(ei.value)


def test_negative_n_workers_raises_valueerror():
    with pytest.raises(ValueError):
        asyncloader.Loader(8, 1 << 20, -1, 1, 1)


def test_unknown_backend_raises_valueerror():
    with pytest.raises(ValueError):
        asyncloader.Loader(8, backend="nope")


def test_worker_id_out_of_range(loader):
    with pytest.raises(OSError) as ei:
        loader.get_worker_context(99)
    assert ei.value.errno == errno.EINVAL


def test_load_iterator_loads_every_file_and_releases_them(loader, files):
    w = loader.get_worker_context(1)
    got = {}
    for e in w.load(iter(files), window=8):
        got[e.get_filepath()] = e.get_data()
    assert got == files
    assert w.outstanding == 0


def test_load_window_larger_than_queue_depth_is_capped_not_a_deadlock(loader, files):
    w = loader.get_worker_context(1)
    got = {e.get_filepath(): e.get_data() for e in w.load(list(files), window=10_000)}
    assert got == files
    assert w.outstanding == 0


def test_load_break_releases_everything(loader, files):
    w = loader.get_worker_context(2)
    it = w.load(files, window=16)
    first = next(it)
    assert first.get_data() == files[first.get_filepath()]
    it.close()
    assert first.released
    assert w.outstanding == 0


def test_load_refuses_release_with_live_slice(loader, files):
    w = loader.get_worker_context(3)
    keep = []
    with pytest.raises(BufferError):
        for e in w.load(list(files)[:10], window=4):
            keep.append(e.memoryview()[:4])
    assert not e.released  # refused: the slice still reads valid data
    assert bytes(keep[0]) == files[e.get_filepath()][:4]
    del e
    keep.clear()
    gc.collect()
    assert w.outstanding == 0


@pytest.fixture
def batch_loader():
    """An unstarted loader with queue_depth 8 and its worker 0."""
    with asyncloader.Loader(8, 1 << 20, 1, 8, 4) as ld:
        yield ld, ld.get_worker_context(0)


def test_request_many_queues_until_the_queue_is_full_and_returns_the_count(batch_loader, files):
    ld, w = batch_loader
    paths = list(files)[:20]
    assert w.request_many(paths) == 8
    assert w.request_many(paths[8:]) == 0
    ld.start()
    for e in w.get_many(8, timeout=10):
        e.release()


def test_get_many_before_start_returns_an_empty_list(batch_loader, files):
    ld, w = batch_loader
    assert w.request_many(list(files)[:8]) == 8
    assert w.get_many(8, timeout=0) == []  # not started
    ld.start()
    for e in w.get_many(8, timeout=10):
        e.release()


def test_get_many_returns_between_one_and_n_entries_until_all_completed(batch_loader, files):
    ld, w = batch_loader
    paths = list(files)[:20]
    assert w.request_many(paths) == 8
    ld.start()
    got = {}
    while len(got) < 8:
        es = w.get_many(8, timeout=10)
        assert 1 <= len(es) <= 8
        for e in es:
            with e:
                got[e.get_filepath()] = e.get_data()
    assert got == {p: files[p] for p in paths[:8]}


def test_request_many_with_a_bad_first_path_raises(batch_loader, files):
    ld, w = batch_loader
    ld.start()
    with pytest.raises(OSError) as ei:
        w.request_many(["/" + "x" * 5000] + list(files)[:20])
    assert ei.value.errno == errno.ENAMETOOLONG


def test_request_many_stops_at_a_bad_path_and_returns_the_count_before_it(batch_loader, files):
    ld, w = batch_loader
    ld.start()
    paths = list(files)[:20]
    assert w.request_many(paths[:3] + ["/" + "x" * 5000] + paths) == 3
    for e in w.get_many(3, timeout=10):
        e.release()


def test_request_many_of_nothing_returns_zero(batch_loader):
    _, w = batch_loader
    assert w.request_many([]) == 0


def test_shutdown_wakes_waiters_with_eshutdown():
    ld = asyncloader.Loader(4, 4096, 2, 1, 1)
    ld.start()
    w = ld.get_worker_context(0)
    errs = []

    def waiter():
        try:
            w.wait_get()
        except OSError as e:
            errs.append((e.errno, time.monotonic()))

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    ld.shutdown()
    t.join(5)
    assert not t.is_alive()
    assert errs and errs[0][0] == errno.ESHUTDOWN
    assert errs[0][1] - t0 < 1.0


def test_wait_get_after_shutdown_raises_brokenpipeerror():
    ld = asyncloader.Loader(4, 4096, 2, 1, 1)
    ld.start()
    w = ld.get_worker_context(0)
    ld.shutdown()
    with pytest.raises(BrokenPipeError):
        w.wait_get(timeout=1)


def test_shutdown_is_idempotent():
    ld = asyncloader.Loader(4, 4096, 2, 1, 1)
    ld.start()
    ld.shutdown()
    ld.shutdown()
    assert ld.stats()["state"] in ("stopped", "stopping")


def test_wait_releases_gil():
    with asyncloader.Loader(4, 4096, 1, 1, 1) as ld:
        # Not started: a wait blocks until the timeout.
        w = ld.get_worker_context(0)
        counter = [0]
        stop = threading.Event()

        def spin():
            while not stop.is_set():
                counter[0] += 1

        t = threading.Thread(target=spin)
        t.start()
        try:
            with pytest.raises(TimeoutError):
                w.wait_get(timeout=0.5)
        finally:
            stop.set()
            t.join()
        assert counter[0] > 1000


def test_loader_unpickled_in_the_same_process_is_the_same_object(loader):
    assert pickle.loads(pickle.dumps(loader)) is loader


def test_worker_unpickled_in_the_same_process_keeps_its_id_and_loader(loader):
    w = loader.get_worker_context(2)
    w2 = pickle.loads(pickle.dumps(w))
    assert w2.id == 2 and w2.loader is loader


def test_entry_cannot_be_pickled(loader):
    w = loader.get_worker_context(2)
    with pytest.raises(TypeError):
        pickle.dumps(asyncloader.Entry(w, None, path=b"/x", err=2))


def test_loader_name_says_asyncloader(loader):
    assert loader.name.startswith("asyncloader-")


def test_stats_count_the_loads_and_name_the_state_and_backend(loader, files):
    w = loader.get_worker_context(0)
    n = sum(1 for _ in w.load(files))
    st = loader.stats()
    assert n == len(files)
    assert st["completions"] >= n and st["requests"] >= n
    assert st["bytes"] >= sum(map(len, files.values()))
    assert st["state"] == "running"
    assert st["backend"] in ("io_uring", "threads")


def test_threads_backend(files):
    with asyncloader.Loader(8, 1 << 20, 1, 2, 2, backend="threads") as ld:
        ld.start()
        w = ld.get_worker_context(0)
        assert {e.get_filepath(): e.get_data() for e in w.load(files)} == files
        assert ld.stats()["backend"] == "threads"


def test_direct(tmp_path):
    files = make_files(tmp_path / "direct", 50, lo=0, hi=70000, seed=7)
    with asyncloader.Loader(16, 1 << 20, 1, 4, 4, True) as ld:
        ld.start()
        w = ld.get_worker_context(0)
        assert {e.get_filepath(): e.get_data() for e in w.load(files)} == files
