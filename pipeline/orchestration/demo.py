"""`make demo`: the whole job end to end on the generated demo set (no download, CPU, a few minutes).

extract (alexnet + bow) -> train a no-learning floor, the shallow CCA-ITQ baseline and deep methods at
16/32/64 bits -> report table + plots that DuckDB reads.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

DEMO_METHODS = ("baseline", "cca-itq", "djsrh", "dsah", "ucmfh")
DEMO_BITS = (16, 32, 64)
#: Short schedules so the demo stays under five minutes on two CPU cores (the papers' epochs are in each config).
DEMO_EPOCHS = {"djsrh": 20, "dsah": 20, "ucmfh": 10, "ccah": 5}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, default=None, help="cache root (default ./cache)")
    parser.add_argument("--methods", default=",".join(DEMO_METHODS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")

    from stages.prepare import DatasetRequest, prepare_dataset
    from pipeline.ground.settings import cache_root
    from pipeline.ground.store.cache import Cache
    from pipeline.orchestration.grid import GridRequest, run_grid
    from stages.extract import create_encoder, load_encoders
    from stages.extract.runner import run_extraction

    start = time.perf_counter()
    layout = Cache(cache_root(args.cache))
    req = DatasetRequest(dataset="demo", data_dir=layout.root / "demo-data")
    items, splits = prepare_dataset(layout, req)
    print(f"demo dataset: {len(items)} items, " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    load_encoders()
    for name in ("alexnet", "bow"):
        summary = run_extraction(layout, items, splits, create_encoder(name), progress=False)
        print(summary.describe())
    result = run_grid(layout, GridRequest(dataset="demo", methods=[m.strip() for m in args.methods.split(",")
                                                                       if m.strip()],
                                               bits=DEMO_BITS, epochs=dict(DEMO_EPOCHS), workers=1,
                                               skip_config_errors=True))
    table = result.tables["map@50"]
    print(table.markdown)
    print(f"\ntables: {', '.join(str(p) for p in table.paths.values())}\nplot: {result.figure}\nruns: {layout.runs_dir()}")
    print("query them with DuckDB, e.g.:\n  .venv/bin/python -c \"import duckdb; print(duckdb.sql(\\\"SELECT method, bits, task, "
          f"value FROM read_parquet('{layout.runs_dir()}/*/report.parquet', union_by_name=true) "
          "WHERE metric='map@50' ORDER BY ALL\\\"))\"")
    print(f"demo finished in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
