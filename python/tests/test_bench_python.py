"""examples/python/bench_python.py end to end, on tiny generated directories:
it compares only runs in which every method loaded every file, sizes
max_file_size from the files, and fails (no ratio) when a file is lost."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_files

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "python" / "bench_python.py"
RATIO = re.compile(r"\bratio [0-9.]+x")

pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="needs the source tree's examples/")


def run_bench(root, *extra, timeout=40):
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--dir", str(root), "--repeat", "1", *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )
    return p.returncode, p.stdout + p.stderr


def test_small_files_print_ratios(tmp_path):
    make_files(tmp_path / "d", 50, lo=0, hi=8192)
    rc, out = run_bench(tmp_path / "d")
    assert rc == 0, out
    assert "50 files" in out, out
    assert len(RATIO.findall(out)) == 5, out  # get_data, memoryview, Batch.data, Batch.view, load_into
    assert "FAILED" not in out and "NOT COMPARABLE" not in out, out


def test_files_over_64k_load_sized_from_the_files(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for i in range(20):
        (d / f"f{i:02d}.bin").write_bytes(os.urandom(100 << 10))
    rc, out = run_bench(d, "--drive", "loader")
    assert rc == 0, out
    assert "20 files" in out and "max_file_size 102400" in out, out
    assert len(RATIO.findall(out)) == 5, out
    assert "FAILED" not in out, out


def test_lost_file_fails_without_comparison(tmp_path):
    make_files(tmp_path / "d", 20, lo=1, hi=4096)
    rc, out = run_bench(tmp_path / "d", "--inject-missing")
    assert rc != 0, out
    assert "ratio" not in out and "median" not in out, out
    assert "NOT COMPARABLE" in out and "lost 1 of 21 files" in out, out
    # Every method is named with what it lost.
    for row in ("Pool(2) open().read()", "asyncloader get_data()", "asyncloader memoryview()"):
        assert f"{row}, run 1: lost 1 of 21 files" in out, out


def test_python_cpu_reports_python_and_library_shares(tmp_path):
    files = make_files(tmp_path / "d", 60, lo=100, hi=9000)
    script = SCRIPT.parent / "python_cpu.py"
    p = subprocess.run(
        [sys.executable, str(script), "--dir", str(tmp_path / "d"), "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert f"{len(files)} files" in out, out
    rows = re.findall(r"thread CPU +(\d+) +in library calls +(\d+) +Python +(-?\d+)", out)
    assert len(rows) == 3, out
    for cpu, lib, py in rows:
        assert int(cpu) == int(lib) + int(py) or abs(int(cpu) - int(lib) - int(py)) <= 1, out
        assert int(lib) > 0, out
