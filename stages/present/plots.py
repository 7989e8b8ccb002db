"""Figures: per-run precision–recall and P@K curves, and mAP against code length across runs.

Drawn with matplotlib's object API on the Agg canvas (``Figure`` + ``savefig``), so nothing touches
pyplot's global state or needs a display.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from pipeline.ground.errors import CacheError, DataError
from pipeline.ground.store.runs import RunDir
from stages.evaluate.report import read_rows
from stages.present.reading import configuration_note

log = logging.getLogger(__name__)

TASK_TITLES = {"i2t": "image → text", "t2i": "text → image", "i2i": "image → image", "t2t": "text → text"}


def _figure(width: float = 5.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path, addressed: bool = False) -> Path:
    """Write the figure to ``path``; ``addressed``: to ``<stem>-<hash of the PNG>.png`` beside it instead, so a
    page that links it never sees it change (a later report with other runs writes another name)."""
    import io

    from pipeline.ground.store.parquet import write_bytes_atomic

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")  # bbox keeps a legend placed outside the axes
    data = buf.getvalue()
    if addressed:
        path = addressed_name(path, data)
        if path.exists():
            return path
    return write_bytes_atomic(data, path)  # a page never links a half-written figure


def addressed_name(path: Path, data: bytes) -> Path:
    """``<stem>-<first 12 hex digits of sha256(data)><suffix>`` beside ``path``: a content-addressed name."""
    import hashlib

    return path.with_name(f"{path.stem}-{hashlib.sha256(data).hexdigest()[:12]}{path.suffix}")


def _run_title(rows: Sequence[Mapping[str, Any]]) -> str:
    first = rows[0]
    return f"{first.get('method')} · {first.get('dataset')} · {first.get('bits')} bits · seed {first.get('seed')}"


def plot_run(run: RunDir | Path) -> list[Path]:
    """The run's ``plots/pr_<task>.png`` and ``pk_<task>.png`` from its curves; returns the paths."""
    run = run if isinstance(run, RunDir) else RunDir(Path(run))
    curves = read_rows(run.curves_path)
    if not curves:
        raise CacheError(f"{run.curves_path} is empty; re-evaluate the run")
    title = _run_title(curves)
    # curves written before they stopped at the database size still hold larger K: not drawn
    n_database = _n_database(run)
    paths = []
    for task in sorted({c["task"] for c in curves}):
        pr = sorted((c for c in curves if c["task"] == task and c["curve"] == "pr"), key=lambda c: c["x"])
        pr = [c for c in pr if c["precision"] is not None]
        if pr:
            fig = _figure()
            ax = fig.add_subplot()
            recall = [c["recall"] for c in pr]
            precision = [c["precision"] for c in pr]
            ax.plot(recall, precision, marker="o", markersize=3)
            last = None
            for c in pr:  # label radii, skipping points crowded onto the previous label
                here = np.array([c["recall"], c["precision"]])
                if last is None or np.abs(here - last).max() > 0.08:
                    ax.annotate(f"r={c['x']}", tuple(here), fontsize=7, xytext=(3, 3), textcoords="offset points")
                    last = here
            ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
                   title=f"PR by Hamming radius, {TASK_TITLES.get(task, task)}")
            ax.grid(alpha=0.3)
            fig.suptitle(title, fontsize=8)
            paths.append(_save(fig, run.plots_dir / f"pr_{task}.png"))
        pk = sorted((c for c in curves if c["task"] == task and c["curve"] == "p@k" and c["x"] <= n_database),
                    key=lambda c: c["x"])
        if pk:
            fig = _figure()
            ax = fig.add_subplot()
            ax.plot([c["x"] for c in pk], [c["precision"] for c in pk], marker="o", markersize=3)
            ax.set(xlabel="K (top-K retrieved)", ylabel="precision@K", ylim=(0, 1.02),
                   title=f"P@K, {TASK_TITLES.get(task, task)}")
            ax.grid(alpha=0.3)
            fig.suptitle(title, fontsize=8)
            paths.append(_save(fig, run.plots_dir / f"pk_{task}.png"))
    if not paths:
        raise DataError(f"{run.curves_path} holds no PR or P@K curve rows")
    run.plots_skipped_path.unlink(missing_ok=True)  # drawn now: a note that training skipped them is void
    return paths


def _n_database(run: RunDir) -> float:
    """The run's database size from its config (infinity when unrecorded: every K is drawn)."""
    try:
        return int(run.read_config().get("n_database") or 0) or float("inf")
    except (CacheError, TypeError, ValueError):
        return float("inf")


def _report_rows(source: Iterable[Mapping[str, Any]] | pa.Table, dataset: str | None,
                 metric: str) -> list[dict[str, Any]]:
    rows = source.to_pylist() if isinstance(source, pa.Table) else source
    return [dict(r) for r in rows if r.get("metric") == metric and (dataset is None or r.get("dataset") == dataset)]


def method_label(row: Mapping[str, Any], ambiguous: bool) -> str:
    """The method name, with its feature inputs when one method appears with several."""
    if not ambiguous:
        return str(row["method"])
    return f"{row['method']} [{row.get('image_features')}/{row.get('text_features')}]"


def plot_map_vs_bits(report_rows: Iterable[Mapping[str, Any]] | pa.Table, out_png: Path,
                     dataset: str | None, metric: str = "map@50", addressed: bool = False) -> Path:
    """One panel per task: ``metric`` against code length, mean ± std over seeds, one line per method
    (``addressed``: under a content-addressed name beside ``out_png``, see ``_save``)."""
    rows = _report_rows(report_rows, dataset, metric)
    if not rows:
        raise DataError(f"no report rows with metric={metric!r}" + (f" for dataset {dataset!r}" if dataset else ""))
    features = defaultdict(set)
    for r in rows:
        features[r["method"]].add((r.get("image_features"), r.get("text_features")))
    groups: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        # a budget or GPU configuration's seeds are a line of their own, as the table keeps them apart
        label = method_label(r, len(features[r["method"]]) > 1) + configuration_note(r)
        groups[(r["task"], label)][int(r["bits"])].append(float(r["value"]))
    tasks = sorted({task for task, _ in groups}, key=lambda t: list(TASK_TITLES).index(t) if t in TASK_TITLES else 99)
    fig = _figure(4.2 * len(tasks), 3.8)
    all_bits = sorted({b for series in groups.values() for b in series})
    for n, task in enumerate(tasks, start=1):
        ax = fig.add_subplot(1, len(tasks), n)
        for (t, label), series in sorted(groups.items()):
            if t != task:
                continue
            bits = sorted(series)
            mean = [float(np.mean(series[b])) for b in bits]
            std = [float(np.std(series[b], ddof=1)) if len(series[b]) > 1 else 0.0 for b in bits]
            ax.errorbar(bits, mean, yerr=std, marker="o", markersize=4, capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_bits, [str(b) for b in all_bits])
        ax.set(xlabel="bits", ylabel=metric, title=TASK_TITLES.get(task, task))
        ax.grid(alpha=0.3)
        if n == len(tasks):  # one legend, outside the last panel, so it never hides a line
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.suptitle(f"{metric} vs code length" + (f" · {dataset}" if dataset else "") + " (mean ± std over seeds)",
                 fontsize=9)
    return _save(fig, Path(out_png), addressed)


def plot_validation(points: Sequence[Mapping[str, Any]], out_png: Path, title: str, metric: str = "val mAP@50",
                    addressed: bool = False) -> Path:
    """Validation score per epoch, one line per task; ``points`` are ``{"epoch": int, "<task>": float, ...}``."""
    if not points:
        raise DataError("plot_validation: no validation points")
    fig = _figure(5.0, 3.4)
    ax = fig.add_subplot()
    epochs = [int(p["epoch"]) for p in points]
    for task in [t for t in TASK_TITLES if any(t in p for p in points)]:
        ax.plot(epochs, [p.get(task, float("nan")) for p in points], marker="o", markersize=3,
                label=TASK_TITLES[task])
    ax.set(xlabel="epoch", ylabel=metric, title="validation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    return _save(fig, Path(out_png), addressed)
