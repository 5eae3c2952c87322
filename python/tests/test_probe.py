"""asyncloader.probe() and `python -m asyncloader` (al_probe through ctypes)."""

import json
import os
import subprocess
import sys

import asyncloader


def _module(*args, env_update=None):
    env = dict(os.environ)
    env.pop("ASYNCLOADER_BACKEND", None)
    env.pop("ASYNCLOADER_BIN", None)
    env.update(env_update or {})
    return subprocess.run(
        [sys.executable, "-m", "asyncloader", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_probe_reports_the_machine_and_paths(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 5000)
    p = asyncloader.probe(str(tmp_path), f, "/no/such/path")
    assert set(p["io_uring"]["opcodes"]) == {
        "OPENAT", "READ", "CLOSE", "STATX", "FADVISE", "ASYNC_CANCEL",
    }
    assert p["backend"]["auto"] in ("io_uring", "threads")
    assert p["version"] == asyncloader.library_version()
    d, fp, missing = p["paths"]
    assert d["error"] is None and d["direct"]["tested_file"] == str(f)
    assert fp["fs_type"] == d["fs_type"] != "unknown" or fp["fs_magic"] == d["fs_magic"]
    assert "No such file" in missing["error"]


def test_probe_of_tmpfs():
    if not os.path.isdir("/dev/shm"):
        return
    p = asyncloader.probe("/dev/shm")
    assert p["paths"][0]["fs_type"] == "tmpfs"
    assert p["paths"][0]["block_device"] is None


def test_module_info_text_json_and_override():
    r = _module("info", "/")
    assert r.returncode == 0, r.stderr
    assert "io_uring:" in r.stdout and "O_DIRECT:" in r.stdout
    r = _module("info", "--json", env_update={"ASYNCLOADER_BACKEND": "threads"})
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert v["backend"] == {"env": "threads", "auto": "threads", "error": None}


def test_module_bench_without_the_binary_says_how(tmp_path):
    r = _module("bench", env_update={"PATH": str(tmp_path)})
    assert r.returncode == 2
    assert "cargo run --release -- bench" in r.stderr
