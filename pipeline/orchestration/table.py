"""The published table, the use case: train only the cells ``results/`` lacks, publish each as it finishes.

``cmh table`` (``make table``) plans every method × bits × seed cell, skips those whose report rows are
already in ``results/<dataset>/`` with the same run id (hence config hash) and the current code version,
and trains the rest, every cell's seed 1 before any seed 2. Each finished cell is copied into
``results/`` at once, so a kill loses at most the running cells' work since their last checkpoint, and
a rerun resumes them. ``budget_h`` stops new cells from starting after that many hours and pauses the
running ones at a checkpoint. ``pack`` adds each row this call publishes to one archive, as it is published,
that unpacks into ``results/`` (how the rows of a GPU pass come home). With ``readme``, the README block and
figure are regenerated from ``results/`` at the end.
"""
from __future__ import annotations

import logging
import math
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from pipeline.ground.errors import ConfigError
from pipeline.ground.store.cache import Cache
from pipeline.ground.store.lock import folder_held_alone
from pipeline.ground.store.parquet import write_bytes_atomic
from stages.present.results import DEFAULT_PLAN, Publication
from pipeline.orchestration.grid import (CellOutcome, GridRequest, check_dataset, check_workers, grid_cells,
                                         resolve_methods, train_cells)

log = logging.getLogger(__name__)

ALL_METHODS = DEFAULT_PLAN.methods


@dataclass
class TableRequest:
    dataset: str = "mirflickr"
    methods: Sequence[str] = ALL_METHODS
    bits: Sequence[int] = DEFAULT_PLAN.bits
    seeds: Sequence[int] = DEFAULT_PLAN.seeds
    results: Path = Path("results")
    readme: Path | None = None  # regenerate this README's block and figure from results/ at the end
    budget: str | float | None = None  # hours after which no cell starts and running cells pause
    workers: int | None = None
    device: str | None = None
    epochs: dict[str, int] = field(default_factory=dict)  # method (or "*") -> epochs; a dry run's short schedule
    checkpoint_every: int | None = None
    pack: Path | None = None  # a .tar.gz of the rows this call published


@dataclass
class TableResult:
    planned: int  # cells in the table
    already: list[str]  # run ids already in results/ (current code version)
    outcomes: list[CellOutcome]  # the cells trained (or not) now
    published: list[Path]  # result files written now
    archive: Path | None = None

    @property
    def missing(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if not o.finished]


def parse_budget(budget: str | float | None) -> float | None:
    """Hours as a positive number; ConfigError naming the fix otherwise."""
    if budget is None:  # an empty --budget is refused below: `--budget "$B"` with B unset is no budget by mistake
        return None
    try:
        hours = float(budget)
    except (TypeError, ValueError):
        hours = math.nan
    if not math.isfinite(hours) or hours <= 0:
        raise ConfigError(f"BUDGET={budget} (--budget): give the hours as a number > 0, e.g. BUDGET=2.5, or leave it "
                          f"out to train every missing cell")
    return hours


def build_table(cache: Cache, req: TableRequest, echo: Callable[[str], None] = print) -> TableResult:
    from pipeline.orchestration.training import check_request, planned_run_ids
    from stages.present.results import current_run_ids, plan_publication

    hours = parse_budget(req.budget)
    names, epochs = resolve_methods(req.methods, req.epochs)
    grid = GridRequest(dataset=req.dataset, methods=names, bits=req.bits, seeds=req.seeds, epochs=epochs,
                       workers=req.workers, device=req.device, checkpoint_every=req.checkpoint_every,
                       stop_at=None if hours is None else time.time() + hours * 3600)
    cells = grid_cells(grid)
    if not cells:
        raise ConfigError("the table is empty: give at least one method, code length and seed")
    check_workers(req.workers, len(cells))  # 0 or less, or more than the table has cells: refused
    for cell in cells:  # every check that needs no data, before the first cell trains
        check_request(cell)
    check_dataset(cache, req.dataset)
    _check_outputs(req)  # what is written after the training, checked before it
    published_ids = current_run_ids(req.results, req.dataset)
    todo, already = [], []
    for cell in cells:
        (run_id,) = planned_run_ids(cell)
        if run_id in published_ids:
            already.append(run_id)
        else:
            todo.append(cell)
    echo(f"{req.dataset}: {len(cells)} cells; {len(already)} already in {req.results} (this code version), "
         f"{len(todo)} to train" + (f", within {hours:g} h" if hours else ""))
    workers = req.workers
    if workers is not None and todo and workers > len(todo):  # a rerun of `make table WORKERS=6` as cells run
        workers = len(todo)  # out: refusing it would leave the last cells to a WORKERS= the user must lower
        echo(f"WORKERS={req.workers}: {len(todo)} cell(s) left to train, so {workers} worker(s)")
    published: list[Path] = []

    def publish(outcome: CellOutcome) -> None:
        echo(outcome.line)
        if outcome.finished:
            planned = plan_publication([cache.run(outcome.run_id)], req.results)
            if req.pack is not None:  # into the archive first: a cell found published by a rerun ("already in
                _pack_staged(planned, Path(req.pack))  # results/") is never packed, so a failed or killed pack
            published.extend(p.write(req.results) for p in planned)  # must leave it unpublished, for the rerun

    outcomes = train_cells(cache, todo, workers=workers, device=req.device, on_outcome=publish)
    result = TableResult(len(cells), already, outcomes, published)
    if req.pack is not None and published:
        result.archive = Path(req.pack)
        echo(f"{len(published)} new result file(s) packed into {result.archive} (beside what it held; unpack with "
             f"`tar -xzf {result.archive.name} -C {req.results}`)")
    missing = result.missing
    echo(f"{len(published)} cell(s) published now; {len(missing)} still missing" +
         (": " + ", ".join(o.cell for o in missing[:8]) + (" ..." if len(missing) > 8 else "")
          if missing else ""))
    if req.readme is not None and not (published or already or current_run_ids(req.results, req.dataset)):
        # a first call whose cells all paused or were busy: no block to draw yet, which is no error
        echo(f"{req.readme}: left as it is (nothing of {req.dataset!r} is published in {req.results} yet)")
    elif req.readme is not None:
        from pipeline.orchestration.reporting import ResultsReportRequest, report_results

        report_results(ResultsReportRequest(req.results, req.dataset, req.readme), echo=lambda line: None,
                       warn=echo)
        echo(f"{req.readme}: the results block and figure regenerated from {req.results}")
    return result


def _check_outputs(req: TableRequest) -> None:
    """ConfigError (or DataError) naming the fix for an output the table could write only after hours of
    training: a results folder that is a file or cannot be written, a README without the dataset's block, a
    ``--pack`` archive that cannot be added to."""
    from pipeline.ground.paths import require_folder, require_writable
    from pipeline.orchestration.reporting import check_readme_outputs

    results = Path(req.results)
    require_folder(results / req.dataset, "--results", "the results registry folder (results/)")
    require_writable(results / req.dataset, "--results")
    if req.readme is not None:  # no block for this dataset, or no writable docs/: said now, not after the training
        check_readme_outputs(req.readme, req.dataset)
    if req.pack is not None:
        pack = Path(req.pack)
        registry = (results / req.dataset).resolve()
        if pack.resolve() in (results.resolve(), registry) or registry in pack.resolve().parents:
            raise ConfigError(f"--pack {pack} is in the results folder {registry}, whose files are read as result "
                              f"rows: give an archive path outside it (e.g. rows.tar.gz)")
        if not pack.name.endswith((".tar.gz", ".tgz")):  # it is one, whatever it is called
            raise ConfigError(f"--pack {pack}: the archive is a gzipped tar; give a name ending in .tar.gz")
        require_folder(pack.parent, "--pack", "an archive path in a folder")
        require_writable(pack.parent, "--pack")
        if pack.exists() or pack.is_symlink():
            _packed_members(pack)  # an archive that cannot be read would be lost to the merge: refused now


def _packed_members(out: Path) -> dict[str, bytes]:
    """The members of an existing ``--pack`` archive (name -> bytes); ConfigError when it is not one."""
    fix = "move it away (or give --pack another path) and run the command again"
    if not out.is_file():
        raise ConfigError(f"--pack {out} exists and is not a file: {fix}")
    try:
        with tarfile.open(out, "r:gz") as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ConfigError(f"--pack {out} exists but is not a readable .tar.gz ({type(exc).__name__}), so the new "
                          f"rows cannot be added to it: {fix}") from None


def _pack_staged(planned: Sequence[Publication], out: Path) -> Path:
    """Add the result files ``planned`` to the archive ``out``, written as they will be published, in a scratch
    folder."""
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cmh-pack-") as tmp:  # not beside the archive: $OUT takes few files
        return _pack([p.write(Path(tmp)) for p in planned], Path(tmp), out)


def _pack(files: Sequence[Path], results: Path, out: Path) -> Path:
    """``out`` (.tar.gz) with ``<dataset>/<run>.parquet`` members, written atomically. An archive already at
    ``out`` (an earlier pass) keeps its members: a file packed now replaces only its own earlier copy."""
    import io

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = {str(Path(f).resolve().relative_to(Path(results).resolve())): Path(f) for f in files}
    with folder_held_alone(out.parent):  # two tables packing into one archive: neither loses the other's rows
        kept = {name: data for name, data in (_packed_members(out) if out.exists() else {}).items()
                if name not in new}
        buffer = io.BytesIO()  # the rows of a table are a few MB: built in memory, then written atomically
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name, data in sorted(kept.items()):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
                tar.addfile(info, io.BytesIO(data))
            for name, f in new.items():
                tar.add(f, arcname=name)
        write_bytes_atomic(buffer.getvalue(), out)
    return out
