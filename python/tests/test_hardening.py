"""Argument handling and fork safety (issue 9, items 5, 11, 12): one
behaviour per test."""

import contextlib
import ctypes
import errno
import math
import os
import threading
import time

import pytest

import asyncloader
from asyncloader import _ffi

INT_ARGS = ["queue_depth", "max_file_size", "n_workers", "dispatch_n", "idle_iters",
            "max_idle_iters", "loader_threads", "ring_window"]


def small(**kw):
    args = dict(queue_depth=4, max_file_size=1 << 20, n_workers=1, dispatch_n=1, idle_iters=1)
    if "max_idle_iters" in kw:
        del args["idle_iters"]
    args.update(kw)
    return asyncloader.Loader(**args)


# -- item 5: the structs carry their size -----------------------------------


def test_ctypes_structs_match_the_c_layout_and_carry_their_size():
    for cls, size in [(_ffi.al_config, 64), (_ffi.al_stats, 96), (_ffi.al_entry_info, 64)]:
        assert ctypes.sizeof(cls) == size
        assert cls().struct_size == size
    # Fixed, no struct_size: read as 64-bit words by Batch.
    assert ctypes.sizeof(_ffi.al_batch_item) == 48
    assert [(n, getattr(_ffi.al_batch_item, n).offset) for n, _t in _ffi.al_batch_item._fields_] == [
        ("entry", 0), ("data", 8), ("size", 16), ("tag", 24), ("error", 32), ("path_len", 36), ("path", 40)
    ]
    assert _ffi.lib().al_abi_version() == _ffi.ABI_VERSION


def test_config_and_stats_dicts_do_not_expose_struct_size():
    with small() as ld:
        assert "struct_size" not in ld.config()
        assert "struct_size" not in ld.stats()
        assert ld.config()["queue_depth"] == 4


# -- item 11: timeouts ---------------------------------------------------------


@contextlib.contextmanager
def queued_before_start(tmp_path, data, delay=0.3):
    """A worker with one request queued (for a file holding `data`) before
    its loader starts; the loader starts `delay` seconds later, so a wait
    without limit must outlast the delay."""
    p = tmp_path / "f"
    p.write_bytes(data)
    with small() as ld:
        w = ld.get_worker_context(0)
        w.request(str(p))  # nothing runs yet: the entry comes after the start
        t = threading.Timer(delay, ld.start)
        t.start()
        try:
            yield w
        finally:
            t.join()


def test_wait_get_timeout_minus_one_waits_without_limit_like_c(tmp_path):
    with queued_before_start(tmp_path, b"x" * 100) as w:
        with w.wait_get(timeout=-1) as e:
            assert e.get_data() == b"x" * 100


def test_get_many_timeout_minus_one_waits_without_limit(tmp_path):
    with queued_before_start(tmp_path, b"y") as w:
        got = w.get_many(4, timeout=-1)
        assert len(got) == 1 and got[0].get_data() == b"y"
        got[0].release()


def test_wait_get_infinite_timeout_waits_without_limit(tmp_path):
    with queued_before_start(tmp_path, b"z") as w:
        with w.wait_get(timeout=math.inf) as e:
            assert e.get_data() == b"z"


@pytest.mark.parametrize("bad", [-2, -0.5, -1e-9, float("-inf")])
def test_wait_get_other_negative_timeouts_raise_valueerror(loader, bad):
    with pytest.raises(ValueError):
        loader.get_worker_context(0).wait_get(timeout=bad)


def test_wait_get_nan_timeout_raises_valueerror(loader):
    with pytest.raises(ValueError):
        loader.get_worker_context(0).wait_get(timeout=float("nan"))


def test_get_many_nan_and_negative_timeouts_raise_valueerror(loader):
    w = loader.get_worker_context(0)
    with pytest.raises(ValueError):
        w.get_many(2, timeout=float("nan"))
    with pytest.raises(ValueError):
        w.get_many(2, timeout=-3)


@pytest.mark.parametrize("bad", ["1", True, b"1", [1]])
def test_wait_get_non_number_timeout_raises_typeerror(loader, bad):
    with pytest.raises(TypeError):
        loader.get_worker_context(0).wait_get(timeout=bad)


def test_wait_get_zero_timeout_raises_timeouterror_at_once(loader):
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        loader.get_worker_context(0).wait_get(timeout=0)
    assert time.monotonic() - t0 < 5


# -- item 11: config arguments -------------------------------------------------


@pytest.mark.parametrize("name", INT_ARGS)
def test_float_for_an_integer_argument_raises_typeerror(name):
    with pytest.raises(TypeError, match=name):
        small(**{name: 8.5})


@pytest.mark.parametrize("name", INT_ARGS)
def test_bool_for_an_integer_argument_raises_typeerror(name):
    with pytest.raises(TypeError, match=name):
        small(**{name: True})


@pytest.mark.parametrize("name", INT_ARGS)
def test_string_for_an_integer_argument_raises_typeerror(name):
    with pytest.raises(TypeError, match=name):
        small(**{name: "8"})


@pytest.mark.parametrize("index", range(5))
def test_float_positional_argument_raises_typeerror(index):
    args = [4, 1 << 20, 1, 1, 1]
    args[index] = 2.0
    with pytest.raises(TypeError):
        asyncloader.Loader(*args)


@pytest.mark.parametrize("bad", ["yes", 1, 0, None, 1.0])
def test_non_bool_direct_raises_typeerror(bad):
    with pytest.raises(TypeError, match="direct"):
        small(direct=bad)


def test_non_bool_direct_positional_raises_typeerror():
    with pytest.raises(TypeError, match="direct"):
        asyncloader.Loader(4, 1 << 20, 1, 1, 1, "yes")


def test_non_str_backend_raises_typeerror():
    with pytest.raises(TypeError, match="backend"):
        small(backend=1)


def test_integer_like_arguments_are_accepted():
    class Four:
        def __index__(self):
            return 4

    with small(queue_depth=Four(), direct=False) as ld:
        assert ld.queue_depth == 4


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"queue_depth": 0}, "queue_depth"),
        ({"n_workers": 0}, "n_workers"),
        ({"idle_iters": 1 << 30}, "idle_iters"),
        ({"max_file_size": 0}, "max_file_size"),
        ({"loader_threads": 100000}, "loader_threads"),
        ({"ring_window": 1 << 30}, "ring_window"),
    ],
)
def test_config_error_says_which_field_and_why(kw, field):
    with pytest.raises(ValueError) as ei:
        small(**kw)
    assert field in str(ei.value)
    assert ei.value.errno == errno.EINVAL


# -- item 12: entries inherited across fork --------------------------------------


def _child(fn):
    """Runs fn() in a forked child; returns its exit status (0 = passed)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if fn() else 3
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_forked_child_release_leaves_the_parent_entry_unchanged(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    a.write_bytes(os.urandom(100_000))
    b.write_bytes(os.urandom(70_000))
    c.write_bytes(os.urandom(50_000))
    with small(queue_depth=2) as ld:
        ld.spawn_loader()  # no loader threads in this process while it forks
        w = ld.get_worker_context(0)
        w.request(str(a))
        e = w.wait_get(timeout=10)
        assert e.get_data() == a.read_bytes()

        def child():
            e.release()  # the parent's entry: only forgotten here
            asked = sum(w.request(str(p)) for p in (b, c))
            for _ in range(asked):
                w.wait_get(timeout=10).release()
            return asked == 1  # the parent's buffer stayed taken

        assert _child(child) == 0
        assert e.get_filepath() == str(a)
        assert e.get_data() == a.read_bytes()
        assert w.outstanding == 1
        e.release()
        assert w.outstanding == 0


def test_forked_child_can_read_an_inherited_entry_while_the_parent_holds_it(tmp_path):
    a = tmp_path / "a"
    a.write_bytes(b"parent's bytes")
    with small(queue_depth=2) as ld:
        ld.spawn_loader()
        w = ld.get_worker_context(0)
        w.request(str(a))
        e = w.wait_get(timeout=10)
        assert _child(lambda: e.get_data() == b"parent's bytes") == 0
        assert e.get_data() == b"parent's bytes"
        e.release()
