"""Cross-run result tables from ``<cache>/runs/*/report.parquet`` via DuckDB.

``results_table`` gives long rows (one per dataset × method × features × task × bits, mean ± std over
seeds); ``methods_by_bits`` lays one metric out as the papers do (method rows × (task, bits) columns)
and writes it as Markdown, Parquet and PNG (for ``cmh grid`` / ``cmh report``).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.ground.errors import CacheError, ConfigError
from pipeline.ground.store.parquet import write_bytes_atomic, write_table_atomic
from stages.evaluate.code_health import is_degenerate
from stages.train.checks import device_kind
from stages.present.sql import HEALTH_SQL, RESULTS_SQL

TASK_ORDER = ("i2t", "t2i", "i2i", "t2t")
#: What makes two runs the same configuration (seeds of one configuration are averaged). The device is part
#: of it: CUDA kernels give other codes than the CPU's for the same seed, so a cell never pools the two.
IDENTITY = ("method", "image_features", "text_features", "eval_mode", "tie_rule", "epochs", "config_hash", "device")


def results_table(rows: pa.Table, dataset: str | None = None, metric: str = "map@50",
                  run_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Mean, std (sample, NULL for one seed) and seed count of ``metric`` per configuration, task and bits,
    over report rows (``Cache.report_rows`` or ``read_report_rows`` of published files)."""
    return _query(rows, RESULTS_SQL, {"metric": metric, "dataset": dataset, "run_ids": run_ids})


def degenerate_cells(rows: pa.Table, dataset: str | None = None,
                     run_ids: list[str] | None = None) -> dict[tuple, str]:
    """(configuration identity, bits) -> what is degenerate, for the configurations whose codes collapsed in
    some seed (few distinct codes or constant bits; ``stages.evaluate.code_health``)."""
    if "metric" not in rows.column_names:
        return {}
    out = {}
    for r in _query(rows, HEALTH_SQL, {"dataset": dataset, "run_ids": run_ids}):
        distinct, constant, n, bits = r["distinct_codes"], r["constant_bits"], r["n_database"], int(r["bits"])
        if distinct is None or constant is None or n is None:
            continue
        if is_degenerate(distinct, constant, int(n), bits):
            out[(tuple(r[c] for c in IDENTITY), bits)] = (f"{int(distinct)} distinct database code(s), {int(constant)} "
                                                          f"of {bits} bits constant")
    return out


def _query(rows: pa.Table, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    import duckdb

    if "device" not in rows.column_names:  # rows written before the device was recorded: one unknown device
        rows = rows.append_column("device", pa.nulls(rows.num_rows, pa.string()))
    else:  # seeds trained with DEVICE=cuda and DEVICE=cuda:0 are one device's (and one run id's) cell, and rows
        # of files written before the device was recorded (all trained on the CPU) are the CPU's
        kinds = [device_kind(d) for d in rows.column("device").to_pylist()]
        rows = rows.set_column(rows.schema.get_field_index("device"), "device", pa.array(kinds, pa.string()))
    con = duckdb.connect()
    try:
        con.register("rows", rows)
        cur = con.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]
    except duckdb.Error as exc:
        raise CacheError(f"the report rows lack what the table needs ({str(exc).splitlines()[0]}): train those "
                         f"runs again with `cmh train ... --force`") from None
    finally:
        con.close()


@dataclass
class MethodsTable:
    """One metric in the papers' layout. ``cells[label][(task, bits)] = (mean, std or None, n_seeds)``."""

    dataset: str
    metric: str
    columns: list[tuple[str, int]]
    labels: list[str]
    cells: dict[str, dict[tuple[str, int], tuple[float, float | None, int]]]
    identity: dict[str, dict[str, Any]]
    markdown: str = ""
    beside: dict[str, dict[tuple[str, int], float]] = field(default_factory=dict)  # label -> cell -> 2nd metric
    beside_metric: str | None = None
    paths: dict[str, Path] = field(default_factory=dict)
    #: (label, bits) -> what collapsed: cells of runs whose codes are degenerate (marked, never the best)
    degenerate: dict[tuple[str, int], str] = field(default_factory=dict)

    def is_degenerate(self, label: str, col: tuple[str, int]) -> bool:
        return (label, col[1]) in self.degenerate


#: The mark of a degenerate cell, and the line that explains it under a table.
DEGENERATE_MARK = "†"
DEGENERATE_NOTE = (f"{DEGENERATE_MARK} degenerate codes in at least one seed (few distinct codes, or bits that "
                   f"never change): constant bits make the code shorter than its column says, and with few "
                   f"distinct codes the score measures ties and the label prior, not retrieval")


def _labels(rows: list[dict[str, Any]]) -> dict[tuple, str]:
    """Row label per configuration: the method, plus whatever distinguishes configurations that share it."""
    keys = sorted({tuple(r[c] for c in IDENTITY) for r in rows}, key=lambda k: tuple(str(v) for v in k))
    by_method: dict[Any, list[tuple]] = {}
    for key in keys:
        by_method.setdefault(key[0], []).append(key)
    labels = {}
    hash_at = IDENTITY.index("config_hash")
    for method, group in by_method.items():
        differ = [i for i, _ in enumerate(IDENTITY) if i and len({g[i] for g in group}) > 1]
        if hash_at in differ and len({tuple(g[i] for i in differ if i != hash_at) for g in group}) == len(group):
            differ.remove(hash_at)  # the readable fields (epochs, device, ...) tell them apart: the hash is noise
        for key in group:
            extra = [f"{IDENTITY[i]}={key[i]}" for i in differ]
            labels[key] = f"{method} ({', '.join(extra)})" if extra else str(method)
    return labels


def cell_text(cell: tuple[float, float | None, int] | None, show_n: bool) -> str:
    """``mean ± std`` (the mean alone for one seed), with ``(n=…)`` when seed counts differ across cells."""
    if cell is None:
        return "–"
    mean, std, n = cell
    text = f"{mean:.4f}" if std is None or math.isnan(std) else f"{mean:.4f} ± {std:.4f}"
    return f"{text} (n={n})" if show_n else text


def best_by_column(table: MethodsTable) -> dict[tuple[str, int], float | None]:
    """The highest mean in each (task, bits) column (None for an empty column); degenerate cells never win."""
    best = {}
    for col in table.columns:
        means = [table.cells[lab][col][0] for lab in table.labels
                 if col in table.cells[lab] and not table.is_degenerate(lab, col)]
        best[col] = max(means) if means else None
    return best


def _markdown(table: MethodsTable) -> str:
    ns = {c[2] for cells in table.cells.values() for c in cells.values()}
    show_n = len(ns) > 1
    best = best_by_column(table)
    head = "| method | " + " | ".join(f"{t} {b}" for t, b in table.columns) + " |"
    rule = "|---|" + "---:|" * len(table.columns)
    extra = f"; in brackets: {table.beside_metric}" if table.beside_metric else ""
    lines = [f"**{table.metric}** on **{table.dataset}** (mean ± sample std over seeds"
             + ("" if show_n else f", n={next(iter(ns))}") + f"; best per column in bold{extra})", "", head, rule]
    for lab in table.labels:
        cells = []
        for col in table.columns:
            cell = table.cells[lab].get(col)
            text = cell_text(cell, show_n)
            text = f"**{text}**" if cell is not None and cell[0] == best[col] else text
            text += DEGENERATE_MARK if cell is not None and table.is_degenerate(lab, col) else ""
            second = table.beside.get(lab, {}).get(col)
            cells.append(text if second is None else f"{text} ({second:.4f})")
        lines.append(f"| {_row_label(lab, table.identity.get(lab, {}))} | " + " | ".join(cells) + " |")
    if table.degenerate:
        lines += ["", DEGENERATE_NOTE + ": " + "; ".join(f"{lab} {bits} bits ({why})"
                                                         for (lab, bits), why in sorted(table.degenerate.items()))]
    return "\n".join(lines) + "\n"


def row_notes(identity: dict[str, Any]) -> list[str]:
    """What a row label must say beside the method: supervised (it read training labels), and trained for
    fewer epochs than its paper's schedule (a budget run, not the method). The terminal, Markdown and HTML
    tables all mark it."""
    epochs, paper = identity.get("epochs"), identity.get("paper_epochs")
    notes = ["supervised"] if identity.get("supervised") else []
    if epochs is not None and paper is not None and int(epochs) < int(paper):
        notes.append(f"budget: {int(epochs)} of {int(paper)} epochs")
    return notes


def _row_label(label: str, identity: dict[str, Any]) -> str:
    notes = [f"**{n}**" if n == "supervised" else n for n in row_notes(identity)]
    return f"{label} ({'; '.join(notes)})" if notes else label


def _png(table: MethodsTable, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    text = [[cell_text(table.cells[lab].get(col), False)
             + (DEGENERATE_MARK if col in table.cells[lab] and table.is_degenerate(lab, col) else "")
             for col in table.columns] for lab in table.labels]
    width = 1.8 + 1.25 * len(table.columns)
    fig = Figure(figsize=(width, 0.9 + 0.32 * (len(table.labels) + 1)), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.axis("off")
    grid = ax.table(cellText=text, rowLabels=table.labels, colLabels=[f"{t} {b}" for t, b in table.columns],
                    loc="center", cellLoc="center")
    grid.auto_set_font_size(False)
    grid.set_fontsize(7)
    grid.scale(1.0, 1.3)
    ax.set_title(f"{table.metric} · {table.dataset} (mean ± std over seeds)", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return write_bytes_atomic(buf.getvalue(), path)


def methods_by_bits(report_rows: pa.Table, dataset: str | None = None, metric: str = "map@50",
                    out_dir: Path | None = None, run_ids: list[str] | None = None,
                    beside: str | None = None) -> MethodsTable:
    """Method rows × (task, bits) columns of ``metric`` over report rows; with ``out_dir``, also writes
    ``<out_dir>/<dataset>_<metric>.{md,parquet,png}``.

    ``dataset`` may be omitted when the rows cover one dataset. ``beside`` names a second metric shown
    in brackets in each Markdown cell, e.g. the validation score beside the test score.
    """
    rows = results_table(report_rows, dataset, metric, run_ids)
    if not rows:
        have = sorted({str(m) for m in report_rows.column("metric").to_pylist() if m is not None}
                      if "metric" in report_rows.column_names else [])
        raise CacheError(f"no report rows with metric={metric!r}" + (f" for dataset {dataset!r}" if dataset else "")
                         + (f": give one of {', '.join(have)}" if have else ""))
    datasets = sorted({r["dataset"] for r in rows})
    if len(datasets) > 1:
        raise ConfigError(f"runs cover several datasets ({', '.join(datasets)}); pass dataset=<one of them>")
    dataset = datasets[0]
    labels = _labels(rows)
    columns = sorted({(r["task"], int(r["bits"])) for r in rows},
                     key=lambda c: (TASK_ORDER.index(c[0]) if c[0] in TASK_ORDER else 99, c[0], c[1]))
    cells: dict[str, dict] = {}
    identity: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = tuple(r[c] for c in IDENTITY)
        lab = labels[key]
        identity[lab] = {**dict(zip(IDENTITY, key)), "paper_epochs": r.get("paper_epochs"),
                         "supervised": r.get("supervised")}
        std = r["std"]
        cells.setdefault(lab, {})[(r["task"], int(r["bits"]))] = (float(r["mean"]), None if std is None else float(std),
                                                                  int(r["n_seeds"]))
    table = MethodsTable(dataset=dataset, metric=metric, columns=columns, labels=sorted(cells), cells=cells,
                         identity=identity)
    for (key, bits), why in degenerate_cells(report_rows, dataset, run_ids).items():
        if key in labels:
            table.degenerate[(labels[key], bits)] = why
    if beside:
        for r in results_table(report_rows, dataset, beside, run_ids):
            lab = labels.get(tuple(r[c] for c in IDENTITY))
            if lab in cells:
                table.beside.setdefault(lab, {})[(r["task"], int(r["bits"]))] = float(r["mean"])
        table.beside_metric = beside
    table.markdown = _markdown(table)
    if out_dir is not None:
        out_dir = Path(out_dir)
        stem = f"{dataset}_{metric.replace('@', '_at_')}"
        md = out_dir / f"{stem}.md"
        write_bytes_atomic(table.markdown.encode("utf-8"), md)
        arrays: dict[str, pa.Array] = {"label": pa.array(table.labels, pa.string())}
        for name in IDENTITY:
            values = [identity[lab][name] for lab in table.labels]
            arrays[name] = pa.array([None if v is None else str(v) for v in values], pa.string())
        for task, bits in columns:
            got = [cells[lab].get((task, bits)) for lab in table.labels]
            arrays[f"{task}@{bits}"] = pa.array([c[0] if c else None for c in got], pa.float64())
            arrays[f"{task}@{bits}_std"] = pa.array([c[1] if c else None for c in got], pa.float64())
            arrays[f"{task}@{bits}_n"] = pa.array([c[2] if c else None for c in got], pa.int64())
            arrays[f"{task}@{bits}_degenerate"] = pa.array([table.is_degenerate(lab, (task, bits)) if c else None
                                                            for lab, c in zip(table.labels, got)], pa.bool_())
        parquet = write_table_atomic(pa.table(arrays), out_dir / f"{stem}.parquet",
                                     metadata={"dataset": dataset, "metric": metric, "layout": "method x (task, bits)"})
        table.paths = {"markdown": md, "parquet": parquet, "png": _png(table, out_dir / f"{stem}.png")}
    return table
