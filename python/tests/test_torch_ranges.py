"""asyncloader.torch.RangeDataset and tar_members with real PyTorch (CPU):
samples are members of generated tar shards, every sample's bytes compared
with what tarfile extracts. Skipped when torch is not installed (run with
the venv of scripts/torch-venv.sh, as test_torch.py)."""

import errno
import gzip
import io
import os
import random
import tarfile

import pytest

if os.environ.get("ASYNCLOADER_REQUIRE_TORCH") == "1":  # scripts/torch-venv.sh
    import torch
else:
    torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402

from asyncloader.tar_index import tar_members as tar_members_plain  # noqa: E402
from _torch_helpers import as_list, explode, fixed_batches, replace_with_marker, tagged  # noqa: E402
from asyncloader.torch import (  # noqa: E402
    SKIP,
    BatchLoadError,
    RangeDataset,
    collate_bytes,
    tar_members,
)

N = 240
BATCH = 24


def write_shard(path, n, seed, fmt=tarfile.PAX_FORMAT):
    """A tar of ``n`` members (sizes 0..40000, .bin and .cls, some long
    names: PAX headers before their data), a directory and a symlink."""
    rng = random.Random(seed)
    with tarfile.open(path, "w", format=fmt) as tf:
        d = tarfile.TarInfo("dir")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for i in range(n):
            size = 0 if i % 50 == 0 else rng.randrange(1, 40000)
            data = rng.randbytes(size)
            name = f"dir/{i:05d}" + ("x" * 120 if i % 17 == 0 else "") + (".cls" if i % 3 == 0 else ".bin")
            ti = tarfile.TarInfo(name)
            ti.size = size
            tf.addfile(ti, io.BytesIO(data))
        link = tarfile.TarInfo("dir/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "00001.bin"
        tf.addfile(link)


def extracted(path):
    """{(path, offset): bytes} of every regular member, from tarfile."""
    out = {}
    with tarfile.open(path) as tf:
        for m in tf:
            if m.isreg():
                out[(path, m.offset_data)] = tf.extractfile(m).read()
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("tarshards")
    a, b = str(root / "a.tar"), str(root / "b.tar")
    write_shard(a, N // 2, seed=1)
    write_shard(b, N // 2, seed=2, fmt=tarfile.GNU_FORMAT)
    items = tar_members(a) + tar_members(b)
    want = {**extracted(a), **extracted(b)}
    return items, [want[(p, off)] for p, off, _n in items]


def unpacked(dl):
    return [[bytes(buf[off[i]:off[i + 1]].numpy()) for i in range(len(off) - 1)] for buf, off in dl]


def all_taken(ds):
    return all(ds.loader.get_worker_context(w).outstanding == 0 for w in range(ds.loader.n_workers))


# -- tar_members -------------------------------------------------------------


def test_tar_members_are_the_regular_members_in_order(shards, tmp_path):
    items, want = shards
    assert len(items) == N and tar_members is tar_members_plain
    path = items[0][0]
    with tarfile.open(path) as tf:
        regs = [m for m in tf if m.isreg()]
    assert tar_members(path, names=True) == [(path, m.offset_data, m.size, m.name) for m in regs]
    cls = tar_members(path, ".cls")
    assert cls == tar_members(path, [".cls"]) == [
        (path, m.offset_data, m.size) for m in regs if m.name.endswith(".cls")
    ]
    assert len(tar_members(path, (".cls", ".bin"))) == len(regs)
    for p, off, size in items:
        assert isinstance(off, int) and isinstance(size, int)
    gz = tmp_path / "a.tar.gz"
    with open(path, "rb") as f:
        gz.write_bytes(gzip.compress(f.read()))
    with pytest.raises(tarfile.ReadError):
        tar_members(gz)


# -- RangeDataset ------------------------------------------------------------


def test_batches_in_process_and_two_fork_workers_shuffled(shards):
    items, want = shards
    with RangeDataset(items) as ds:
        assert len(ds) == N
        assert ds.loader.max_file_size == max(n for _p, _o, n in items)
        for nw in (0, 2):
            ctx = "fork" if nw else None
            dl = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=nw,
                            collate_fn=as_list, multiprocessing_context=ctx)
            seen = [s for b in dl for s in b]
            assert sorted(seen) == sorted(want)
            batches = fixed_batches(N, seed=nw, bs=BATCH)  # exact order: batches given up front
            dl = DataLoader(ds, batch_sampler=batches, num_workers=nw, collate_fn=as_list,
                            multiprocessing_context=ctx)
            got = list(dl)
            assert got == [[want[i] for i in idx] for idx in batches]
            # collate_bytes: one (data, offsets) pair per batch
            dl = DataLoader(ds, batch_sampler=batches, num_workers=nw, collate_fn=collate_bytes,
                            multiprocessing_context=ctx)
            assert unpacked(dl) == [[want[i] for i in idx] for idx in batches]
        assert ds[5] == want[5]
        # repeats, both shards interleaved (one request_ranges call per run)
        idx = [3, 3, N - 1, 1, N // 2, N // 2 + 1, 0]
        assert ds.__getitems__(idx) == [want[i] for i in idx]
        assert ds._worker().outstanding == 0


def test_spawn_workers_with_a_transform_and_a_small_queue(shards):
    items, want = shards
    with RangeDataset(items, transform=tagged, queue_depth=8) as ds:
        batches = fixed_batches(N, seed=11, bs=40)  # batches larger than the queue
        dl = DataLoader(ds, batch_sampler=batches, num_workers=2, collate_fn=as_list,
                        multiprocessing_context="spawn")
        assert list(dl) == [[(len(want[i]), want[i]) for i in idx] for idx in batches]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_packed_batches(shards, method):
    items, want = shards
    with RangeDataset(items, packed=True) as ds:
        batches = fixed_batches(N, seed=3, bs=BATCH)
        for nw in (0, 2):
            dl = DataLoader(ds, batch_sampler=batches, num_workers=nw, collate_fn=collate_bytes,
                            multiprocessing_context=method if nw else None)
            assert unpacked(dl) == [[want[i] for i in idx] for idx in batches]
            del dl
            assert all_taken(ds)
    with pytest.raises(ValueError, match="no transform"):
        RangeDataset(items, transform=tagged, packed=True)


def bad_items(shards, tmp_path):
    """Good items around a missing file and a range past the end of its file."""
    items, want = shards
    gone = str(tmp_path / "gone.tar")
    path, off, size = items[1]
    end = os.path.getsize(path)
    bad = items[:10] + [(gone, 0, 100)] + items[10:20] + [(path, end - 7, 100)] + items[20:30]
    return bad, want[:30], gone, path


def test_missing_file_and_past_eof_raise(shards, tmp_path):
    bad, want, gone, path = bad_items(shards, tmp_path)
    with RangeDataset(bad) as ds:
        with pytest.raises(BatchLoadError) as ei:
            ds.__getitems__(list(range(len(bad))))
        assert ei.value.errno == errno.ENOENT and ei.value.filename == gone and ei.value.index == 10
        assert ds._worker().outstanding == 0
        with pytest.raises(BatchLoadError) as ei:
            ds.__getitems__(list(range(11, len(bad))))
        assert ei.value.errno == errno.ENODATA and ei.value.filename == path and ei.value.index == 21
        assert ds._worker().outstanding == 0
        good = list(range(10)) + list(range(11, 21))
        assert ds.__getitems__(good) == want[:20]
        # through DataLoader workers: re-raised in the main process
        dl = DataLoader(ds, batch_size=BATCH, num_workers=2, collate_fn=as_list,
                        multiprocessing_context="spawn")
        with pytest.raises(BatchLoadError) as ei:
            list(dl)
        assert ei.value.errno == errno.ENOENT and ei.value.filename == gone and ei.value.index == 10
    with RangeDataset(bad, packed=True) as ds:
        with pytest.raises(BatchLoadError) as ei:
            ds.__getitems__(list(range(11, len(bad))))
        assert ei.value.errno == errno.ENODATA and ei.value.index == 21
        assert all_taken(ds)


def test_on_error_skip_callable_and_allow_short(shards, tmp_path):
    bad, want, gone, path = bad_items(shards, tmp_path)
    with open(path, "rb") as f:
        tail = f.read()[-7:]
    everything = list(range(len(bad)))
    with RangeDataset(bad, on_error="skip") as ds:
        assert ds.__getitems__(everything) == want
        assert ds.skipped == 2
        for nw in (0, 2):
            dl = DataLoader(ds, batch_size=len(bad), num_workers=nw, collate_fn=collate_bytes,
                            multiprocessing_context="fork" if nw else None)
            assert unpacked(dl) == [want]
        with pytest.raises(KeyError):
            ds[10]
    with_markers = want[:10] + [b"missing:gone.tar:%d" % errno.ENOENT] + want[10:20] + [
        b"missing:%s:%d" % (os.path.basename(path).encode(), errno.ENODATA)] + want[20:]
    for packed in (False, True):
        with RangeDataset(bad, on_error=replace_with_marker, packed=packed) as ds:
            for nw in (0, 2):
                dl = DataLoader(ds, batch_size=len(bad), num_workers=nw, collate_fn=collate_bytes,
                                multiprocessing_context="fork" if nw else None)
                assert unpacked(dl) == [with_markers]
                del dl
                assert all_taken(ds)
        with RangeDataset(bad, on_error=lambda p, e: SKIP, packed=packed) as ds:
            out = ds.__getitems__(everything)
            got = unpacked([collate_bytes(out)])[0] if packed else out
            assert got == want and ds.skipped == 2
    with RangeDataset(bad, on_error="skip", allow_short=True) as ds:
        assert ds.__getitems__(everything) == want[:20] + [tail] + want[20:]
        assert ds.skipped == 1
    with pytest.raises(ValueError, match="on_error"):
        RangeDataset(bad, on_error="ignore")


def test_exception_in_transform_leaves_nothing_outstanding(shards):
    items, want = shards
    assert any(len(w) % 7 == 3 for w in want)
    with RangeDataset(items, transform=explode) as ds:
        with pytest.raises(ValueError, match="on purpose"):
            ds.__getitems__(list(range(N)))
        assert ds._worker().outstanding == 0
        good = [i for i, w in enumerate(want) if len(w) % 7 != 3]
        assert ds.__getitems__(good) == [want[i] for i in good]
        dl = DataLoader(ds, batch_size=BATCH, num_workers=2, collate_fn=as_list,
                        multiprocessing_context="fork")
        with pytest.raises(ValueError, match="on purpose"):
            list(dl)


def test_items_are_checked_up_front(shards):
    items, _want = shards
    path = items[0][0]
    with pytest.raises(ValueError, match="item 1 .* max_file_size=10"):
        RangeDataset([(path, 0, 10), (path, 0, 11)], max_file_size=10)
    with RangeDataset(items) as ds:
        with pytest.raises(ValueError, match="max_file_size"):
            RangeDataset([(path, 0, ds.loader.max_file_size + 1)], loader=ds.loader)
        with RangeDataset([(path, 0, 10)], loader=ds.loader) as small:
            assert small.loader is ds.loader and small[0] == open(path, "rb").read(10)
        assert ds[7] == _want[7]  # the borrowed loader still runs
    with pytest.raises(ValueError, match="item 0 is not"):
        RangeDataset([(path, 0)])
    with pytest.raises(ValueError, match=">= 0"):
        RangeDataset([(path, -1, 5)])
    with pytest.raises(ValueError, match="at most"):
        RangeDataset([(path, (1 << 63) - 4, 5)])
    with pytest.raises(TypeError):
        RangeDataset([(path, 0.5, 5)])
    with pytest.raises(TypeError):
        RangeDataset([(path, True, 5)])
    with RangeDataset([(path, torch.tensor(0), torch.tensor(3))] * 2) as ds:  # integer-likes
        assert ds.__getitems__([1, 0]) == [open(path, "rb").read(3)] * 2
        with pytest.raises(IndexError):
            ds.__getitems__([2])
    with RangeDataset([]) as ds:
        assert len(ds) == 0 and ds.__getitems__([]) == []
