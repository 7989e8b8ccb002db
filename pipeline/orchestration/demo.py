"""`make demo`: the whole job end to end on the generated demo set (no download, CPU, a few minutes).

extract (alexnet + bow) -> train a no-learning floor, the shallow CCA-ITQ baseline and deep methods at
16/32/64 bits -> report table + plots that DuckDB reads.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

from pipeline.ground.store.cache import Cache

DEMO_METHODS = ("baseline", "cca-itq", "djsrh", "dsah", "ucmfh")
DEMO_BITS = (16, 32, 64)
#: Short schedules so the demo stays short on two CPU cores (the papers' epochs are in each config).
DEMO_EPOCHS = {"djsrh": 20, "dsah": 20, "ucmfh": 10, "ccah": 5}


def run_demo(cache: Cache, methods: Sequence[str] = DEMO_METHODS, echo: Callable[[str], None] = print) -> None:
    from pipeline.orchestration.grid import GridRequest, run_grid
    from stages.extract import create_encoder, load_encoders
    from stages.extract.runner import run_extraction
    from stages.prepare import DatasetRequest, prepare_dataset

    start = time.perf_counter()
    req = DatasetRequest(dataset="demo", data_dir=cache.root / "demo-data")
    items, splits = prepare_dataset(cache, req)
    echo(f"demo dataset: {len(items)} items, " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    load_encoders()
    for name in ("alexnet", "bow"):
        summary = run_extraction(cache, items, splits, create_encoder(name), progress=False)
        echo(summary.describe())
    result = run_grid(cache, GridRequest(dataset="demo", methods=list(methods), bits=DEMO_BITS,
                                         epochs=dict(DEMO_EPOCHS), workers=1, skip_config_errors=True))
    table = result.tables["map@50"]
    echo(table.markdown)
    echo(f"\ntables: {', '.join(str(p) for p in table.paths.values())}\nplot: {result.figure}\nruns: {cache.runs_dir()}")
    echo("query them with DuckDB, e.g.:\n  .venv/bin/python -c \"import duckdb; print(duckdb.sql(\\\"SELECT method, bits, task, "
         f"value FROM read_parquet('{cache.runs_dir()}/*/report.parquet', union_by_name=true) "
         "WHERE metric='map@50' ORDER BY ALL\\\"))\"")
    echo(f"demo finished in {time.perf_counter() - start:.0f}s")
