"""`--shard i/n` workers of one extraction each add their failures to one errors.parquet: none may be lost."""
from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.ground.store.features import ColumnSpec, FeatureWriter
from pipeline.ground.store.layout import CacheLayout

WORKERS, WRITES = 4, 12


def _writer(root: Path) -> FeatureWriter:
    splits = {"query": np.arange(4), "database": np.arange(4, 40), "train": np.arange(4, 20)}
    return FeatureWriter(CacheLayout(root), "toy", "enc", encoder_config={"x": 1},
                         columns={"v": ColumnSpec(2, "float32", "image")}, default_columns={"image": ["v"]},
                         dataset_fingerprint="f", splits=splits)


def _worker(root: str, index: int, start: "mp.synchronize.Event") -> None:
    writer = _writer(Path(root))
    start.wait()
    for k in range(WRITES):  # each worker reports its failures batch by batch, as the runner does
        item = 1000 * index + k
        writer.write_errors([(item, f"img/{item}.jpg", "truncated")])


def test_concurrent_shard_workers_keep_every_failure(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), i, start)) for i in range(WORKERS)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    path = CacheLayout(tmp_path).errors_path("toy", "enc")
    ids = sorted(pq.read_table(path).column("item_id").to_pylist())
    assert ids == sorted(1000 * i + k for i in range(WORKERS) for k in range(WRITES))
    assert _writer(tmp_path).failed_ids() == set(ids)
