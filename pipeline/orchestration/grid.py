"""One grid: methods × code lengths × seeds on one cached dataset, then its tables and figure.

``cmh grid`` and the demo both run this sequence. Cells are independent runs, so with a GPU they are
trained in parallel worker processes (``workers``; each worker trains one cell at a time on the same
device: the hashing heads are small, and one cell alone leaves most of a large GPU idle). On the CPU
the default is one worker: the cells already share every core, and a run's numbers can depend on the
thread count (reductions), so a sequential grid gives the same codes as ``cmh train``.
"""
from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from pipeline.ground.errors import ConfigError
from pipeline.ground.store.cache import Cache

log = logging.getLogger(__name__)


@dataclass
class GridRequest:
    dataset: str
    methods: Sequence[str]
    bits: Sequence[int] = (16, 32, 64, 128)
    seeds: Sequence[int] = (1,)
    image: str | None = None
    text: str | None = None
    epochs: dict[str, int] = field(default_factory=dict)  # method (or "*") -> epochs
    workers: int | None = None  # None: 1 on the CPU, DEFAULT_GPU_WORKERS with CUDA
    device: str | None = None
    out_dir: Path | None = None
    #: a method that cannot give a code length (CCA's rank) is skipped with the reason instead of failing
    skip_config_errors: bool = False


@dataclass
class GridResult:
    run_ids: list[str]
    lines: list[str]  # one per cell: run id and mAP@50, or why it was skipped
    tables: dict[str, object]  # metric -> MethodsTable
    figure: Path | None
    comparison: str  # ours beside the published numbers


DEFAULT_GPU_WORKERS = 6


def default_workers(device: str | None) -> int:
    import torch

    on_gpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    return DEFAULT_GPU_WORKERS if on_gpu else 1


def _cells(req: GridRequest):
    from pipeline.orchestration.training import TrainRequest

    for seed in req.seeds:
        for method in req.methods:
            for bits in req.bits:
                yield TrainRequest(dataset=req.dataset, method=method, bits=(bits,), image=req.image, text=req.text,
                                   seed=seed, epochs=req.epochs.get(method, req.epochs.get("*")),
                                   device=req.device, progress=False)


def _train_cell(cache: Cache, train_req, threads: int | None, skip_config_errors: bool) -> list[tuple[str, str]]:
    """Runs in a worker (or in-process): (run_id or "", line) per run."""
    import torch

    from pipeline.ground.errors import ConfigError
    from pipeline.orchestration.training import train_runs

    if threads:
        torch.set_num_threads(threads)
    try:
        results = train_runs(cache, train_req)
    except ConfigError as exc:
        if not skip_config_errors:
            raise
        return [("", f"{train_req.method} at {train_req.bits[0]} bits skipped: {exc}")]
    return [(r.run_id, f"{r.run_id}: i2t {r.summary.get('i2t_map@50', float('nan')):.4f} "
                       f"t2i {r.summary.get('t2i_map@50', float('nan')):.4f}"
                       + (" (cached)" if r.skipped else "")) for r in results]


def run_grid(cache: Cache, req: GridRequest, echo: Callable[[str], None] = print) -> GridResult:
    """Train every cell (reusing finished runs), then write the tables and the mAP-vs-bits figure."""
    import os

    from stages.present.plots import plot_map_vs_bits
    from stages.present.published import comparison_markdown
    from stages.present.tables import methods_by_bits, results_table
    from stages.train.base import METHODS
    from stages.train import methods  # noqa: F401  (registers every method; unknown names fail now)

    from pipeline.orchestration.training import check_request

    req = replace(req, methods=[METHODS.resolve(m) for m in req.methods])
    cells = list(_cells(req))
    if not cells:
        raise ConfigError("the grid is empty: give at least one method, code length and seed")
    for cell in cells:  # a bad value for the last method fails now, not after the others have trained
        check_request(cell)
    workers = req.workers or default_workers(req.device)
    pairs: list[tuple[str, str]] = []
    if workers <= 1 or len(cells) == 1:
        for cell in cells:
            for pair in _train_cell(cache, cell, None, req.skip_config_errors):
                pairs.append(pair)
                echo(pair[1])
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        log.info("grid: %d cells on %d worker processes (%d CPU threads each)", len(cells), workers, threads)
        # spawn: CUDA cannot be re-initialised in a forked child
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_train_cell, cache, cell, threads, req.skip_config_errors): i
                       for i, cell in enumerate(cells)}
            done: dict[int, list[tuple[str, str]]] = {}
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                for pair in done[futures[future]]:
                    echo(pair[1])
        pairs = [pair for i in range(len(cells)) for pair in done[i]]  # cell order, whatever finished first
    run_ids = [rid for rid, _ in pairs if rid]
    lines = [line for _, line in pairs]
    if not run_ids:
        return GridResult([], lines, {}, None, "")
    rows = cache.report_rows(req.dataset, run_ids)
    out_dir = req.out_dir if req.out_dir is not None else cache.reports_dir
    tables = {metric: methods_by_bits(rows, dataset=req.dataset, metric=metric, out_dir=out_dir,
                                      beside=f"val_{metric}" if metric == "map@50" else None)
              for metric in ("map@50", "map")}
    comparison = comparison_markdown(results_table(rows, req.dataset, "map@50"), req.dataset)
    png = tables["map@50"].paths["markdown"].parent / f"{req.dataset}_map_vs_bits.png"
    figure = plot_map_vs_bits(rows, png, dataset=req.dataset)
    return GridResult(run_ids, lines, tables, figure, comparison)
