"""examples/python/tar_shard.py end to end on small generated shards: every
member loaded by range is verified against tarfile; a run that gets a member
wrong fails (exit status 1) without any ratio."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "python" / "tar_shard.py"
RATIO = re.compile(r"\bratio [0-9.]+x")

pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="needs the source tree's examples/")


def run(*args, env=None, timeout=50):
    p = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
    )
    return p.returncode, p.stdout + p.stderr


@pytest.mark.parametrize(
    "extra", [[], ["--backend", "threads"], ["--direct"]], ids=["auto", "threads", "direct"]
)
def test_check_verifies_every_member(extra):
    rc, out = run("--check", *extra)
    assert rc == 0, out
    cores = os.cpu_count() or 1
    rows = 2 + 2 * len({cores, 2 * cores}) + 4  # tarfile x2, pread pools x2, asyncloader x4
    assert f"check ok: {rows} rows" in out and "all 120 members byte for byte" in out, out
    assert "NOT COMPARABLE" not in out and not RATIO.search(out), out


def test_a_wrong_member_fails_without_a_ratio():
    rc, out = run("--check", "--inject-corrupt")
    assert rc == 1, out
    assert "NOT COMPARABLE" in out, out
    assert "asyncloader load_ranges" in out and "1 members differ" in out, out
    assert not RATIO.search(out) and "median" not in out, out


def test_benchmark_prints_ratios_against_every_baseline(tmp_path):
    rc, out = run("--samples", "30", "--repeat", "2", env={"XDG_CACHE_HOME": str(tmp_path)})
    assert rc == 0, out
    assert "90 members" in out and "median of 2 runs" in out, out
    cores = os.cpu_count() or 1
    n_base = 2 + 2 * len({cores, 2 * cores})
    assert len(RATIO.findall(out)) == 4 * n_base, out
    assert (tmp_path / "asyncloader-bench" / "shard-30-s1.tar").exists()
