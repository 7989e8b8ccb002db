"""`make demo`: the whole job end to end on the generated demo set (no download, CPU, about a minute).

extract (alexnet + bow) -> train the no-learning floor, the shallow CCA-ITQ baseline and one deep method
(DJSRH, on a short schedule) at 16 and 32 bits -> the methods x bits table and its figure, which DuckDB reads.
``cmh demo --methods`` adds others (DSAH, UCMFH, ... on the short schedules below).

The default is sized to finish within two minutes on two cores once `make setup` is done (the README's
first-run block is measured by ``bench/bench_first_run.py``): 64 bits were dropped (CCA-ITQ cannot give 64
directions from the demo's 56-term vocabulary anyway) and DSAH and UCMFH moved to ``--methods``.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

from pipeline.ground.errors import ConfigError
from pipeline.ground.store.cache import Cache

DEMO_METHODS = ("baseline", "cca-itq", "djsrh")
DEMO_BITS = (16, 32)
#: Short schedules so the demo stays short on two CPU cores (the papers' epochs are in each config); the
#: table marks these rows "budget".
DEMO_EPOCHS = {"djsrh": 10, "dsah": 20, "ucmfh": 10, "ccah": 5, "cfrh": 10, "dsprh": 10, "fjsph": 10}


def run_demo(cache: Cache, methods: Sequence[str] = DEMO_METHODS, echo: Callable[[str], None] = print) -> None:
    from pipeline.orchestration.grid import GridRequest, run_grid
    from stages.extract import create_encoder, load_encoders
    from stages.extract.runner import run_extraction
    from stages.prepare import DatasetRequest, prepare_dataset

    start = time.perf_counter()
    methods = _checked_methods(methods)
    req = DatasetRequest(dataset="demo", data_dir=cache.root / "demo-data")
    items, splits = prepare_dataset(cache, req)
    echo(f"demo dataset: {len(items)} items, " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    load_encoders()
    for name in ("alexnet", "bow"):
        summary = run_extraction(cache, items, splits, create_encoder(name), progress=False)
        echo(summary.describe())
    result = run_grid(cache, GridRequest(dataset="demo", methods=list(methods), bits=DEMO_BITS,
                                         epochs=_short_schedules(methods), workers=1, skip_config_errors=True))
    table = result.tables["map@50"]
    echo(table.markdown)
    runs = cache.runs_dir()
    echo("query the runs with DuckDB, e.g.:\n  .venv/bin/python -c \"import duckdb; print(duckdb.sql(\\\"SELECT method, "
         f"bits, task, value FROM read_parquet('{runs}/*/report.parquet', union_by_name=true) "
         "WHERE metric='map@50' ORDER BY ALL\\\"))\"")
    trained = sum(1 for o in result.outcomes if o.status == "trained")
    echo(f"demo finished in {time.perf_counter() - start:.0f} s: {len(result.run_ids)} run(s) ({trained} trained "
         f"now, {len(result.run_ids) - trained} already there) in {runs}; "
         f"table {', '.join(str(p) for p in table.paths.values())}; figure {result.figure}")


def _short_schedules(methods: Sequence[str]) -> dict[str, int]:
    """The demo's epochs of the methods it trains (the grid refuses epochs for a method it does not train)."""
    return {m: DEMO_EPOCHS[m] for m in methods if m in DEMO_EPOCHS}


def _checked_methods(methods: Sequence[str]) -> list[str]:
    """The methods by their registered names; ConfigError for none, an unknown one or one given twice, said
    before the demo set is generated and extracted (the grid would say it only after that minute)."""
    from pipeline.orchestration.grid import resolve_methods

    if not methods:
        raise ConfigError(f"--methods is empty: give a comma list, e.g. {','.join(DEMO_METHODS)}")
    return resolve_methods(methods, {})[0]  # an unknown name is a KeyError listing the registered ones
