"""bench/bench_search.py in a tiny mode: it runs and prints one line per index kind in the exact format
scripts read (nothing is timed here; speed belongs to the benchmark itself)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^kind=(flat|ivf|hash|multihash) n=(\d+) bits=(\d+) build_s=(\d+\.\d+) mem_mb=(\d+\.\d+) "
                  r"ms_per_1k=(\d+\.\d+) recall@50=(\d+\.\d+)$")


def test_bench_search_tiny_prints_one_line_per_kind(built):
    _, cache, run = built
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_search.py"), "--n", "4000", "--queries", "20",
                           "--tune-queries", "10", "--bits", "16", "--run", str(cache / "runs" / run)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith(f"data=realistic source={run} flip=0.05") for line in lines), proc.stdout
    assert "data=uniform (every bit a fair coin; the worst case)" in lines
    kinds = [line for line in lines if line.startswith("kind=")]
    parsed = [LINE.match(line) for line in kinds]
    assert all(parsed), kinds
    assert [m.group(1) for m in parsed] == ["flat", "ivf", "hash", "multihash"] * 2
    for m in parsed:
        assert (int(m.group(2)), int(m.group(3))) == (4000, 16)
        assert 0.0 <= float(m.group(7)) <= 1.0 and float(m.group(5)) > 0
    assert all(float(m.group(7)) == 1.0 for m in parsed if m.group(1) == "flat")  # exhaustive = exact
    assert re.search(r"^peak RSS \d+ MB$", proc.stdout, re.M)
