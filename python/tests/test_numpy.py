"""``Entry.numpy()``: a zero-copy read-only array that keeps the entry held."""

import gc

import pytest

np = pytest.importorskip("numpy")


def _one(loader, files, worker=0):
    w = loader.get_worker_context(worker)
    p = next(iter(files))
    assert w.request(p)
    return w, p, w.wait_get(timeout=10)


def test_numpy_is_a_readonly_uint8_view_of_every_byte(loader, files):
    w = loader.get_worker_context(0)
    assert w.request_many(list(files)[:16]) == 16
    for _ in range(16):
        with w.wait_get(timeout=10) as e:
            a = e.numpy()
            assert a.dtype == np.uint8 and a.ndim == 1 and not a.flags.writeable
            assert a.tobytes() == files[e.get_filepath()]
            with pytest.raises(ValueError):
                a[:1] = 0  # read-only
            del a
    assert w.outstanding == 0


def test_release_with_a_live_array_refuses_and_keeps_the_data(loader, files):
    w, p, e = _one(loader, files)
    a = e.numpy()
    b = a[3:9]  # a view of the view
    with pytest.raises(BufferError):
        e.release()
    assert not e.released and w.outstanding == 1
    assert b.tobytes() == files[p][3:9]
    del a
    with pytest.raises(BufferError):
        e.release()  # b still pins it
    del b
    e.release()
    assert e.released and w.outstanding == 0
    with pytest.raises(ValueError):
        e.numpy()


def test_collected_entry_waits_for_its_arrays(loader, files):
    w, p, e = _one(loader, files)
    a = e.numpy()
    del e
    gc.collect()
    assert w.outstanding == 1, "released while an array still reads the buffer"
    # Loading more through the same worker must not touch a's bytes.
    others = [q for q in files if q != p][:8]
    assert w.request_many(others) == len(others)
    for _ in others:
        w.wait_get(timeout=10).release()
    assert a.tobytes() == files[p]
    del a
    gc.collect()
    assert w.outstanding == 0


def test_empty_and_failed_entries(loader, files, tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    w = loader.get_worker_context(0)
    w.request(str(empty))
    with w.wait_get(timeout=10) as e:
        a = e.numpy()
        assert a.size == 0 and a.dtype == np.uint8
        del a
    w.request(str(tmp_path / "missing"))
    with w.wait_get(timeout=10) as e:
        with pytest.raises(FileNotFoundError):
            e.numpy()


# -- Worker.load_into: one copy, into the caller's memory ---------------------


def test_load_into_packs_every_file_and_says_where(loader, files):
    w = loader.get_worker_context(1)
    paths = list(files)[:50] + [list(files)[0]]  # a path twice
    total = sum(len(files[p]) for p in paths)
    for out in (bytearray(total + 7), np.zeros(total, dtype=np.uint8)):
        where = w.load_into(paths, out)
        assert len(where) == len(paths)
        spans = sorted(where)
        for (o1, n1), (o2, _n2) in zip(spans, spans[1:]):
            assert o1 + n1 <= o2, "overlapping copies"
        for p, (off, n) in zip(paths, where):
            assert bytes(out[off : off + n]) == files[p]
        assert w.outstanding == 0
    assert w.load_into([], bytearray()) == []


def test_load_into_too_small_fails_clearly_and_loses_no_entry(loader, files):
    w = loader.get_worker_context(2)
    paths = list(files)[:20]
    total = sum(len(files[p]) for p in paths)
    out = bytearray(total // 2)
    with pytest.raises(ValueError, match=f"need {total} bytes"):
        w.load_into(paths, out)
    assert w.outstanding == 0
    # The worker goes on.
    assert len(w.load_into(paths, bytearray(total))) == len(paths)


def test_load_into_raises_the_first_failed_load_after_releasing_all(loader, files, tmp_path):
    w = loader.get_worker_context(3)
    paths = list(files)[:5] + [str(tmp_path / "missing")]
    with pytest.raises(FileNotFoundError):
        w.load_into(paths, bytearray(1 << 20))
    assert w.outstanding == 0
    with pytest.raises(TypeError):
        w.load_into(paths, b"read-only")
