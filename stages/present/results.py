"""The results registry: published report rows under ``results/``, committed with the code.

The cache holds runs on one machine and vanishes with it; ``results/<dataset>/<run_id>.parquet`` is a
copy of one run's ``report.parquet`` (metric rows only: no codes, no model), kept in the repository so
that the README's tables can be regenerated and extended one machine after another. Every row carries
its provenance as columns: config hash, epochs and the paper's epochs, seed, features, split
protocol, hardware, seconds, code version and git revision.

A file whose ``code_version`` differs from ``pipeline.ground.versions.RESULTS_VERSION`` was made by code that may give
other codes for the same seed: it is listed as stale and left out of every table, never mixed in.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.ground.versions import RESULTS_VERSION
from pipeline.ground.errors import CacheError, DataError
from pipeline.ground.paths import require_folder, require_writable
from pipeline.ground.store.parquet import read_metadata, read_table, write_bytes_atomic, write_table_atomic
from stages.present.published import comparison_markdown
from pipeline.ground.store.cache import read_report_rows
from pipeline.ground.store.runs import RunDir
from stages.present.tables import MethodsTable, methods_by_bits, results_table

log = logging.getLogger(__name__)

#: Columns a report must have to be published (older runs lack some: retrain them).
PROVENANCE = ("run_id", "dataset", "method", "config_hash", "epochs", "paper_epochs", "seed", "bits",
              "image_features", "text_features", "split_protocol", "hardware", "train_s", "code_version", "git")

#: Arrow type checks of the columns a result row is read by (value columns, ids, provenance).
_TYPES: dict[str, tuple[Any, str]] = {
    **{c: (pa.types.is_string, "text") for c in ("task", "metric", "run_id", "dataset", "method", "config_hash",
                                                 "image_features", "text_features", "split_protocol", "hardware",
                                                 "code_version", "git")},
    "value": (lambda t: pa.types.is_floating(t) or pa.types.is_integer(t), "numbers"),
    **{c: (pa.types.is_integer, "whole numbers") for c in ("seed", "bits")},
    **{c: (lambda t: pa.types.is_integer(t) or pa.types.is_null(t), "whole numbers") for c in ("epochs", "paper_epochs")},
    "train_s": (lambda t: pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t), "numbers"),
}
#: Metrics that are fractions: mAP, precision (at K, within a radius), validation mAP.
_SCORE = re.compile(r"^(val_)?(map|map@\d+|p@\d+|p@r\d+)$")


def row_problem(table: pa.Table) -> str | None:
    """Why these report rows cannot be right (a column missing or of another type, a score outside [0, 1],
    an impossible code length or seed), or None. Published files are read only after this check."""
    missing = [c for c in ("task", "metric", "value", *PROVENANCE) if c not in table.column_names]
    if missing:
        return f"lacks the column(s) {missing}"
    for name, (ok, what) in _TYPES.items():
        if name in table.column_names and not ok(table.schema.field(name).type):
            return f"column {name!r} holds {table.schema.field(name).type}, not {what}"
    unnamed = [c for c in _NAMED if c in table.column_names and table.column(c).null_count]
    if unnamed:
        return f"a row has no {unnamed[0]}"
    tasks = set(table.column("task").to_pylist()) - set(TASKS)
    if tasks:
        return f"task {sorted(tasks)[0]!r} is none of {', '.join(TASKS)}"
    one_run = [c for c in ("run_id", "method", "bits", "seed", "config_hash")
               if len(set(table.column(c).to_pylist())) > 1]
    if one_run:  # a report is one run's: rows of another length or seed would land in another cell
        return f"its rows disagree on {one_run[0]} (one run's rows share it)"
    keys = list(zip(*(table.column(c).to_pylist() for c in ("task", "metric", *(["k"] if "k" in table.column_names
                                                                               else [])))))
    if len(set(keys)) != len(keys):  # a second row of one score would be averaged in as another seed
        return f"it holds the score {'/'.join(map(str, next(k for k in keys if keys.count(k) > 1)[:2]))} twice"
    for row in table.select(["metric", "value", "bits", "seed"]).to_pylist():
        value, metric = row["value"], row["metric"]
        if metric is None or value is None or value != value:
            return f"a row has no metric or no value ({metric}={value})"
        if _SCORE.match(metric) and not 0.0 <= value <= 1.0:
            return f"{metric}={value} is outside [0, 1]"
        if row["bits"] is None or row["bits"] < 1 or row["seed"] is None or row["seed"] < 0:
            return f"bits={row['bits']}, seed={row['seed']}: a code length >= 1 and a seed >= 0 are needed"
    return None


#: Text columns every row names (a null would stand in no cell, or sort against text).
_NAMED = ("task", "metric", "run_id", "dataset", "method", "config_hash", "hardware", "split_protocol", "code_version")
#: A report's tasks: the retrieval directions (cross-modal, and the intra-modal sanity checks), and the
#: modalities the code-health rows describe.
TASKS = ("i2t", "t2i", "i2i", "t2t", "image", "text")


def _file_problem(table: pa.Table, path: Path, dataset: str) -> str | None:
    """Why a result file does not belong where it is: rows of several runs, or of another dataset."""
    runs = set(table.column("run_id").to_pylist())
    datasets = set(table.column("dataset").to_pylist())
    if len(runs) != 1:
        return f"it holds rows of {len(runs)} runs ({', '.join(sorted(map(str, runs))[:3])}); one run per file"
    if datasets != {dataset}:
        return f"its rows are of dataset {', '.join(sorted(map(str, datasets)))}, not of {dataset!r} (its folder)"
    return None


README_START = "<!-- results:{dataset} generated by `cmh report --results results/ --dataset {dataset} --readme README.md`; do not edit -->"
README_END = "<!-- /results:{dataset} -->"


@dataclass
class ResultsScan:
    """The result files of one dataset: those of the current code version, and the stale ones."""

    current: list[Path] = field(default_factory=list)
    stale: list[tuple[Path, str]] = field(default_factory=list)  # (file, its code version)


@dataclass(frozen=True)
class Publication:
    """One run's result file as it is published: its rows, its file metadata, and its name in a registry."""

    table: pa.Table
    meta: dict[str, Any]
    name: str  # "<dataset>/<run_id>.parquet"

    def write(self, root: Path) -> Path:
        """The file, written atomically under ``root`` (the registry, or a staging folder)."""
        return write_table_atomic(self.table, Path(root) / self.name, metadata=self.meta)


def publish_runs(runs: list[RunDir | Path], results_root: Path, *, replace: bool = False) -> list[Path]:
    """Copy each run's report rows to ``<results_root>/<dataset>/<run_id>.parquet`` (atomic), once every run
    has passed ``plan_publication``."""
    return [p.write(results_root) for p in plan_publication(runs, results_root, replace=replace)]


def plan_publication(runs: list[RunDir | Path], results_root: Path, *, replace: bool = False) -> list[Publication]:
    """The result file of each run, checked against ``results_root`` and not yet written.

    Every run is checked before any file is written. Rows made on another split protocol, other split
    sizes or other data than the results already published for the dataset (the file a run would
    replace, and the others its table is drawn from) are refused unless ``replace``: a run of a
    ``LIMIT=`` extraction named like the benchmark would otherwise replace the benchmark's numbers."""
    results_root = Path(results_root)
    require_folder(results_root, "--results", "the results registry folder (results/)")
    require_writable(results_root, "--results")
    planned = []
    for run in runs:
        run = run if isinstance(run, RunDir) else RunDir(Path(run))
        table, meta = _publishable(run)
        name = f"{meta['dataset']}/{meta['run_id']}.parquet"
        if not replace:
            _refuse_other_data(results_root / name, table, meta)
        planned.append(Publication(table, meta, name))
    return planned


def _publishable(run: RunDir) -> tuple[pa.Table, dict[str, Any]]:
    """The run's report rows and the file metadata they are published with (the data fingerprint added)."""
    report = run.report_path
    if not report.exists():
        raise CacheError(f"run {run.run_id} has no {report.name}: its training was interrupted; run the same "
                         f"`cmh train` command again to finish it, then publish")
    fix = "train the run again with `cmh train ... --force`, then publish"
    table = read_table(report, fix=fix)
    missing = [c for c in PROVENANCE if c not in table.column_names]
    if missing:
        raise DataError(f"{report} lacks the provenance column(s) {missing}: it was written by an older cmh; "
                        f"retrain the run (cmh train --force) before publishing it")
    if table.num_rows == 0:  # "mixes runs []" would misname it
        raise DataError(f"{report} holds no rows; {fix}")
    ids = set(table.column("run_id").to_pylist())
    datasets = set(table.column("dataset").to_pylist())
    if len(ids) != 1 or len(datasets) != 1:
        raise DataError(f"{report} mixes runs {sorted(ids)} or datasets {sorted(datasets)}; one run per report")
    problem = row_problem(table)
    if problem:
        raise DataError(f"{report}: {problem}; {fix}")
    config = run.read_config() if run.config_path.exists() else {}
    meta = {**read_metadata(report, fix), "run_id": ids.pop(), "dataset": datasets.pop(),
            "data_fingerprint": (config.get("data") or {}).get("fingerprint")}
    return table, meta


def _published_data(path: Path) -> tuple[str | None, str | None]:
    """(split protocol with sizes, data fingerprint or None) of a published file."""
    # it may be another run's file: --replace publishes without this comparison, and leaves that file as it is
    fix = "delete it or publish its own run again, or pass --replace to publish without comparing with it"
    table = read_table(path, fix=fix)
    if "split_protocol" not in table.column_names:
        raise DataError(f"{path} has no split_protocol column: {fix}")
    protocols = set(table.column("split_protocol").to_pylist())
    fingerprint = read_metadata(path, fix).get("data_fingerprint")
    return (protocols.pop() if len(protocols) == 1 else ", ".join(sorted(map(str, protocols)))), fingerprint


def _refuse_other_data(dest: Path, table: pa.Table, meta: dict[str, Any]) -> None:
    """DataError when ``table`` was made on other splits or data than the results published for its dataset."""
    protocol = table.column("split_protocol")[0].as_py()
    fingerprint = meta.get("data_fingerprint")
    for path in sorted(dest.parent.glob("*.parquet")) if dest.parent.is_dir() else []:
        old_protocol, old_fingerprint = _published_data(path)
        differs = []
        if old_protocol != protocol:
            differs.append(f"split {old_protocol!r} there, {protocol!r} here")
        if old_fingerprint and fingerprint and old_fingerprint != fingerprint:
            differs.append(f"data fingerprint {old_fingerprint} there, {fingerprint} here")
        if differs:
            what = "would replace" if path == dest else "would be tabulated beside"
            raise DataError(f"run {meta['run_id']} {what} {path}, which was published from other data "
                            f"({'; '.join(differs)}): publish it into another --results folder, or extract its "
                            f"data under another --name; pass --replace to publish it there anyway")


def scan_results(results_root: Path, dataset: str) -> ResultsScan:
    """Split the published files of ``dataset`` into current and stale (another code version)."""
    folder = Path(results_root) / dataset
    require_folder(Path(results_root), "--results", "the results registry folder (results/)")
    if not folder.is_dir():
        raise CacheError(f"no published results for {dataset!r} under {results_root}; publish runs first "
                         f"(cmh publish --dataset {dataset} --results {results_root})")
    scan = ResultsScan()
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise CacheError(f"no published results for {dataset!r} in {folder}; publish runs first "
                         f"(cmh publish --dataset {dataset} --results {results_root})")
    seen: dict[str, Path] = {}
    misnamed: list[tuple[Path, str]] = []
    for path in files:
        fix = f"delete it, or publish its run again (`cmh publish --dataset {dataset} --run {path.stem}`)"
        table = read_table(path, fix=fix)  # a damaged or foreign file: named, never skipped silently
        problem = row_problem(table) or _file_problem(table, path, dataset)
        if problem:
            raise DataError(f"{path} is not a result file cmh can trust: {problem}; {fix}")
        run_id = table.column("run_id")[0].as_py()
        if run_id in seen:  # a copy would count one seed twice (and give a spread of 0)
            raise DataError(f"{path} and {seen[run_id]} both hold run {run_id}: delete the copy")
        seen[run_id] = path
        if path.stem != run_id:  # said after the loop, once no second file of the run says "delete the copy"
            misnamed.append((path, run_id))
        versions = set(table.column("code_version").to_pylist())
        version = ",".join(sorted(str(v) for v in versions))
        if versions == {RESULTS_VERSION}:
            scan.current.append(path)
        else:
            scan.stale.append((path, version))
    if misnamed:  # cells are planned by file name: a renamed one would be trained and published again, beside it
        path, run_id = misnamed[0]
        raise DataError(f"{path} holds run {run_id}, and a result file is named after its run: rename it to "
                        f"{run_id}.parquet")
    return scan


def current_run_ids(results_root: Path, dataset: str) -> set[str]:
    """Run ids with a result file of the current code version (none when nothing is published yet)."""
    if not (Path(results_root) / dataset).is_dir():
        return set()
    return {p.stem for p in scan_results(results_root, dataset).current}


def results_tables(results_root: Path, dataset: str, out_dir: Path | None = None,
                   metric: str = "map@50") -> tuple[MethodsTable, ResultsScan]:
    """The methods × bits table of the current result files (validation score beside the test score)."""
    scan = scan_results(results_root, dataset)
    if not scan.current:
        raise CacheError(f"every result file of {dataset!r} is stale (code version other than {RESULTS_VERSION}): "
                         f"retrain and publish them")
    table = methods_by_bits(read_report_rows(scan.current), dataset, metric, out_dir=out_dir,
                            beside=f"val_{metric}")
    return table, scan


def within_noise(dataset: str, files: list[Path], metric: str = "map@50") -> list[str]:
    """Per column, the configurations whose mean is within one std of the column's best.

    Two means closer than the larger of their sample stds cannot be told apart by these seeds (a
    single-seed cell has no std: the other cell's is used); when neither has one, the line says so.
    """
    from stages.present.reading import shown_name

    rows = results_table(read_report_rows(files), dataset, metric)
    columns: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        columns.setdefault((r["task"], int(r["bits"])), []).append(r)
    lines = []
    for (task, bits), group in sorted(columns.items()):
        best = max(group, key=lambda r: r["mean"])
        close, unknown = [], []
        for r in group:
            if r is best:
                continue
            stds = [float(x) for x in (best["std"], r["std"]) if x is not None]  # a single seed has none
            if not stds:
                unknown.append(r)
            elif best["mean"] - r["mean"] < max(stds):
                close.append(r)
        head = f"{task} {bits}: best {shown_name(best)} ({_mean_std(best)})"
        if close:
            line = f"{head}; within one std of it: " + ", ".join(f"{shown_name(r)} ({_mean_std(r)})" for r in close)
        elif len(unknown) < len(group) - 1:
            line = f"{head}, ahead of " + ("every other" if not unknown else "every other with a spread") + \
                   " by more than the larger std"
        else:
            line = head
        if unknown:
            line += "; one seed on both sides, no spread to compare: " + ", ".join(shown_name(r) for r in unknown)
        lines.append(line)
    return lines


def _mean_std(row: dict[str, Any]) -> str:
    return f"{row['mean']:.4f}" if row["std"] is None else f"{row['mean']:.4f} ± {row['std']:.4f}"


@dataclass(frozen=True)
class TablePlan:
    """The cells the table is meant to hold (``cmh table``'s plan), for the list of missing ones."""

    methods: tuple[str, ...]
    bits: tuple[int, ...]
    seeds: tuple[int, ...]

    @property
    def cells(self) -> int:
        return len(self.methods) * len(self.bits) * len(self.seeds)


#: The published table: every method at the papers' four code lengths and three seeds (``cmh table``).
DEFAULT_PLAN = TablePlan(("baseline", "cca-itq", "djsrh", "dsah", "ccah", "ucmfh", "cfrh", "dsprh", "fjsph"),
                         (16, 32, 64, 128), (1, 2, 3))


def readme_block(results_root: Path, dataset: str, figure: Path | None = None, plan: TablePlan | None = None) -> str:
    """The README section for ``dataset``: table, provenance, spreads, the reading across code lengths, the
    missing cells and stale files, all generated from ``results/``."""
    from stages.present.reading import across_lengths, device_lines, missing_cells, missing_lines

    table, scan = results_tables(results_root, dataset)
    all_rows = read_report_rows(scan.current)
    rows = [r for r in all_rows.select(["run_id", "method", "bits", "hardware", "seed", "train_s", "metric",
                                        *(["device"] if "device" in all_rows.column_names else [])]).to_pylist()
            if r["metric"] == "map@50"]
    hardware = sorted({r["hardware"] for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    train_s = sum(float(r["train_s"] or 0.0) for r in rows) / 2  # two map@50 rows (i2t, t2i) per run
    stats = results_table(all_rows, dataset, "map@50")
    lines = [table.markdown.rstrip(), "",
             f"{len(scan.current)} runs, seeds {', '.join(map(str, seeds))}, code version {RESULTS_VERSION}; "
             f"{_hours(train_s)} of training in all on: {'; '.join(hardware)}. " + device_lines(rows)[0], ""]
    lines += ["Within noise (a mean less than one std below the best of its column):", ""]
    lines += [f"- {line}" for line in within_noise(dataset, scan.current)]
    lines += ["", "Across code lengths (means told apart only by more than the larger std over seeds):", ""]
    lines += [f"- {line}" for line in across_lengths(stats)]
    if plan is not None:
        lines += [""] + missing_lines(missing_cells(rows, plan.methods, plan.bits, plan.seeds), plan.cells)
    published = comparison_markdown(stats, dataset)
    lines += ["", "Beside the papers' own numbers (other features and tie rules: compare trends):", "",
              published.split("\n", 2)[2].rstrip()]
    if scan.stale:
        lines += ["", "Stale (another code version; left out of the table): "
                  + ", ".join(f"{p.name} ({v})" for p, v in scan.stale)]
    if figure is not None:
        lines += ["", f"![mAP@50 against code length]({figure.as_posix()})"]
    return "\n".join(lines) + "\n"


def _hours(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown time"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def readme_markers(readme: Path, dataset: str) -> tuple[str, str, str]:
    """(text before the block, the block, text after it) of ``readme``; DataError naming the fix when the
    two marker lines are not there once each, start before end."""
    readme = Path(readme)
    if not readme.is_file():
        raise DataError(f"--readme {readme} is not a file: give the README that holds the results block")
    raw = readme.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # a README saved as Latin-1 or UTF-16 by an editor
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{readme} line {line} is not UTF-8 (byte {raw[exc.start]:#04x}): save the README as "
                        f"UTF-8, then run the command again") from None
    start, end = README_START.format(dataset=dataset), README_END.format(dataset=dataset)
    counts = (text.count(start), text.count(end))
    if counts == (0, 0):
        raise DataError(f"{readme} has no generated block for {dataset!r}: add the two lines {start} and {end} "
                        f"where the table belongs (or leave out --readme)")
    if counts != (1, 1):
        raise DataError(f"{readme} holds the start marker of the {dataset!r} block {counts[0]} time(s) and its end "
                        f"marker {counts[1]} time(s): keep one of each ({start} ... {end})")
    at_start, at_end = text.index(start), text.index(end)
    if at_end < at_start:
        line = text.count("\n", 0, at_end) + 1
        raise DataError(f"{readme} line {line}: the end marker {end} is above the start marker of the {dataset!r} "
                        f"block (line {text.count(chr(10), 0, at_start) + 1}); move it below the start marker")
    return text[:at_start + len(start)], text[at_start + len(start):at_end], text[at_end:]


def update_readme(readme: Path, dataset: str, block: str) -> bool:
    """Replace the generated block of ``dataset`` in ``readme`` (between its markers); True when it changed."""
    head, old, tail = readme_markers(readme, dataset)
    newline = "\r\n" if old.startswith("\r\n") else "\n"  # a README with Windows line ends keeps them
    block = block.replace("\n", newline)
    if old == f"{newline}{block}":
        return False
    write_bytes_atomic(f"{head}{newline}{block}{tail}".encode("utf-8"), readme)
    return True


def readme_block_in(readme: Path, dataset: str) -> str | None:
    """The generated block currently in ``readme`` (None when it has none)."""
    try:
        return readme_markers(readme, dataset)[1].lstrip("\r\n").replace("\r\n", "\n")
    except DataError:
        return None
