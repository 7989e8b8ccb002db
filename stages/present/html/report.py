"""``cmh report --html``: one offline page per dataset with the results table, figures and retrieval galleries.

``<reports>/<dataset>.html`` holds the methods × bits table, the mAP-vs-bits figure and, per run, a
collapsed section with its precision–recall and P@K curves, its validation curve when the run recorded
one, and its gallery. Images are relative links (thumbnails under ``<reports>/<dataset>/thumbs``, run
figures under ``<cache>/runs``), so the page opens from disk without a network. Beside the page,
``<dataset>.report.json`` records the settings, the chosen queries, the software versions, the data
fingerprint and every image that could not be shown.

Every file the page links is content- or input-addressed (``<dataset>/figures/map_vs_bits-<hash>.png``,
``validation_<run>-<hash>.png``, thumbnails named by their image), so another command (``cmh grid``, a
report over other runs) writes new names and never changes what an open page shows.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipeline.ground.errors import CacheError
from pipeline.ground.provenance import environment
from pipeline.ground.store.cache import Cache
from pipeline.ground.store.parquet import write_bytes_atomic, write_json_atomic
from pipeline.ground.store.runs import RunDir
from stages.present.html.gallery import Items, pick_queries, render_gallery, run_gallery
from stages.present.html.page import esc, legend_html, methods_table_html, page_html, rel_url
from stages.present.plots import plot_map_vs_bits, plot_run, plot_validation
from stages.present.tables import MethodsTable
from stages.present.html.thumbnails import ThumbnailStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GallerySettings:
    """Which queries every run's gallery shows: ``per_task`` i2t and t2i queries drawn with ``seed``."""

    seed: int = 0
    per_task: int = 4
    top_k: int = 10


@dataclass
class RunEntry:
    run: RunDir
    method: str
    bits: int
    seed: int
    image_features: str | None
    text_features: str | None
    epochs: int | None
    scores: dict[str, float] = field(default_factory=dict)  # task -> the table's metric
    paper_epochs: int | None = None

    @property
    def budget(self) -> str | None:
        """``budget: 20 of 80 epochs`` for a run trained shorter than its paper's schedule, else None."""
        if self.epochs is not None and self.paper_epochs is not None and self.epochs < self.paper_epochs:
            return f"budget: {self.epochs} of {self.paper_epochs} epochs"
        return None

    @property
    def run_id(self) -> str:
        return self.run.run_id


@dataclass
class HtmlReport:
    page: Path
    sidecar: Path
    runs: int
    missing_images: dict[str, str]


def list_runs(cache: Cache, dataset: str, metric: str, run_ids: Sequence[str] | None = None) -> list[RunEntry]:
    """Every run of ``dataset`` with a report (of ``run_ids`` only, when given), with its ``metric`` per
    task, ordered by method, bits, seed."""
    runs: dict[str, RunEntry] = {}
    for r in cache.report_rows(dataset, run_ids).to_pylist():
        if r["metric"] != metric:
            continue
        epochs, paper = r.get("epochs"), r.get("paper_epochs")
        entry = runs.setdefault(r["run_id"], RunEntry(cache.run(r["run_id"]), r["method"], int(r["bits"]), int(r["seed"]),
                                                      r.get("image_features"), r.get("text_features"),
                                                      None if epochs is None else int(epochs),
                                                      paper_epochs=None if paper is None else int(paper)))
        entry.scores[r["task"]] = float(r["value"])
    return sorted(runs.values(), key=lambda e: (e.method, e.bits, e.seed, e.run_id))


def validation_points(run: RunDir) -> tuple[list[dict[str, Any]], str | None]:
    """The validation curve a run recorded in ``history.json``, and a problem note when it is unreadable.

    Expected shape: ``{"validation": [{"epoch": int, "i2t": float, "t2i": float}, ...]}`` (mAP@50 on the
    validation split). A run without the key has no curve; that is not a problem.
    """
    path = run.history_path
    if not path.exists():
        return [], None
    try:
        history = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError) as err:
        return [], f"{path} is unreadable ({err}); no validation curve"
    points = history.get("validation") if isinstance(history, dict) else None
    if not points:
        return [], None
    if not isinstance(points, list) or not all(isinstance(p, dict) and "epoch" in p for p in points):
        return [], f"{path}: 'validation' is not a list of {{epoch, i2t, t2i}} points; no validation curve"
    return sorted(points, key=lambda p: p["epoch"]), None


def _run_figures(run: RunEntry, figures_dir: Path) -> tuple[list[Path], list[str]]:
    """PR and P@K figures (drawn now when the run has curves but no figures) and the validation curve."""
    notes = []
    plots = run.run.plots()
    if not plots and run.run.curves_path.exists():
        log.info("run %s has curves but no figures: drawing them", run.run_id)
        plots = sorted(plot_run(run.run))
    elif not plots:
        notes.append(f"no curves recorded ({run.run.curves_path} is absent)")
    points, problem = validation_points(run.run)
    if problem:
        notes.append(problem)
    if len(points) == 1:  # a closed-form method scores its one fit: a number, not a curve
        scores = ", ".join(f"{task} {points[0][task]:.4f}" for task in ("i2t", "t2i") if task in points[0])
        notes.append(f"validation mAP@50 of its one fit (no epochs, so no curve): {scores}")
    elif points:
        # named by what it shows, so a page keeps its figure when a retrained run draws another one
        title = f"{run.method} · {run.bits} bits · seed {run.seed}"
        key = hashlib.sha256(json.dumps([points, title], sort_keys=True, default=str).encode()).hexdigest()[:12]
        out = figures_dir / f"validation_{run.run_id}-{key}.png"
        if not out.exists():
            plot_validation(points, out, title)
        plots.append(out)
    return plots, notes


def _summary_html(run: RunEntry, metric: str) -> str:
    """The collapsed header: method, bits, seed, features (two runs that differ only in them differ here) and
    a budget mark, then the scores."""
    scores = " · ".join(f"{task} {value:.4f}" for task, value in sorted(run.scores.items()))
    budget = f' · <span class="budget">{esc(run.budget)}</span>' if run.budget else ""
    return (f"<summary><b>{esc(run.method)}</b> · {run.bits} bits · seed {run.seed} · "
            f'<span class="feat">{esc(run.image_features)} / {esc(run.text_features)}</span>{budget} · '
            f'{esc(metric)} {esc(scores)} <code class="rid">{esc(run.run_id)}</code></summary>')


def build_html_report(cache: Cache, table: MethodsTable, *, out_dir: Path | None = None,
                      settings: GallerySettings = GallerySettings(), progress: bool = True,
                      run_ids: Sequence[str] | None = None) -> HtmlReport:
    """Write ``<out_dir>/<dataset>.html`` (default ``<cache>/reports``) for every run of ``table.dataset``
    (of ``run_ids`` only, when given: the use case leaves out runs whose data changed)."""
    from pipeline.ground.progress import progress_bar

    dataset, metric = table.dataset, table.metric
    out_dir = Path(out_dir) if out_dir is not None else cache.reports_dir
    page = out_dir / f"{dataset}.html"
    figures_dir = out_dir / dataset / "figures"
    runs = list_runs(cache, dataset, metric, run_ids)
    if not runs:
        raise CacheError(f"no runs of dataset {dataset!r} with metric {metric!r} under {cache.runs_dir()}")
    # content-addressed: `cmh grid` or a later report over other runs writes another name, never this page's figure
    map_png = plot_map_vs_bits(cache.report_rows(dataset, run_ids), figures_dir / "map_vs_bits.png", dataset, metric,
                               addressed=True)

    ds = cache.dataset(dataset)
    items = Items(ds.items)
    splits = ds.splits
    if "query" not in splits:
        raise CacheError(f"dataset {dataset!r} has no query split in {cache.splits_path(dataset)}; re-run cmh extract")
    queries = pick_queries(splits["query"], settings.per_task, settings.seed)
    thumbs = ThumbnailStore(out_dir, dataset)

    def src(thumb) -> str | None:
        return None if thumb.path is None else rel_url(thumb.path, out_dir)

    sections = []
    bar = progress_bar(len(runs), "report: runs", "runs") if progress else None
    for run in runs:
        figures, notes = _run_figures(run, figures_dir)
        gallery = run_gallery(run.run, items, queries, settings.top_k)
        body = [f"<p>features {esc(run.image_features)} / {esc(run.text_features)} · epochs "
                f"{esc('closed form' if run.epochs is None else run.epochs)} · "
                f'<a href="{esc(rel_url(run.run.config_path, out_dir))}">config.json</a></p>']
        body += [f'<p class="note">{esc(n)}</p>' for n in notes]
        body.append('<div class="plots">' + "".join(
            f'<img src="{esc(rel_url(p, out_dir))}" alt="{esc(p.stem)}" loading="lazy">' for p in figures) + "</div>")
        body.append(f"<h4>Gallery: top {settings.top_k}</h4>"
                    + render_gallery(gallery, items, thumbs.get, src))
        sections.append(f'<details class="run" id="run-{esc(run.run_id)}">{_summary_html(run, metric)}'
                        + "".join(body) + "</details>")
        if bar:
            bar.update(1)
    if bar:
        bar.close()

    env = environment()
    fingerprint = ds.items_meta.get("fingerprint")
    body = [f"<h1>cmh · {esc(dataset)}: {len(runs)} run{'s' if len(runs) != 1 else ''}</h1>",
            "<h2>Methods × code length</h2>", methods_table_html(table),
            f'<p><img class="figure" src="{esc(rel_url(map_png, out_dir))}" alt="{esc(metric)} against code length"></p>',
            "<h2>Runs</h2>",
            f"<p>Each run folds out to its curves and its gallery. The gallery queries are the same for every run: "
            f"{settings.per_task} image→text and {settings.per_task} text→image query items drawn from the query "
            f"split with seed {settings.seed}.</p>", legend_html(labels=list(items.table.label_names)), *sections]
    if thumbs.missing:
        body.append(f'<p class="note">{len(thumbs.missing)} image(s) could not be read and show a placeholder; '
                    f"the list is in {esc(page.with_suffix('.report.json').name)}.</p>")
    footer = (f"cmh {esc(env.get('cmh'))} · git {esc(env.get('git'))} · python {esc(env.get('python'))} · "
              f"dataset fingerprint {esc(fingerprint)} · written {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}")
    write_bytes_atomic(page_html(f"cmh report · {dataset}", body, footer).encode("utf-8"), page)
    sidecar = write_json_atomic({
        "page": page.name, "dataset": dataset, "metric": metric, "gallery": asdict(settings),
        "queries": queries, "runs": [r.run_id for r in runs], "dataset_fingerprint": fingerprint,
        "thumbnails": {"dir": str(thumbs.dir), "made": thumbs.made, "reused": thumbs.reused},
        "missing_images": thumbs.missing, "environment": env,
    }, page.with_suffix(".report.json"))
    log.info("report page %s: %d runs, thumbnails made %d, reused %d, unreadable %d", page, len(runs),
             thumbs.made, thumbs.reused, len(thumbs.missing))
    return HtmlReport(page, sidecar, len(runs), dict(thumbs.missing))
