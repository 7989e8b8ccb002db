"""bench/bench_serve.py in a tiny mode on the demo run: it runs, stops its server, and prints its lines in
the exact format scripts read (nothing is timed here; speed belongs to the benchmark itself)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEXT = re.compile(r"^text clients=(\d+) requests=(\d+) p50_ms=(\d+\.\d+) p99_ms=(\d+\.\d+) rps=(\d+) non_200=(\d+)$")
IMAGE = re.compile(r"^image requests=(\d+) p50_ms=(\d+\.\d+) p99_ms=(\d+\.\d+) forward_p50_ms=(\d+\.\d+) "
                   r"ratio=(\d+\.\d+) non_200=(\d+)$")


def test_bench_serve_tiny_prints_its_lines(demo_run):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_serve.py"), "--run", demo_run.run_id,
                           "--cache", str(demo_run.cache.root), "--clients", "4", "--requests", "40",
                           "--warmup", "4", "--image-requests", "3", "--max-seconds", "120"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    text = [m for m in map(TEXT.match, lines) if m]
    image = [m for m in map(IMAGE.match, lines) if m]
    assert len(text) == 1 and len(image) == 1, proc.stdout
    assert text[0].group(1, 2, 6) == ("4", "40", "0")
    assert float(text[0].group(3)) <= float(text[0].group(4))
    assert image[0].group(1) == "3" and image[0].group(6) == "0"
    assert any(line.startswith("server stopped: exit 0") for line in lines), proc.stdout
