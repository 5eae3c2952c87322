"""Names and defaults are the library's, restated nowhere in Python.

The loader states and backends are the enums ``al_state``/``al_backend`` of
the C header (generated from src/kinds.rs); the package reads their names
with ``al_state_name``/``al_backend_name``. Every config default is
``al_config_default``'s (Rust's ``Config::default()``); ``Loader()`` takes
all of them from there.
"""

import ctypes
import re
from pathlib import Path

import pytest

import asyncloader
from asyncloader import _ffi

HEADER = Path(__file__).resolve().parents[2] / "include" / "asyncloader.h"


def _header_enum(prefix: str) -> dict:
    """``{NAME: value}`` of the enumerators ``<prefix>_NAME = value``."""
    if not HEADER.exists():
        pytest.skip(f"{HEADER} is not there (tests run outside the repository)")
    found = re.findall(rf"^\s*{prefix}_([A-Z_]+) = (\d+),", HEADER.read_text(), re.M)
    assert found, f"no {prefix}_* enumerators in {HEADER}"
    return {name: int(v) for name, v in found}


def _name_fn(symbol: str):
    f = getattr(_ffi.lib().cdll, symbol)
    f.restype = ctypes.c_char_p
    f.argtypes = [ctypes.c_uint32]
    return f


def _raw_defaults() -> dict:
    """``al_config_default`` called directly: the C defaults, field by field."""
    cfg = _ffi.al_config()
    assert _ffi.lib().cdll.al_config_default(ctypes.byref(cfg)) == 0
    return {
        n: getattr(cfg, n)
        for n, _t in _ffi.al_config._fields_
        if n not in ("struct_size", "pad0", "reserved")
    }


def test_state_names_are_the_headers_enumerators():
    hdr = _header_enum("AL_STATE")
    assert _ffi.lib().states == {v: name.lower() for name, v in hdr.items()}


def test_backend_names_are_the_headers_enumerators():
    hdr = _header_enum("AL_BACKEND")
    assert _ffi.lib().backends == {v: name.lower() for name, v in hdr.items()}


def test_drive_names_are_the_headers_enumerators():
    hdr = _header_enum("AL_DRIVE")
    assert _ffi.lib().drives == {v: name.lower() for name, v in hdr.items()}
    assert set(_ffi.lib().drives.values()) == {"auto", "loader", "worker"}


def test_drive_argument_takes_exactly_the_library_names_and_stats_say_which_runs():
    for name in _ffi.lib().drives.values():
        with asyncloader.Loader(drive=name, n_workers=1, loader_threads=1) as ld:
            assert ld.config()["drive"] == name
            ld.start()
            w = ld.get_worker_context(0)
            w.request(__file__)
            e = w.wait_get(timeout=10)
            assert bytes(e.get_data()) == Path(__file__).read_bytes()
            e.release()
            st = ld.stats()
            # One worker on this machine's cores: auto means loader threads
            # unless the machine has a single core.
            assert st["drive"] in ("loader", "worker")
            if name != "auto":
                assert st["drive"] == name
            assert st["loader_threads"] == (0 if st["drive"] == "worker" else 1)
    with pytest.raises(ValueError):
        asyncloader.Loader(drive="none")
    with pytest.raises(TypeError):
        asyncloader.Loader(drive=1)


def test_name_functions_refuse_values_past_the_enums():
    for symbol, known in (
        ("al_state_name", _ffi.lib().states),
        ("al_backend_name", _ffi.lib().backends),
        ("al_drive_name", _ffi.lib().drives),
    ):
        f = _name_fn(symbol)
        assert f(len(known)) is None
        assert f(0xFFFFFFFF) is None
        assert [f(v).decode() for v in known] == list(known.values())


def test_stats_name_states_and_backends_as_the_library_does():
    states = _header_enum("AL_STATE")
    backends = _header_enum("AL_BACKEND")
    lib = _ffi.lib()
    with asyncloader.Loader(loader_threads=1) as ld:
        st = ld.stats()
        assert st["state"] == lib.states[states["CREATED"]]
        assert st["backend"] == lib.backends[backends["AUTO"]]  # none chosen yet
        ld.start()
        assert ld.stats()["state"] == lib.states[states["RUNNING"]]
        # The loader has chosen its backend once it delivered something.
        w = ld.get_worker_context(0)
        w.request(__file__)
        w.wait_get(timeout=10).release()
        st = ld.stats()
        assert st["backend"] in (
            lib.backends[backends["IO_URING"]],
            lib.backends[backends["THREADS"]],
        )
        ld.shutdown()
        assert ld.stats()["state"] == lib.states[states["STOPPED"]]


def test_backend_argument_takes_exactly_the_library_names():
    for name in _ffi.lib().backends.values():
        with asyncloader.Loader(backend=name) as ld:
            assert ld.config()["backend"] == name
    with pytest.raises(ValueError):
        asyncloader.Loader(backend="none")


def test_default_config_is_al_config_default():
    d = asyncloader.default_config()
    raw = _raw_defaults()
    assert d.keys() == raw.keys()
    for field, value in raw.items():
        if field == "backend":
            assert d[field] == _ffi.lib().backends[value]
        elif field == "drive":
            assert d[field] == _ffi.lib().drives[value]
        else:
            assert d[field] == value, field


def test_loader_without_arguments_uses_al_config_default_field_by_field():
    raw = _raw_defaults()
    with asyncloader.Loader() as ld:
        eff = ld.config()
        assert ld.max_file_size == raw["max_file_size"]
        assert ld.queue_depth == raw["queue_depth"]
        assert ld.n_workers == raw["n_workers"]
        assert ld.direct == bool(raw["direct"])
    for field, value in raw.items():
        got = eff[field]
        if field == "backend":
            assert got == _ffi.lib().backends[value]
        elif field == "drive":
            assert got == _ffi.lib().drives[value]
        elif field == "direct":
            assert got == bool(value)
        elif value == 0 and field not in ("arena_size", "dispatch_n"):
            # 0 means "pick for me" (loader_threads, ring_window): the
            # loader reports what it picked. (arena_size 0: no arena;
            # dispatch_n 0: picked by each loop for the drive it runs.)
            assert got > 0, field
        else:
            assert got == value, field
    # The same as asking for every default explicitly.
    with asyncloader.Loader(**asyncloader.default_config()) as ld:
        assert ld.config() == eff


def test_default_max_file_size_constant_is_the_librarys():
    assert asyncloader.DEFAULT_MAX_FILE_SIZE == _raw_defaults()["max_file_size"]


def test_arguments_left_out_keep_their_defaults_when_others_are_given():
    raw = _raw_defaults()
    qd = raw["queue_depth"] + 1
    with asyncloader.Loader(queue_depth=qd, n_workers=2) as ld:
        cfg = ld.config()
    assert cfg["queue_depth"] == qd and cfg["n_workers"] == 2
    assert cfg["max_file_size"] == raw["max_file_size"]
    assert cfg["dispatch_n"] == raw["dispatch_n"]
    assert cfg["idle_iters"] == raw["idle_iters"]
