"""The batch path: tags, ``request_many`` in one call, ``get_batch`` /
``Batch``, ``load_batches``, and ``load_into`` placing files by tag.
Every byte is compared with the file on disk."""

import errno
import gc
import os

import pytest

import asyncloader
from conftest import make_files


def _take_all(w, n, max_n=64):
    """Batches until n entries arrived."""
    out = []
    got = 0
    while got < n:
        b = w.get_batch(max_n, timeout=10)
        assert len(b) > 0
        got += len(b)
        out.append(b)
    return out


def test_tags_round_trip_through_request_and_request_many(loader, files):
    w = loader.get_worker_context(0)
    paths = sorted(files)[:12]
    for i, p in enumerate(paths[:4]):
        assert w.request(p, tag=1000 + i)
    assert w.request_many(paths[4:], first_tag=2000) == 8
    seen = {}
    for b in _take_all(w, 12):
        with b:
            assert b.ok
            for i, tag in enumerate(b.tags):
                seen[tag] = (b.path(i), b.data(i))
    want = {1000 + i: p for i, p in enumerate(paths[:4])}
    want.update({2000 + i: p for i, p in enumerate(paths[4:])})
    assert sorted(seen) == sorted(want)
    for tag, (path, data) in seen.items():
        assert path == want[tag]
        assert data == files[path]
    assert w.outstanding == 0


def test_entry_tag_and_untagged_requests(loader, files):
    w = loader.get_worker_context(0)
    p, q = sorted(files)[:2]
    assert w.request(p)  # no tag: 0
    assert w.request(q, tag=2**64 - 1)
    tags = {}
    for _ in range(2):
        with w.wait_get(timeout=10) as e:
            tags[e.get_filepath()] = e.tag
    assert tags == {p: 0, q: 2**64 - 1}
    with pytest.raises(ValueError):
        w.request(p, tag=-1)
    with pytest.raises(ValueError):
        w.request(p, tag=2**64)
    with pytest.raises(TypeError):
        w.request(p, tag=1.5)
    assert w.outstanding == 0


def test_get_many_entries_carry_their_tags_and_bytes(loader, files):
    w = loader.get_worker_context(1)
    paths = sorted(files)[:10]
    assert w.request_many(paths, first_tag=7) == 10
    got = []
    while len(got) < 10:
        got += w.get_many(10, timeout=10)
    for e in got:
        assert paths[e.tag - 7] == e.get_filepath()
        assert e.get_data() == files[e.get_filepath()]
        assert e.latency_ns is not None and e.latency_ns >= 0
        e.release()
    assert w.outstanding == 0


def test_get_batch_with_0_1_n_and_more_than_outstanding(loader, files):
    w = loader.get_worker_context(2)
    paths = sorted(files)[:8]
    b = w.get_batch(0)
    assert len(b) == 0 and b.ok
    b.release()
    # Nothing outstanding: an empty batch once the timeout passes.
    b = w.get_batch(4, timeout=0)
    assert len(b) == 0
    b = w.get_batch(4, timeout=0.05)
    assert len(b) == 0
    assert w.request_many(paths) == 8
    one = w.get_batch(1, timeout=10)
    assert len(one) == 1
    rest = _take_all(w, 7, max_n=100)  # asks for more than are outstanding
    assert sum(len(b) for b in rest) == 7
    assert w.outstanding == 8  # nothing released yet
    names = []
    for b in [one] + rest:
        for i in range(len(b)):
            names.append(b.path(i))
            assert b.data(i) == files[b.path(i)]
            assert bytes(b.view(i)) == files[b.path(i)]
            assert b.sizes[i] == len(files[b.path(i)])
            assert b.errors[i] == 0
        b.release()
        b.release()  # idempotent
    assert sorted(names) == paths
    assert w.outstanding == 0


def test_failed_loads_come_back_in_the_batch_with_their_tag(loader, files, tmp_path):
    w = loader.get_worker_context(0)
    good = sorted(files)[0]
    missing = str(tmp_path / "missing.bin")
    assert w.request_many([good, missing, str(tmp_path)], first_tag=10) == 3
    by_tag = {}
    for b in _take_all(w, 3):
        assert not b.ok
        for i, tag in enumerate(b.tags):
            by_tag[tag] = (b.errors[i], b.exception(i), b.sizes[i])
            if b.errors[i]:
                with pytest.raises(OSError) as ei:
                    b.data(i)
                assert ei.value.errno == b.errors[i]
                with pytest.raises(OSError):
                    b.view(i)
            else:
                assert b.data(i) == files[good]
        if any(b.errors):
            with pytest.raises(OSError):
                b.raise_for_error()
        b.release()
    assert by_tag[10][0] == 0 and by_tag[10][1] is None
    assert by_tag[11][0] == errno.ENOENT and isinstance(by_tag[11][1], FileNotFoundError)
    assert by_tag[11][1].filename == missing
    assert by_tag[12][0] == errno.EISDIR and by_tag[12][2] == 0
    assert w.outstanding == 0


def test_request_many_packs_str_bytes_and_pathlike_and_stops_at_a_bad_path(loader, files):
    import pathlib

    w = loader.get_worker_context(3)
    paths = sorted(files)[:6]
    mixed = [paths[0], os.fsencode(paths[1]), pathlib.Path(paths[2])]
    assert w.request_many(mixed, first_tag=0) == 3
    # A NUL inside ends the prefix; first path bad raises.
    assert w.request_many([paths[3], "bad\0path", paths[4]], first_tag=3) == 1
    with pytest.raises(ValueError):
        w.request_many(["bad\0path", paths[4]])
    # An empty path is refused by the library: EINVAL when it comes first.
    assert w.request_many([paths[4], "", paths[5]], first_tag=4) == 1
    with pytest.raises(OSError) as ei:
        w.request_many(["", paths[5]])
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        w.request_many([None])
    got = {}
    for b in _take_all(w, 5):
        with b:
            for i, tag in enumerate(b.tags):
                got[tag] = b.data(i)
    assert got == {t: files[paths[t]] for t in range(5)}
    assert w.outstanding == 0


def test_request_many_stops_at_a_full_queue(files):
    with asyncloader.Loader(queue_depth=4, max_file_size=1 << 20, n_workers=1) as ld:
        ld.start()
        w = ld.get_worker_context(0)
        paths = sorted(files)[:10]
        assert w.request_many(paths, first_tag=100) == 4
        assert w.request_many(paths[4:]) == 0
        tags = []
        for b in _take_all(w, 4):
            tags += b.tags
            b.release()
        assert sorted(tags) == [100, 101, 102, 103]


def test_views_keep_the_batch_alive_and_die_with_release(loader, files):
    w = loader.get_worker_context(0)
    paths = sorted(files)[:4]
    assert w.request_many(paths) == 4
    b = w.get_batch(4, timeout=10)
    while len(b) < 1:
        b = w.get_batch(4, timeout=10)
    v = b.view(0)
    want = files[b.path(0)]
    part = v[1:5]  # derived from our view: pins the batch
    with pytest.raises(BufferError):
        b.release()
    assert not b.released
    assert bytes(part) == want[1:5]
    with pytest.raises(ValueError):
        bytes(v)  # views view() returned are released even by a refused release
    assert bytes(b.view(0)) == want  # the batch is still held: new views work
    del part
    b.release()
    assert b.released
    with pytest.raises(ValueError):
        v[0]  # released with the batch: never reads a reused buffer
    with pytest.raises(ValueError):
        b.view(0)
    with pytest.raises(ValueError):
        b.data(0)
    # The rest of the requests.
    for bb in _take_all(w, 4 - len(b), max_n=4):
        bb.release()
    assert w.outstanding == 0


def test_numpy_of_a_batch_pins_it_and_a_dropped_batch_is_released_later(loader, files):
    np = pytest.importorskip("numpy")
    w = loader.get_worker_context(1)
    p = sorted(files)[0]
    assert w.request(p)
    b = w.get_batch(1, timeout=10)
    a = b.numpy(0)
    assert a.dtype == np.uint8 and not a.flags.writeable
    assert a.tobytes() == files[p]
    with pytest.raises(BufferError):
        b.release()
    del b
    gc.collect()
    assert w.outstanding == 1  # the array still reads the buffer
    assert a.tobytes() == files[p]
    del a
    gc.collect()
    assert w.outstanding == 0


def test_load_batches_tags_are_indices_and_every_byte_matches(loader, files, tmp_path):
    w = loader.get_worker_context(2)
    paths = sorted(files) + [str(tmp_path / "nope"), "x" * 5000]
    out = [None] * len(paths)
    errs = {}
    n_batches = 0
    for b in w.load_batches(iter(paths), window=16, batch=5):  # an iterator, not a list
        n_batches += 1
        assert len(b) <= 5
        for i, tag in enumerate(b.tags):
            if b.errors[i]:
                errs[tag] = b.errors[i]
            else:
                out[tag] = b.data(i)
    assert errs == {len(files): errno.ENOENT, len(files) + 1: errno.ENAMETOOLONG}
    for i, p in enumerate(sorted(files)):
        assert out[i] == files[p]
    assert n_batches >= len(paths) // 5
    assert w.outstanding == 0


def test_load_batches_refuses_to_release_under_a_live_view_and_break_releases(loader, files):
    w = loader.get_worker_context(3)
    paths = sorted(files)
    gen = w.load_batches(paths, window=16, batch=4)
    b = next(gen)
    keep = b.view(0)[2:]  # derived: the batch cannot be released
    with pytest.raises(BufferError):
        next(gen)
    assert bytes(keep) == files[b.path(0)][2:]
    del keep, b
    gc.collect()
    assert w.outstanding == 0  # in-flight requests drained, the batch released
    # Leaving early releases everything too.
    for k, b in enumerate(w.load_batches(paths, window=16, batch=4)):
        if k == 2:
            break
    del b
    gc.collect()
    assert w.outstanding == 0


def test_load_into_places_files_by_index_with_duplicates(loader, files):
    w = loader.get_worker_context(0)
    paths = sorted(files)[:20]
    paths = paths + paths[:3]  # the same file twice: two copies, two slots
    need = sum(len(files[p]) for p in paths)
    out = bytearray(need)
    spans = w.load_into(paths, out)
    assert len(spans) == len(paths)
    for p, (off, size) in zip(paths, spans):
        assert bytes(out[off : off + size]) == files[p]
    assert sorted(off for off, _ in spans) == sorted(set(off for off, _ in spans))
    with pytest.raises(ValueError, match=f"need {need} bytes"):
        w.load_into(paths, bytearray(need - 1))
    assert w.outstanding == 0


def test_batch_of_a_forked_child_is_the_parents(loader, files):
    w = loader.get_worker_context(1)
    p = sorted(files)[0]
    assert w.request(p)
    b = w.get_batch(1, timeout=10)
    pid = os.fork()
    if pid == 0:  # child: reads the parent's bytes, cannot give them back
        code = 0
        try:
            if b.data(0) != files[p]:
                code = 1
            b.release()
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert w.outstanding == 1 and b.data(0) == files[p]
    b.release()
    assert w.outstanding == 0


def test_batch_cannot_be_pickled(loader, files):
    import pickle

    w = loader.get_worker_context(0)
    assert w.request(sorted(files)[0])
    with w.get_batch(1, timeout=10) as b:
        with pytest.raises(TypeError):
            pickle.dumps(b)
        assert "1 entries, 0 failed" in repr(b)
    assert "released" in repr(b)


def test_default_window_holds_about_window_bytes_of_large_files(tmp_path):
    from asyncloader import _worker

    big = make_files(tmp_path / "big", 80, lo=256 << 10, hi=256 << 10)
    small = make_files(tmp_path / "small", 100, lo=100, hi=200)
    with asyncloader.Loader(queue_depth=32, max_file_size=1 << 20, n_workers=1) as ld:
        ld.start()
        w = ld.get_worker_context(0)
        peak = []
        for b in w.load_batches(sorted(big), batch=1):
            peak.append(w.outstanding)
            assert b.data(0) == big[b.path(0)]
        # 2 MiB / 256 KiB = 8 in flight once the first size is known (the
        # first fill is the whole queue), plus the batch in hand.
        assert max(peak) <= 32 and max(peak[30:60]) <= _worker.WINDOW_MIN + 1
        assert _worker.WINDOW_BYTES // (256 << 10) <= _worker.WINDOW_MIN
        peak = []
        for b in w.load_batches(sorted(small), batch=1):
            peak.append(w.outstanding)
        assert max(peak) == 32  # small files fill the queue
        # An explicit window is kept.
        peak = []
        for b in w.load_batches(sorted(big), window=20, batch=1):
            peak.append(w.outstanding)
        assert max(peak[30:60]) == 20
        assert w.outstanding == 0


def _handed(w, paths, tmp_path=None):
    """Requests paths, hands every batch over; [(tag, size, ticket)]."""
    assert w.request_many(paths) == len(paths)
    out = []
    while len(out) < len(paths):
        b = w.get_batch(len(paths), timeout=10)
        out += list(zip(b.tags, b.sizes, b.handoff()))
        assert b.released
    return out


def test_handoff_and_take_in_this_process(loader, files):
    w = loader.get_worker_context(0)
    paths = sorted(files)[:12]
    got = _handed(w, paths)
    assert w.outstanding == 12  # handed over, not taken: still held
    tickets = [t for _, _, t in got]
    assert all(tickets)
    need = sum(s for _, s, _ in got)
    with pytest.raises(OSError) as ei:
        loader.take(tickets, bytearray(need - 1))  # too small: nothing done
    assert ei.value.errno == errno.EINVAL and w.outstanding == 12
    out = bytearray(need)
    sizes = loader.take(tickets, out)
    assert sizes == [s for _, s, _ in got]
    off = 0
    for (tag, size, _), n in zip(got, sizes):
        assert bytes(out[off : off + n]) == files[paths[tag]]
        off += n
    assert w.outstanding == 0
    with pytest.raises(OSError) as ei:
        loader.take(tickets[:1], bytearray(1 << 20))  # taken already
    assert ei.value.errno == errno.EINVAL
    assert loader.drop_tickets(tickets) == 0


def test_handoff_taken_by_a_forked_process_and_dropped(loader, files, tmp_path):
    w = loader.get_worker_context(1)
    paths = sorted(files)[:10]
    got = _handed(w, paths)
    r, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # the taker: another process mapping the region
        ok = 0
        try:
            out = bytearray(sum(s for _, s, _ in got))
            sizes = loader.take([t for _, _, t in got], out)
            off = 0
            ok = 1
            for (tag, _, _), n in zip(got, sizes):
                ok &= bytes(out[off : off + n]) == files[paths[tag]]
                off += n
        finally:
            os.write(wr, b"1" if ok else b"0")
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1"
    assert w.outstanding == 0  # released by the other process
    got = _handed(w, paths[:4])
    assert loader.drop_tickets([t for _, _, t in got] + [0, 12345]) == 4
    assert w.outstanding == 0


def test_handoff_refuses_under_a_live_view_and_after_release(loader, files):
    w = loader.get_worker_context(2)
    assert w.request(sorted(files)[0])
    b = w.get_batch(1, timeout=10)
    keep = b.view(0)[1:]
    with pytest.raises(BufferError):
        b.handoff()
    del keep
    tickets = b.handoff()
    with pytest.raises(ValueError):
        b.handoff()
    assert loader.drop_tickets(tickets) == 1
    assert w.outstanding == 0
