"""Byte ranges and destination memory (issue 15): ``Worker.request_range``,
``Worker.request_into``, ``Worker.load_ranges``, ``Worker.read_into``,
``Loader(arena_size=...)``, ``Loader.arena``, ``Loader.register``.

Every byte is compared with ``os.pread`` of the same file, on both backends
(``backend="threads"`` is the thread pool), buffered and ``O_DIRECT``, and
every bad input is answered with its exception, nothing written where it
should not be (sentinels around every destination).
"""

import errno
import gc
import mmap
import os
import random
import time
import weakref

import pytest

import asyncloader

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy is optional
    np = None

BACKENDS = ["io_uring", "threads"]
MAX = 64 << 10  # max_file_size of most loaders here
ARENA_SIZE = 8 << 20


def _uring() -> bool:
    try:
        return bool(asyncloader.probe()["io_uring"]["available"])
    except Exception:
        return False


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "io_uring" and not _uring():
        pytest.skip("io_uring cannot be set up here")
    return request.param


def make_loader(backend, direct=False, drive="loader", qd=16, max_file_size=MAX, arena_size=ARENA_SIZE, start=True):
    ld = asyncloader.Loader(
        queue_depth=qd,
        max_file_size=max_file_size,
        n_workers=1,
        dispatch_n=1,
        idle_iters=1,
        direct=direct,
        loader_threads=1,
        backend=backend,
        drive=drive,
        arena_size=arena_size,
    )
    if start:
        ld.start()
    return ld


def pread(path, off, length):
    """What ``os.pread`` gives for ``length`` bytes at ``off`` (short at
    the end of the file)."""
    out = []
    got = 0
    with open(path, "rb") as f:
        fd = f.fileno()
        while got < length:
            b = os.pread(fd, length - got, off + got)
            if not b:
                break
            out.append(b)
            got += len(b)
    return b"".join(out)


def data_file(tmp_path, name, size, seed):
    p = tmp_path / name
    p.write_bytes(random.Random(seed).randbytes(size))
    return str(p)


def ranges(file_len, max_len):
    """Inside, across the end of and past the end of the file, length 0 to
    ``max_len``, aligned and odd offsets."""
    v = [
        (0, 0),
        (0, 1),
        (0, min(file_len, max_len)),
        (1, 4095),
        (4095, 2),
        (4096, 4096),
        (file_len - 1, 1),
        (file_len - 10, 100),
        (file_len, 10),
        (file_len + 5000, 10),
        (12345, max_len),
        (file_len - 7, 0),
    ]
    rng = random.Random(15)
    for _ in range(40):
        v.append((rng.randrange(file_len + 100), rng.randrange(max_len + 1)))
    return v


def fetch(worker, timeout=30):
    b = worker.get_batch(1, timeout=timeout)
    assert len(b) == 1, "nothing delivered in time"
    return b


# -- ranges into entry buffers ---------------------------------------------------


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
@pytest.mark.parametrize("drive", ["loader", "worker"])
def test_ranges_match_pread(tmp_path, backend, drive, direct):
    path = data_file(tmp_path, "data", 300_001, 7)
    want = ranges(300_001, MAX)
    with make_loader(backend, direct=direct, drive=drive) as ld:
        w = ld.worker(0)
        # load_ranges: in the order of the items, whatever the completion order.
        got = list(w.load_ranges([(path, o, n) for o, n in want]))
        assert len(got) == len(want)
        for (o, n), data in zip(want, got):
            assert data == pread(path, o, n), f"range {o}+{n}"
        # One by one: Entry.offset, and the zero-copy accessors of Entry and
        # Batch (with O_DIRECT the data starts inside the aligned span read).
        for i, (o, n) in enumerate(want):
            assert w.request_range(path, o, n, tag=i) is True
            exp = pread(path, o, n)
            if i % 2:
                with fetch(w) as b:
                    assert b.tags == [i] and b.errors == [0]
                    assert b.offset(0) == o
                    assert b.sizes[0] == len(exp)
                    assert b.data(0) == exp
                    v = b.view(0)
                    assert bytes(v) == exp
                    if np is not None:
                        assert b.numpy(0).tobytes() == exp
                    del v
            else:
                e = w.wait_get(timeout=30)
                with e:
                    assert e.error == 0 and e.tag == i
                    assert e.offset == o
                    assert e.size == len(exp)
                    assert e.get_data() == exp
                    with e.memoryview() as v:
                        assert bytes(v) == exp
        if direct:
            assert ld.stats()["direct_reads"] > 0
        # Whole files load as before beside ranges (this one is too large).
        assert w.request(path)
        e = w.wait_get(timeout=30)
        assert e.error == errno.EFBIG and e.offset == 0
        e.release()


def test_load_ranges_raises_a_failed_range_in_its_turn(tmp_path, backend):
    path = data_file(tmp_path, "f", 10_000, 1)
    items = [(path, 0, 10), (path, 5, 5), (str(tmp_path / "missing"), 0, 10), (path, 9_990, 100)]
    with make_loader(backend) as ld:
        w = ld.worker(0)
        it = w.load_ranges(items, window=2)
        assert next(it) == pread(path, 0, 10)
        assert next(it) == pread(path, 5, 5)
        with pytest.raises(FileNotFoundError):
            next(it)
        assert w.outstanding == 0  # everything in flight was taken back
        # A range that cannot even be requested fails in its turn too.
        it = w.load_ranges([(path, 0, 1), (path, 0, MAX + 1)])
        assert next(it) == pread(path, 0, 1)
        with pytest.raises(OSError) as ei:
            next(it)
        assert ei.value.errno == errno.EFBIG
        # Many more ranges than the queue holds, in order.
        many = [(path, i * 7 % 10_000, 1 + i % 300) for i in range(500)]
        assert list(w.load_ranges(many, window=4)) == [pread(path, o, n) for _, o, n in many]
        assert w.outstanding == 0


# -- destinations -----------------------------------------------------------------


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
def test_request_into_the_arena(tmp_path, backend, direct):
    size = 5_000_003
    path = data_file(tmp_path, "big", size, 11)
    disk = pread(path, 0, size)
    with make_loader(backend, direct=direct) as ld:
        w = ld.worker(0)
        arena = ld.arena
        assert isinstance(arena, memoryview) and not arena.readonly
        assert len(arena) == ld.arena_size == ARENA_SIZE
        assert len(w.arena) == ARENA_SIZE
        arena[:] = b"\xa5" * len(arena)
        # The whole file, at an aligned offset of the arena.
        assert w.request_into(path, 0, size, asyncloader.ARENA, 4096, tag=1)
        with fetch(w) as b:
            assert b.errors == [0] and b.sizes == [size] and b.tags == [1]
            assert b.data(0) == disk
            assert bytes(b.view(0)) == disk
            if np is not None:
                assert b.numpy(0).tobytes() == disk
        assert arena[4096 : 4096 + size] == disk
        assert arena[:4096] == b"\xa5" * 4096
        assert arena[4096 + size :] == b"\xa5" * (len(arena) - 4096 - size)
        # An odd range across the end of the file, at an odd offset: short.
        assert w.request_into(path, 4_000_001, 3_000_000, asyncloader.ARENA, 3)
        e = w.wait_get(timeout=30)
        with e:
            assert e.error == 0 and e.offset == 4_000_001
            assert e.get_data() == disk[4_000_001:]
            with e.memoryview() as v:
                assert v == disk[4_000_001:]
        # The arena is the same memory seen through the worker.
        assert w.arena[3 : 3 + size - 4_000_001] == disk[4_000_001:]


def test_loader_without_arena(backend):
    with make_loader(backend, arena_size=0) as ld:
        assert ld.arena is None and ld.worker(0).arena is None
        assert ld.arena_size == 0 and ld.config()["arena_size"] == 0
        with pytest.raises(OSError) as ei:
            ld.worker(0).request_into("/etc/hostname", 0, 1, asyncloader.ARENA)
        assert ei.value.errno == errno.EINVAL


def test_arena_views_keep_the_loader_without_a_cycle(backend):
    ld = make_loader(backend)
    ref = weakref.ref(ld)
    v = ld.arena
    v[:4] = b"abcd"
    ld.close()
    del ld
    assert ref() is not None  # the view keeps the mapping
    assert v[:4] == b"abcd"
    del v
    assert ref() is None  # freed by reference counting, no gc needed


@pytest.mark.parametrize("drive", ["loader", "worker"])
@pytest.mark.parametrize("kind", ["bytearray", "numpy", "mmap"])
def test_request_into_registered_memory(tmp_path, backend, drive, kind):
    if kind == "numpy" and np is None:
        pytest.skip("numpy is not installed")
    size = 1_000_003
    path = data_file(tmp_path, "f", size, 5)
    disk = pread(path, 0, size)
    with make_loader(backend, drive=drive) as ld:
        w = ld.worker(0)
        if kind == "bytearray":
            buf = bytearray(b"\x5a" * (size + 100))
            raw = buf
        elif kind == "mmap":
            buf = raw = mmap.mmap(-1, size + 100)
            buf[:] = b"\x5a" * (size + 100)
        else:
            buf = np.full(size + 100, 0x5A, dtype=np.uint8)
            raw = buf.data
        mem = ld.register(buf)
        assert 1 <= mem <= 16
        assert w.request_into(path, 0, size, mem, 50, tag=7)
        with fetch(w) as b:
            assert b.errors == [0] and b.sizes == [size]
            assert b.view(0) == disk
            assert b.data(0) == disk
        assert bytes(raw[:50]) == b"\x5a" * 50
        assert bytes(raw[50 : 50 + size]) == disk
        assert bytes(raw[50 + size :]) == b"\x5a" * 50
        if kind == "bytearray":
            with pytest.raises(BufferError):
                buf.append(0)  # pinned while registered
        if kind == "mmap":
            with pytest.raises(BufferError):
                buf.close()
        ld.unregister(mem)
        if kind == "bytearray":
            buf.append(0)  # free again
        if kind == "mmap":
            buf.close()
        with pytest.raises(OSError) as ei:
            w.request_into(path, 0, 10, mem, 0)
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(OSError) as ei:
            ld.unregister(mem)
        assert ei.value.errno == errno.EINVAL


def test_views_of_registered_memory_keep_it_after_unregister(tmp_path, backend):
    path = data_file(tmp_path, "f", 10_000, 2)
    with make_loader(backend) as ld:
        w = ld.worker(0)
        buf = bytearray(20_000)
        mem = ld.register(buf)
        assert w.request_into(path, 0, 10_000, mem)
        e = w.wait_get(timeout=30)
        v = e.memoryview()
        sub = v[:100]  # derived: pins the entry (and the registered buffer)
        with pytest.raises(BufferError):
            e.release()
        ld.unregister(mem)
        with pytest.raises(BufferError):
            buf.append(0)  # the view still holds the export
        assert bytes(sub) == pread(path, 0, 100)
        del sub
        e.release()
        with pytest.raises(ValueError):
            bytes(v)  # released with its entry
        del v, e
        gc.collect()
        buf.append(0)


def test_register_refuses_what_it_cannot_pin(backend):
    with make_loader(backend) as ld:
        with pytest.raises(TypeError):
            ld.register(b"read-only bytes")
        with pytest.raises(ValueError):
            ld.register(bytearray())
        if np is not None:
            with pytest.raises(ValueError):
                ld.register(np.zeros((10, 10), dtype=np.uint8)[:, ::2])  # not contiguous
        ids = [ld.register(bytearray(10)) for _ in range(16)]
        assert sorted(ids) == list(range(1, 17))
        with pytest.raises(OSError) as ei:
            ld.register(bytearray(10))
        assert ei.value.errno == errno.ENOSPC
        for i in ids:
            ld.unregister(i)
    # Closing the loader gives registered buffers back.
    with make_loader(backend) as ld:
        buf = bytearray(10)
        ld.register(buf)
    buf.append(1)


@pytest.mark.parametrize("drive", ["loader", "worker"])
def test_file_larger_than_max_file_size_into_registered_memory(tmp_path, backend, drive):
    size = 20 << 20
    path = data_file(tmp_path, "huge", size, 20)
    disk = pread(path, 0, size)
    with make_loader(backend, drive=drive, max_file_size=1 << 20, arena_size=0) as ld:
        w = ld.worker(0)
        # As a whole file or a range into a buffer it is too large.
        assert w.request(path)
        e = w.wait_get(timeout=30)
        assert e.error == errno.EFBIG
        e.release()
        with pytest.raises(OSError) as ei:
            w.request_range(path, 0, size)
        assert ei.value.errno == errno.EFBIG
        # read_into a buffer (registered for the call).
        buf = bytearray(size)
        assert w.read_into(path, buf) == size
        assert buf == disk
        buf.append(0)  # unregistered again
        # read_into a registered numpy array, a range at an offset.
        if np is not None:
            arr = np.zeros(size, dtype=np.uint8)
            mem = ld.register(arr)
            assert w.read_into(path, mem, dest_offset=1000, offset=3 << 20) == size - (3 << 20)
            assert arr[1000 : 1000 + size - (3 << 20)].tobytes() == disk[3 << 20 :]
            assert not arr[:1000].any() and not arr[1000 + size - (3 << 20) :].any()
            ld.unregister(mem)
        # Too small a destination: EINVAL, nothing written.
        small = bytearray(b"\x01" * (size - 1))
        with pytest.raises(OSError) as ei:
            w.read_into(path, small)
        assert ei.value.errno == errno.EINVAL
        assert small == b"\x01" * (size - 1)
        with pytest.raises(FileNotFoundError):
            w.read_into(str(tmp_path / "missing"), bytearray(10), length=10)
        assert w.outstanding == 0


# -- bad input ------------------------------------------------------------------------


def test_bad_ranges_and_destinations_raise_and_write_nothing(tmp_path, backend):
    path = data_file(tmp_path, "f", 100_000, 3)
    with make_loader(backend) as ld:
        w = ld.worker(0)
        arena = ld.arena
        arena[:] = b"\xc3" * len(arena)
        mine = bytearray(b"\x5a" * 1000)
        mem = ld.register(mine)
        # Not unsigned 64-bit integers: ValueError / TypeError, as every
        # count of the package.
        for off, n in [(-1, 10), (0, -1), (1 << 64, 1), (0, 1 << 64)]:
            with pytest.raises(ValueError):
                w.request_range(path, off, n)
            with pytest.raises(ValueError):
                w.request_into(path, off, n, asyncloader.ARENA)
        with pytest.raises(ValueError):
            w.request_into(path, 0, 1, asyncloader.ARENA, -1)
        with pytest.raises(ValueError):
            w.request_into(path, 0, 1, -1)
        for bad in (1.5, "1", True, None):
            with pytest.raises(TypeError):
                w.request_range(path, bad, 1)
            with pytest.raises(TypeError):
                w.request_into(path, 0, 1, asyncloader.ARENA, bad)
        # Paths as for request: a NUL byte, too long.
        for p in (b"a\0b", "a\0b"):
            with pytest.raises(ValueError):
                w.request_range(p, 0, 1)
            with pytest.raises(ValueError):
                w.request_into(p, 0, 1, asyncloader.ARENA)
        with pytest.raises(OSError) as ei:
            w.request_range("/" + "x" * 5000, 0, 1)
        assert ei.value.errno == errno.ENAMETOOLONG
        # offset + length past the largest file offset: the library's EINVAL.
        for off, n in [((1 << 64) - 1, 2), ((1 << 63) - 1, 1)]:
            with pytest.raises(OSError) as ei:
                w.request_range(path, off, n)
            assert ei.value.errno == errno.EINVAL
            with pytest.raises(OSError) as ei:
                w.request_into(path, off, n, asyncloader.ARENA)
            assert ei.value.errno == errno.EINVAL
        # Longer than an entry buffer, without a destination: EFBIG.
        with pytest.raises(OSError) as ei:
            w.request_range(path, 0, MAX + 1)
        assert ei.value.errno == errno.EFBIG
        assert ei.value.filename == path
        # Destinations outside their memory, or no memory at all: EINVAL.
        alen = len(arena)
        for dest, doff, n in [
            (asyncloader.ARENA, alen - 10, 11),
            (asyncloader.ARENA, (1 << 64) - 1, 1),
            (asyncloader.ARENA, 0, alen + 1),
            (mem, 990, 11),
            (mem, 0, 1001),
            (mem + 1, 0, 10),
            ((1 << 32) - 2, 0, 10),
        ]:
            with pytest.raises(OSError) as ei:
                w.request_into(path, 0, n, dest, doff)
            assert ei.value.errno == errno.EINVAL, (dest, doff, n)
        assert w.outstanding == 0, "a refused request took an entry"
        # Failures of the file itself come on the entry, and write nothing.
        for p, code in [(str(tmp_path / "missing"), errno.ENOENT), (str(tmp_path), errno.EISDIR)]:
            assert w.request_range(p, 0, 10)
            e = w.wait_get(timeout=30)
            assert e.error == code
            e.release()
            assert w.request_into(p, 0, 10, asyncloader.ARENA, 0)
            with fetch(w) as b:
                assert b.errors == [code]
                with pytest.raises(OSError):
                    b.data(0)
            assert w.request_into(p, 0, 10, mem, 0)
            with fetch(w) as b:
                assert b.errors == [code]
        assert arena.tobytes() == b"\xc3" * alen
        assert mine == b"\x5a" * 1000


def test_a_full_queue_returns_false(tmp_path, backend):
    path = data_file(tmp_path, "f", 10_000, 4)
    with make_loader(backend, qd=4) as ld:
        w = ld.worker(0)
        assert all(w.request_range(path, i, 10, tag=i) for i in range(4))
        assert w.request_range(path, 0, 10) is False
        assert w.request_into(path, 0, 10, asyncloader.ARENA) is False
        got = []
        while len(got) < 4:
            with w.get_batch(4, timeout=30) as b:
                got += [(t, b.data(i)) for i, t in enumerate(b.tags)]
        assert sorted(got) == [(i, pread(path, i, 10)) for i in range(4)]
        assert w.request_into(path, 0, 10, asyncloader.ARENA) is True
        with fetch(w) as b:
            assert b.data(0) == pread(path, 0, 10)


# -- a loader process -------------------------------------------------------------------


def test_loader_process_registered_memory_is_exdev_the_arena_works(tmp_path, backend):
    size = 3_000_001
    path = data_file(tmp_path, "f", size, 9)
    disk = pread(path, 0, size)
    with make_loader(backend, drive="loader", start=False) as ld:
        ld.spawn_loader()
        w = ld.worker(0)
        # Requests check where the loads run once the loader process said so.
        deadline = time.monotonic() + 10
        while ld.stats()["loader_pid"] in (0, os.getpid()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ld.stats()["loader_pid"] not in (0, os.getpid())
        mine = bytearray(size)
        mem = ld.register(mine)
        with pytest.raises(OSError) as ei:
            w.request_into(path, 0, size, mem)
        assert ei.value.errno == errno.EXDEV
        with pytest.raises(OSError) as ei:
            w.read_into(path, bytearray(size))
        assert ei.value.errno == errno.EXDEV
        # In a table: the ranges before it are queued, it raises EXDEV.
        table = asyncloader.pack_ranges([(0, 10, asyncloader.ARENA, 0), (0, 10, mem, 0)])
        assert w.request_ranges(path, table) == 1
        with pytest.raises(OSError) as ei:
            w.request_ranges(path, table, start=1)
        assert ei.value.errno == errno.EXDEV
        with fetch(w) as b:
            assert b.tags == [0] and b.data(0) == disk[:10]
        assert mine == bytes(size)
        # The arena is shared with the loader process.
        assert w.read_into(path, asyncloader.ARENA, dest_offset=100) == size
        assert ld.arena[100 : 100 + size] == disk
        # Ranges into entry buffers work as ever.
        assert list(w.load_ranges([(path, 5, 1000), (path, size - 3, 10)])) == [
            disk[5:1005],
            disk[size - 3 :],
        ]
        ld.unregister(mem)


# -- many ranges of one file in one call: pack_ranges, request_ranges ----------------


def take(worker, n, timeout=30):
    """``{tag: (error, bytes)}`` of the next ``n`` entries, released."""
    got = {}
    while len(got) < n:
        with worker.get_batch(n - len(got), timeout=timeout) as b:
            assert len(b), "nothing delivered in time"
            for i, t in enumerate(b.tags):
                assert t not in got, f"tag {t} twice"
                got[t] = (b.errors[i], b.data(i) if not b.errors[i] else None)
    return got


def request_all(worker, path, table, n_records, room, first_tag=0):
    """Every record of ``table`` through ``request_ranges`` windows of at
    most ``room`` in flight; ``{tag: (error, bytes)}``."""
    got = {}
    j = 0
    while j < n_records:
        k = worker.request_ranges(path, table, first_tag=first_tag, start=j, count=room)
        assert k > 0
        j += k
        got.update(take(worker, k))
    return got


@pytest.mark.parametrize("drive", ["loader", "worker"])
def test_request_ranges_into_entry_buffers_match_pread(tmp_path, backend, drive):
    path = data_file(tmp_path, "data", 300_001, 8)
    want = ranges(300_001, MAX)
    table = asyncloader.pack_ranges(want)
    assert isinstance(table, bytearray) and len(table) == 32 * len(want)
    with make_loader(backend, drive=drive) as ld:
        w = ld.worker(0)
        # Windows of every size up to the queue, tags the records' indices.
        for room in (1, 5, 16):
            got = request_all(w, path, table, len(want), room)
            assert sorted(got) == list(range(len(want)))
            for j, (o, n) in enumerate(want):
                assert got[j] == (0, pread(path, o, n)), f"record {j}: {o}+{n}"
        # The same records as bytes, and as numpy tables: (n, 4) uint64 and
        # the structured layout of al_range.
        tables = [bytes(table)]
        if np is not None:
            a = np.zeros((len(want), 4), np.uint64)
            a[:, 0] = [o for o, _ in want]
            a[:, 1] = [n for _, n in want]
            a[:, 3] = asyncloader.NO_DEST
            s = np.zeros(
                len(want),
                dtype=[("offset", "<u8"), ("len", "<u8"), ("dst_offset", "<u8"), ("mem", "<u4"), ("reserved", "<u4")],
            )
            s["offset"], s["len"], s["mem"] = a[:, 0], a[:, 1], asyncloader.NO_DEST
            assert a.tobytes() == s.tobytes() == bytes(table)
            ro = a.copy()
            ro.flags.writeable = False
            tables += [a, s, ro]
        for t in tables:
            got = request_all(w, path, t, len(want), 16, first_tag=1000)
            assert got == {1000 + j: (0, pread(path, o, n)) for j, (o, n) in enumerate(want)}
        assert w.outstanding == 0


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
def test_request_ranges_into_the_arena_and_registered_memory(tmp_path, backend, direct):
    size = 2_000_003
    path = data_file(tmp_path, "big", size, 12)
    disk = pread(path, 0, size)
    rng = random.Random(3)
    # Members of a "shard": ranges larger than max_file_size too (no limit
    # with a destination), packed at odd places of the arena.
    spans = [(0, 100), (1, MAX * 3), (size - 5, 100), (size + 10, 7), (12_345, 0)]
    spans += [(rng.randrange(size), rng.randrange(200_000)) for _ in range(40)]
    items, place = [], 5
    for o, n in spans:
        items.append((o, n, asyncloader.ARENA, place))
        place += n + 3
    assert place < ARENA_SIZE
    with make_loader(backend, direct=direct) as ld:
        w = ld.worker(0)
        arena = ld.arena
        arena[:] = b"\xa5" * len(arena)
        got = request_all(w, path, asyncloader.pack_ranges(items), len(items), 16)
        mask = bytearray(b"\xa5" * len(arena))
        for j, (o, n, _m, at) in enumerate(items):
            exp = disk[o : o + n]
            assert got[j] == (0, exp), f"record {j}"
            assert arena[at : at + len(exp)] == exp
            mask[at : at + len(exp)] = exp
        assert arena.tobytes() == bytes(mask), "written outside the spans"
        # Registered memory, and a mix with entry buffers, in one table.
        mine = bytearray(b"\x5a" * 1000)
        mem = ld.register(mine)
        mixed = [(10, 100, mem, 0), (20, 50), (30, 900, mem, 100), (size - 1, 10, asyncloader.NO_DEST, 123)]
        got = request_all(w, path, asyncloader.pack_ranges(mixed), len(mixed), 16)
        assert got == {
            0: (0, disk[10:110]),
            1: (0, disk[20:70]),
            2: (0, disk[30:930]),
            3: (0, disk[size - 1 :]),
        }
        assert mine == disk[10:110] + disk[30:930]
        ld.unregister(mem)


def test_request_ranges_partial_when_the_queue_is_full(tmp_path, backend):
    path = data_file(tmp_path, "f", 10_000, 4)
    items = [(i * 100, 10 + i) for i in range(10)]
    table = asyncloader.pack_ranges(items)
    with make_loader(backend, qd=4) as ld:
        w = ld.worker(0)
        assert w.request_ranges(path, table) == 4  # a prefix: the queue holds 4
        assert w.request_ranges(path, table, start=4) == 0  # full: 0, no error
        assert w.request_range(path, 0, 1) is False
        got = take(w, 4)
        assert got == {j: (0, pread(path, *items[j])) for j in range(4)}
        # The rest after releasing, from where it stopped.
        assert w.request_ranges(path, table, start=4) == 4
        got = take(w, 4)
        assert w.request_ranges(path, table, start=8) == 2
        got.update(take(w, 2))
        assert got == {j: (0, pread(path, *items[j])) for j in range(4, 10)}
        # Half the queue held elsewhere: the prefix is what fits.
        assert w.request_range(path, 0, 1, tag=99) and w.request_range(path, 0, 1, tag=98)
        assert w.request_ranges(path, table, start=3) == 2
        assert sorted(take(w, 4)) == [3, 4, 98, 99]
        assert w.outstanding == 0


def test_request_ranges_stops_at_a_bad_range(tmp_path, backend):
    path = data_file(tmp_path, "f", 100_000, 5)
    with make_loader(backend) as ld:
        w = ld.worker(0)
        arena = ld.arena
        arena[:] = b"\xc3" * len(arena)
        alen = len(arena)
        bads = [
            ((0, MAX + 1), errno.EFBIG),  # longer than an entry buffer
            (((1 << 63) - 1, 1), errno.EINVAL),  # past the largest file offset
            ((0, 10, asyncloader.ARENA, alen - 5), errno.EINVAL),  # outside the arena
            ((0, 10, 7, 0), errno.EINVAL),  # no such memory
        ]
        for bad, code in bads:
            items = [(0, 10), (100, 10, asyncloader.ARENA, 0), (200, 10), bad, (300, 10), (400, 10)]
            table = asyncloader.pack_ranges(items)
            # The ranges before it are queued, and the count says so.
            assert w.request_ranges(path, table, first_tag=50) == 3
            # From there, the bad one raises with the library's errno.
            with pytest.raises(OSError) as ei:
                w.request_ranges(path, table, first_tag=50, start=3)
            assert ei.value.errno == code, bad
            assert ei.value.filename == path
            assert "record 3" in str(ei.value)
            # Past it, the rest.
            assert w.request_ranges(path, table, first_tag=50, start=4) == 2
            got = take(w, 5)
            assert got == {
                50: (0, pread(path, 0, 10)),
                51: (0, pread(path, 100, 10)),
                52: (0, pread(path, 200, 10)),
                54: (0, pread(path, 300, 10)),
                55: (0, pread(path, 400, 10)),
            }
            assert arena[:10] == pread(path, 100, 10)
            arena[:10] = b"\xc3" * 10
        assert arena.tobytes() == b"\xc3" * alen, "a refused range wrote"
        assert w.outstanding == 0


def test_request_ranges_refuses_a_record_with_reserved_bits(tmp_path, backend):
    import struct

    path = data_file(tmp_path, "f", 1000, 6)
    table = bytearray(asyncloader.pack_ranges([(0, 10), (10, 10), (20, 10)]))
    struct.pack_into("=I", table, 32 + 28, 1)  # record 1: reserved = 1
    with make_loader(backend) as ld:
        w = ld.worker(0)
        assert w.request_ranges(path, table) == 1
        with pytest.raises(OSError) as ei:
            w.request_ranges(path, table, start=1)
        assert ei.value.errno == errno.EINVAL
        # mem = NO_DEST with reserved bits: still refused, nothing queued.
        struct.pack_into("=II", table, 32 + 24, asyncloader.NO_DEST, 0x8000_0000)
        with pytest.raises(OSError) as ei:
            w.request_ranges(path, table, start=1)
        assert ei.value.errno == errno.EINVAL
        assert w.request_ranges(path, table, start=2) == 1
        assert take(w, 2) == {0: (0, pread(path, 0, 10)), 2: (0, pread(path, 20, 10))}
        assert w.outstanding == 0


def test_request_ranges_start_count_and_the_table(tmp_path, backend):
    path = data_file(tmp_path, "f", 10_000, 7)
    items = [(i * 10, 5) for i in range(8)]
    table = asyncloader.pack_ranges(items)
    with make_loader(backend) as ld:
        w = ld.worker(0)
        assert w.request_ranges(path, table, start=2, count=3) == 3
        assert sorted(take(w, 3)) == [2, 3, 4]
        # count is cut to the records there are, as a slice; 0 and the end
        # request nothing.
        assert w.request_ranges(path, table, start=6, count=100) == 2
        assert sorted(take(w, 2)) == [6, 7]
        assert w.request_ranges(path, table, start=3, count=0) == 0
        assert w.request_ranges(path, table, start=8) == 0
        assert w.request_ranges(path, bytearray()) == 0
        # Tags: first_tag + the record's index in the table, modulo 2**64.
        assert w.request_ranges(path, table, first_tag=(1 << 64) - 2, start=1, count=3) == 3
        assert sorted(take(w, 3)) == [0, 1, (1 << 64) - 1]
        # A slice of the table is a table too (tags count from the slice).
        assert w.request_ranges(path, memoryview(table)[5 * 32 :], first_tag=5) == 3
        assert take(w, 3) == {5 + j: (0, pread(path, *items[5 + j])) for j in range(3)}
        # Bad arguments: ValueError / TypeError, nothing queued.
        with pytest.raises(ValueError):
            w.request_ranges(path, table, start=9)
        with pytest.raises(ValueError):
            w.request_ranges(path, table, start=-1)
        with pytest.raises(ValueError):
            w.request_ranges(path, table, count=-1)
        with pytest.raises(TypeError):
            w.request_ranges(path, table, start=1.0)
        with pytest.raises(ValueError):
            w.request_ranges(path, table, first_tag=-1)
        with pytest.raises(ValueError):
            w.request_ranges(path, table[:-1])  # not whole records
        with pytest.raises(TypeError):
            w.request_ranges(path, "a" * 32)  # not a buffer
        with pytest.raises(TypeError):
            w.request_ranges(path, items)  # a list: pack it first
        with pytest.raises(ValueError):
            w.request_ranges("a\0b", table)
        with pytest.raises(OSError) as ei:
            w.request_ranges("/" + "x" * 5000, table)
        assert ei.value.errno == errno.ENAMETOOLONG
        if np is not None:
            with pytest.raises(ValueError):
                w.request_ranges(path, np.zeros((4, 8), np.uint64)[:, ::2])  # not contiguous
        assert w.outstanding == 0
        # The table is read in place, not kept: a bytearray can grow after.
        table += asyncloader.pack_ranges([(0, 1)])
        assert w.request_ranges(path, table, start=8) == 1
        assert take(w, 1) == {8: (0, pread(path, 0, 1))}


def test_pack_ranges_checks_every_item():
    t = asyncloader.pack_ranges([(1, 2), (3, 4, asyncloader.ARENA, 5), (6, 7, 3, 8)])
    rec = [t[i : i + 32] for i in range(0, len(t), 32)]
    import struct

    assert [struct.unpack("=QQQII", r) for r in rec] == [
        (1, 2, 0, asyncloader.NO_DEST, 0),
        (3, 4, 5, 0, 0),
        (6, 7, 8, 3, 0),
    ]
    assert asyncloader.pack_ranges([]) == bytearray()
    assert asyncloader.pack_ranges(iter([(0, 1)])) == asyncloader.pack_ranges([(0, 1)])
    for bad, exc in [
        ([(1,)], ValueError),
        ([(1, 2, 3)], ValueError),
        ([(-1, 2)], ValueError),
        ([(0, 1 << 64)], ValueError),
        ([(0, 1, 1 << 32, 0)], ValueError),
        ([(0, 1, 0, -1)], ValueError),
        ([(0, 1.5)], TypeError),
        ([(True, 1)], TypeError),
        ([(0, 1), (0, "1")], TypeError),
    ]:
        with pytest.raises(exc) as ei:
            asyncloader.pack_ranges(bad)
        assert f"item {len(bad) - 1}" in str(ei.value)


def test_load_ranges_packs_runs_of_one_path(tmp_path, backend, monkeypatch):
    a = data_file(tmp_path, "a", 50_000, 1)
    b = data_file(tmp_path, "b", 50_000, 2)
    rng = random.Random(9)
    items = []
    for k in range(300):
        # Runs of one path of every length, the path as str, bytes, Path.
        p = a if (k // rng.choice([1, 3, 7])) % 2 else b
        p = [p, os.fsencode(p), type(tmp_path)(p)][k % 3 if k % 11 == 0 else 0]
        items.append((p, rng.randrange(50_100), rng.randrange(2000)))
    items[17] = (a, 0, MAX + 1)  # refused by the library: EFBIG in its turn
    items[40] = (a, -1, 10)  # not a range: ValueError in its turn
    items[41] = (a, "0", 10)  # TypeError
    items[42] = ("a\0b", 0, 10)  # ValueError
    items[43] = (str(tmp_path / "missing"), 0, 10)  # FileNotFoundError
    lib = asyncloader._ffi.lib()

    def check(window):
        out = []
        it = w.load_ranges(iter(items), window=window)
        for k in range(len(items)):
            try:
                out.append(next(it))
            except (OSError, ValueError, TypeError) as e:
                out.append(type(e))
                it = w.load_ranges(iter(items[k + 1 :]), window=window)  # go on after it
        exp = []
        for k, (p, o, n) in enumerate(items):
            exp.append(
                {17: OSError, 40: ValueError, 41: TypeError, 42: ValueError, 43: FileNotFoundError}.get(k)
                or pread(os.fsdecode(p), o, n)
            )
        assert out == exp
        assert w.outstanding == 0

    with make_loader(backend) as ld:
        w = ld.worker(0)
        for window in (1, 3, 16):
            check(window)
        # A library without al_worker_request_ranges: one call per range.
        monkeypatch.setattr(lib, "al_worker_request_ranges", None)
        check(5)
        with pytest.raises(NotImplementedError):
            w.request_ranges(a, asyncloader.pack_ranges([(0, 1)]))


def test_load_ranges_queues_many_ranges_per_call(tmp_path, backend, monkeypatch):
    path = data_file(tmp_path, "f", 100_000, 3)
    items = [(path, i * 37 % 99_000, 1 + i % 1000) for i in range(2000)]
    lib = asyncloader._ffi.lib()
    real = lib.al_worker_request_ranges
    calls = []

    def counting(h, p, plen, addr, n, first_tag, acc):
        calls.append(n)
        return real(h, p, plen, addr, n, first_tag, acc)

    monkeypatch.setattr(lib, "al_worker_request_ranges", counting)
    with make_loader(backend, qd=64) as ld:
        w = ld.worker(0)
        assert list(w.load_ranges(items)) == [pread(path, o, n) for _, o, n in items]
        # Room comes back one yielded item at a time: a call waits for 16.
        assert sum(calls) >= len(items) and len(calls) <= len(items) // 16 + 40, calls
