"""Reporting, the use cases: the methods × bits table of a cache's runs (with an HTML page), or of the
published rows under ``results/`` (with the README block and figure they generate)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.ground.errors import CacheError, ConfigError
from pipeline.ground.paths import require_folder, require_writable
from pipeline.ground.store.cache import Cache
from pipeline.ground.store.lineage import stale_summary
from stages.present.results import DEFAULT_PLAN, TablePlan

log = logging.getLogger(__name__)


@dataclass
class ReportRequest:
    dataset: str | None = None
    metric: str = "map@50"
    out_dir: Path | None = None  # default: the cache's reports/
    published: bool = False  # also the papers' own numbers beside ours
    html: bool = False
    gallery_queries: int = 4
    gallery_seed: int = 0
    top_k: int = 10


def report(cache: Cache, req: ReportRequest, echo: Callable[[str], None] = print) -> None:
    """Tabulate every run of the cache (of ``req.dataset``), write the table files and, asked, the page."""
    from stages.present.tables import methods_by_bits

    if req.gallery_seed < 0:  # numpy refuses it, but only after the table files are written
        raise ConfigError(f"--gallery-seed {req.gallery_seed}: give a whole number >= 0")
    run_ids = _current_run_ids(cache, req.dataset)
    rows = cache.report_rows(req.dataset, run_ids)
    out_dir = req.out_dir or cache.reports_dir
    require_folder(Path(out_dir), "--out-dir")
    require_writable(Path(out_dir), "--out-dir")
    table = methods_by_bits(rows, dataset=req.dataset, metric=req.metric, out_dir=out_dir, beside=f"val_{req.metric}")
    echo(table.markdown)
    echo("written: " + ", ".join(str(p) for p in table.paths.values()))
    if req.html:
        from stages.present.html.report import GallerySettings, build_html_report

        settings = GallerySettings(seed=req.gallery_seed, per_task=req.gallery_queries, top_k=req.top_k)
        page = build_html_report(cache, table, out_dir=out_dir, settings=settings, run_ids=run_ids)
        missing = f"; {len(page.missing_images)} unreadable image(s) shown as placeholders" if page.missing_images else ""
        echo(f"html report ({page.runs} runs{missing}): {page.page}")
    if req.published:
        from stages.present.published import comparison_markdown
        from stages.present.tables import results_table

        echo(comparison_markdown(results_table(rows, table.dataset, "map@50"), table.dataset))


def _current_run_ids(cache: Cache, dataset: str | None) -> list[str] | None:
    """The runs to tabulate: None (all) when every run still describes its cached data; otherwise the current
    ones, with a warning that counts the others (CacheError when none is current)."""
    runs = cache.runs(dataset)
    current, stale = cache.split_current(runs)
    if not stale:
        return None
    summary = stale_summary(stale, len(runs))
    if not current:
        raise CacheError(f"no run to report: {summary}")
    log.warning("left out of the table: %s", summary)
    return [r.run_id for r in current]


@dataclass
class ResultsReportRequest:
    results: Path  # the registry folder (results/)
    dataset: str | None
    readme: Path | None = None  # rewrite this README's generated block
    figure: Path | None = None  # default with readme: docs/<dataset>_map_vs_bits.png beside it; else none
    plan: TablePlan | None = DEFAULT_PLAN  # the cells the table should hold (for the list of missing ones)


def report_results(req: ResultsReportRequest, echo: Callable[[str], None] = print,
                   warn: Callable[[str], None] = print) -> None:
    """The table, spreads and comparison of the published rows; the README block and figure when asked."""
    from pipeline.ground.store.cache import read_report_rows
    from stages.present.plots import plot_map_vs_bits
    from stages.present.results import readme_block, scan_results, update_readme

    if req.dataset is None:
        raise ConfigError("--results needs --dataset (the folder name under results/)")
    if req.readme is not None:  # a README it cannot update is refused before the figure is drawn
        check_readme_outputs(req.readme, req.dataset, req.figure)
    elif req.figure is not None:
        check_figure(req.figure, "--figure")
    base = req.readme.parent if req.readme is not None else Path.cwd()  # never the install location
    # The default figure belongs to the README it is drawn for: without --readme (or --figure) nothing is
    # drawn, since docs/<dataset>_map_vs_bits.png under the current folder may be the committed figure of
    # other results (tabulating a scratch results folder from the repository replaced it).
    figure = req.figure or (readme_figure(req.readme, req.dataset) if req.readme is not None else None)
    scan = scan_results(req.results, req.dataset)
    if scan.current and figure is not None:
        plot_map_vs_bits(read_report_rows(scan.current), figure, dataset=req.dataset)
    shown = None
    if figure is not None:
        try:
            shown = figure.resolve().relative_to(base.resolve())
        except ValueError:
            shown = figure
    block = readme_block(req.results, req.dataset, figure=shown, plan=req.plan)
    echo(block)
    for path, version in scan.stale:
        warn(f"stale: {path} (code version {version})")
    if req.readme is not None:
        changed = update_readme(req.readme, req.dataset, block)
        echo(f"{req.readme}: {'updated' if changed else 'already up to date'}; figure: {figure}")


def readme_figure(readme: Path, dataset: str) -> Path:
    """Where the figure of a README's results block goes by default: ``docs/<dataset>_map_vs_bits.png`` beside it."""
    return Path(readme).parent / "docs" / f"{dataset}_map_vs_bits.png"


def check_figure(figure: Path, option: str) -> None:
    """ConfigError for a figure path cmh cannot write a PNG to: another suffix (a PNG was written under
    ``fig.svg``), a file in place of its folder, or a folder that cannot be written."""
    figure = Path(figure)
    if figure.is_dir():
        raise ConfigError(f"{figure}: Is a directory: give {option} the figure's file path, ending in .png")
    if figure.suffix.lower() != ".png":
        raise ConfigError(f"{option} {figure}: the figure is a PNG image; give a path ending in .png")
    require_folder(figure.parent, option, "a folder for the figure")
    require_writable(figure.parent, option)


def check_readme_outputs(readme: Path, dataset: str, figure: Path | None = None) -> None:
    """DataError or ConfigError naming the fix when the README's block of ``dataset`` or its figure could not be
    written: no block (or a damaged one), a folder that cannot be written. ``cmh table`` says it before training."""
    from stages.present.results import readme_markers

    readme_markers(readme, dataset)
    require_writable(Path(readme).parent, "--readme")
    check_figure(figure if figure is not None else readme_figure(readme, dataset),
                 "--figure" if figure is not None else "--readme (its figure)")
