from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.evaluate.report import evaluate_codes_and_curves, write_curves, write_report
from tests.evaluate.helpers import correlated


def run_meta(run_id: str, method: str, bits: int, seed: int, **extra) -> dict:
    return {"run_id": run_id, "method": method, "dataset": "toy", "image_features": "clip-vit-b-32.openai",
            "text_features": "clip-vit-b-32.openai", "bits": bits, "seed": seed, "eval_mode": "single",
            "tie_rule": "stable", "n_train": 100, "n_query": 30, "n_database": 300,
            "train_s": 1.5, "encode_s": 0.1, "eval_s": None, **extra}


def make_run(root: Path, run_id: str, method: str, bits: int, seed: int, noise: float, **extra) -> Path:
    rng = np.random.default_rng(seed * 1000 + bits)
    qi, di, ql, dl = correlated(rng, 30, 300, bits, noise=noise)
    flip = np.where(rng.random(qi.shape) < 0.1, -1, 1).astype(np.int8)
    query = {"image": qi, "text": qi * flip, "labels": ql}
    database = {"image": di, "text": di, "labels": dl}
    ev = evaluate_codes_and_curves(query, database, ks=(10, 50), pk_curve_ks=(1, 10, 50, 100))
    run_dir = root / "runs" / run_id
    meta = run_meta(run_id, method, bits, seed, **extra)
    write_report(run_dir, ev.rows, meta)
    write_curves(run_dir, ev.curves, meta)
    return run_dir


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    """Six toy runs: two methods x bits (16, 32) x seeds, one run with an extra meta column."""
    root = tmp_path_factory.mktemp("cache")
    for method, noise in (("alpha", 1.0), ("beta", 3.0)):
        for bits in (16, 32):
            for seed in (0, 1):
                if method == "beta" and bits == 32 and seed == 1:
                    continue  # beta@32 has one seed: std is NULL
                extra = {"lr": {"head": 0.01}} if (method, bits, seed) == ("alpha", 16, 1) else {}
                make_run(root, f"{method}-{bits}-{seed}", method, bits, seed, noise, **extra)
    return root
