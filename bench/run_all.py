"""`make bench`: every benchmark in one go, each printing figures as ratios against a baseline measured in the same run.

- bench_eval.py    Hamming ranking and mAP against the papers' loop and faiss (NUS-WIDE scale)
- bench_extract.py extraction pipeline throughput against the bare model forward on the same batches,
                   and --engine ray against the local runner
- bench_train.py   seconds per training epoch of every method on the cached MIRFlickr features
- bench_search.py  faiss binary indexes (flat, ivf, hash, multihash) at 10M codes: build, memory, speed, recall@50
                   (--quick: 1M codes)
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--only", default="eval,extract,train,search", help="comma list of benchmarks to run")
    args = parser.parse_args()
    status = 0
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        script = HERE / f"bench_{name}.py"
        print(f"\n=== {script.name} ===", flush=True)
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        status |= subprocess.call(cmd)
    return status


if __name__ == "__main__":
    sys.exit(main())
