"""One grid: methods × code lengths × seeds on one cached dataset, then its tables and figure.

``cmh grid``, ``cmh table`` and the demo run this sequence. Cells are independent runs, taken seed by
seed (every cell's seed 1 before any seed 2), so with a GPU they are trained in parallel worker
processes (``workers``; each worker trains one cell at a time on the same device: the hashing heads are
small, and one cell alone leaves most of a large GPU idle). On the CPU the default is one worker: the
cells already share every core, and a run's numbers can depend on the thread count (reductions), so a
sequential grid gives the same codes as ``cmh train``.

Every cell checkpoints as it trains, so a grid killed at any moment and run again continues each cell
from its last checkpoint. With a deadline (``stop_at``), no cell starts after it and a running cell
pauses at its next epoch boundary with a checkpoint, to go on next time.
"""
from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from pipeline.ground.errors import CacheError, ConfigError
from pipeline.ground.paths import require_folder, require_writable
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
    checkpoint_every: int | None = None  # epochs between checkpoints (None: every few minutes)
    stop_at: float | None = None  # a time.time() after which no cell starts and running cells pause


@dataclass
class CellOutcome:
    """What became of one cell: ``trained``, ``cached``, ``paused``, ``not started``, ``busy`` (another
    process is training it) or ``skipped``."""

    status: str
    line: str
    cell: str = ""  # the cell's short name, e.g. "dsah 32b s2"
    run_id: str = ""
    holder: str = ""  # busy: the pid training the cell

    @property
    def finished(self) -> bool:
        return self.status in ("trained", "cached")


@dataclass
class GridResult:
    outcomes: list[CellOutcome]  # one per run, in cell order
    tables: dict[str, object]  # metric -> MethodsTable
    figure: Path | None
    comparison: str  # ours beside the published numbers

    @property
    def run_ids(self) -> list[str]:
        """The runs that finished (trained now or earlier)."""
        return [o.run_id for o in self.outcomes if o.finished]

    @property
    def lines(self) -> list[str]:
        return [o.line for o in self.outcomes]


DEFAULT_GPU_WORKERS = 6


def default_workers(device: str | None) -> int:
    from stages.train.checks import resolved_device

    on_gpu = resolved_device(device).startswith("cuda")
    return DEFAULT_GPU_WORKERS if on_gpu else 1


def grid_cells(req: GridRequest) -> list:
    """One ``TrainRequest`` per method × bits × seed, every seed 1 before any seed 2."""
    from pipeline.orchestration.training import TrainRequest

    return [TrainRequest(dataset=req.dataset, method=method, bits=(bits,), image=req.image, text=req.text,
                         seed=seed, epochs=req.epochs.get(method, req.epochs.get("*")), device=req.device,
                         progress=False, checkpoint_every=req.checkpoint_every, stop_at=req.stop_at)
            for seed in req.seeds for method in req.methods for bits in req.bits]


def resolve_methods(methods: Sequence[str], epochs: Mapping[str, int]) -> tuple[list[str], dict[str, int]]:
    """The methods by their registered names, and ``epochs`` keyed the same way (``"*"`` kept): DJSRH, or an
    alias, is djsrh. ConfigError for a method named twice, or epochs for a method not in the grid.

    Cells look their epochs up by the registered name, so ``--methods DJSRH --epochs DJSRH=2`` trained djsrh's
    full schedule without a word; and ``--methods baseline,Baseline`` trained and published one cell twice."""
    from stages.train import methods as _registered  # noqa: F401  (registers every method; unknown names fail now)
    from stages.train.base import METHODS

    names = [METHODS.resolve(m) for m in methods]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        spelled = sorted({m for m, n in zip(methods, names) if n in twice})
        also = f" ({', '.join(spelled)})" if len(spelled) > len(twice) else ""
        raise ConfigError(f"--methods names {', '.join(twice)} more than once{also}; give each method once")
    resolved: dict[str, int] = {}
    for key, value in epochs.items():
        try:
            name = key if key == "*" else METHODS.resolve(key)
        except KeyError:
            name = None
        if name is None or (name != "*" and name not in names):
            raise ConfigError(f"--epochs: epochs for {key!r}, which is not among --methods {','.join(methods)}")
        if name in resolved:
            raise ConfigError(f"--epochs: epochs for {name} are given twice ({resolved[name]} and {value}); give "
                              f"each method once")
        resolved[name] = value
    return names, resolved


def check_dataset(cache: Cache, dataset: str) -> None:
    """CacheError naming the fix when ``dataset`` is not cached (or not a dataset name): said once, before any
    cell starts, rather than by every cell (each worker said it again, after spawning)."""
    cache.dataset(dataset).items_meta  # noqa: B018  (reads the item table's footer; raises when it is missing)


def check_workers(workers: int | None, cells: int) -> None:
    if workers is not None and (workers < 1 or workers > max(1, cells)):
        raise ConfigError(f"WORKERS={workers} (--workers) for {cells} cell(s): give 1 to {max(1, cells)}")


def _train_cell(cache: Cache, train_req, threads: int | None, skip_config_errors: bool) -> list[CellOutcome]:
    """Runs in a worker (or in-process): one outcome per run of the cell."""
    import torch

    from pipeline.ground.store.checkpoints import RunBusy
    from pipeline.orchestration.training import train_runs

    name = f"{train_req.method} {train_req.bits[0]}b s{train_req.seed}"
    if train_req.stop_at is not None and time.time() >= train_req.stop_at:
        return [CellOutcome("not started", f"{name}: not started (the budget is spent; the next run starts it)", name)]
    if threads:
        torch.set_num_threads(threads)
    try:
        results = train_runs(cache, train_req)
    except RunBusy as exc:  # the other cells go on; this one is someone else's for now
        return [CellOutcome("busy", f"{name}: {exc}", name, holder=exc.holder)]
    except ConfigError as exc:
        if not skip_config_errors:
            raise
        return [CellOutcome("skipped", f"{train_req.method} at {train_req.bits[0]} bits skipped: {exc}", name)]
    return [CellOutcome("paused" if r.paused else "cached" if r.skipped else "trained", r.describe(), name, r.run_id)
            for r in results]


def busy_error(outcomes: Sequence[CellOutcome]) -> CacheError | None:
    """The one-line error for the cells another process was training (left to it), or None when there were none:
    the command ends with it once every other cell is done, so a busy cell is never skipped without a word."""
    busy = [o for o in outcomes if o.status == "busy"]
    if not busy:
        return None
    holders = sorted({o.holder or "another process" for o in busy})
    names = ", ".join(o.cell for o in busy[:6]) + (" ..." if len(busy) > 6 else "")
    return CacheError(f"{len(busy)} cell(s) busy, being written (trained, encoded or indexed) by another process "
                      f"({names}); every other cell is done: rerun when {' and '.join(holders)} finishes")


def _worker_start() -> None:
    """In a worker: die with the grid process, and leave Ctrl-C to it (the grid stops its workers itself; a
    KeyboardInterrupt in each worker would only add tracebacks)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _die_with_parent() -> None:
    """In a worker: be killed when the grid process dies (Linux prctl PR_SET_PDEATHSIG; elsewhere a no-op)."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's worker processes now (SIGTERM, then SIGKILL), dropping the cells not started: a
    worker holds its run's lock only while it lives, and a rerun resumes each cell from its checkpoint."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    pool.shutdown(wait=False, cancel_futures=True)


def train_cells(cache: Cache, cells: Sequence, *, workers: int | None, device: str | None,
                skip_config_errors: bool = False,
                on_outcome: Callable[[CellOutcome], None] = lambda o: None) -> list[CellOutcome]:
    """Train ``cells`` (``TrainRequest``s), sequentially or in worker processes; ``on_outcome`` hears of each
    cell as it ends (in the parent process), and the outcomes come back in cell order."""
    workers = workers or default_workers(device)
    if workers <= 1 or len(cells) <= 1:
        out = []
        for cell in cells:
            for outcome in _train_cell(cache, cell, None, skip_config_errors):
                on_outcome(outcome)
                out.append(outcome)
        return out
    import os

    threads = max(1, (os.cpu_count() or 1) // workers)
    log.info("grid: %d cells on %d worker processes (%d CPU threads each)", len(cells), workers, threads)
    done: dict[int, list[CellOutcome]] = {}
    # spawn: CUDA cannot be re-initialised in a forked child; workers die with the grid (a kill -9 of the
    # grid must not leave orphans training, and holding the runs' locks, behind a rerun)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start)
    try:
        # the workers are spawned on the first submit: SIGINT ignored meanwhile, they start with it ignored
        # (Python keeps an inherited SIG_IGN), so a Ctrl-C while one is still importing gives no traceback
        main = threading.current_thread() is threading.main_thread()  # only it may set handlers
        before = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            futures = {pool.submit(_train_cell, cache, cell, threads, skip_config_errors): i
                       for i, cell in enumerate(cells)}
        finally:
            if main:
                signal.signal(signal.SIGINT, before)
        failed: BaseException | None = None
        for future in as_completed(futures):
            try:
                done[futures[future]] = future.result()
            except Exception as exc:  # the cells still training finish and are heard of (a table publishes
                failed = failed or exc  # them) before the first failure is raised
                cell = cells[futures[future]]
                log.error("%s %db s%d failed: %s", cell.method, cell.bits[0], cell.seed, exc)
                continue
            for outcome in done[futures[future]]:
                on_outcome(outcome)
        if failed is not None:
            raise failed
    except BaseException:  # Ctrl-C, or a failure: no worker may go on training (and holding locks) unseen
        _stop_workers(pool)
        raise
    pool.shutdown(wait=True)
    return [o for i in range(len(cells)) for o in done[i]]  # cell order, whatever finished first


def run_grid(cache: Cache, req: GridRequest, echo: Callable[[str], None] = print,
             on_outcome: Callable[[CellOutcome], None] = lambda o: None) -> GridResult:
    """Train every cell (reusing finished runs, resuming checkpoints), then write the tables and figure."""
    from stages.present.plots import plot_map_vs_bits
    from stages.present.published import comparison_markdown
    from stages.present.tables import methods_by_bits, results_table

    from pipeline.orchestration.training import check_request

    names, epochs = resolve_methods(req.methods, req.epochs)
    req = replace(req, methods=names, epochs=epochs)
    cells = grid_cells(req)
    if not cells:
        raise ConfigError("the grid is empty: give at least one method, code length and seed")
    check_workers(req.workers, len(cells))
    for cell in cells:  # a bad value for the last method fails now, not after the others have trained
        check_request(cell)
    if req.out_dir is not None:  # the tables are written after the training: a file in the way is said now
        require_folder(Path(req.out_dir), "--out-dir", "a folder for the table files")
        require_writable(Path(req.out_dir), "--out-dir")
    check_dataset(cache, req.dataset)

    def heard(outcome: CellOutcome) -> None:
        echo(outcome.line)
        on_outcome(outcome)

    outcomes = train_cells(cache, cells, workers=req.workers, device=req.device,
                           skip_config_errors=req.skip_config_errors, on_outcome=heard)
    run_ids = [o.run_id for o in outcomes if o.finished]
    if not run_ids:
        return GridResult(outcomes, {}, None, "")
    rows = cache.report_rows(req.dataset, run_ids)
    out_dir = req.out_dir if req.out_dir is not None else cache.reports_dir
    tables = {metric: methods_by_bits(rows, dataset=req.dataset, metric=metric, out_dir=out_dir,
                                      beside=f"val_{metric}" if metric == "map@50" else None)
              for metric in ("map@50", "map")}
    comparison = comparison_markdown(results_table(rows, req.dataset, "map@50"), req.dataset)
    png = tables["map@50"].paths["markdown"].parent / f"{req.dataset}_map_vs_bits.png"
    figure = plot_map_vs_bits(rows, png, dataset=req.dataset)
    return GridResult(outcomes, tables, figure, comparison)
