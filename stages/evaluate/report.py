"""Score a run's query/database codes and write ``report.parquet`` and ``curves.parquet``.

``report.parquet`` has one row per task × metric × K with the run's identity, protocol and timings
as scalar columns, so every run is one SQL away::

    SELECT method, bits, task, value FROM read_parquet('cache/runs/*/report.parquet', union_by_name=true)
    WHERE metric = 'map@50'

Metrics (definitions in ``stages.evaluate.metrics``): ``map@K`` (k = K), ``map`` (whole ranking,
k NULL), ``p@K`` (k = K), ``p@r2`` (precision within Hamming radius 2, k NULL; 0 for a query that
retrieves nothing). Tasks: ``i2t`` (image queries, text database), ``t2i``; with ``intra=True`` also
``i2i`` and ``t2t``. Rows whose task is a modality (``image``, ``text``) describe that modality's
database codes: ``distinct_codes`` and ``constant_bits`` (``stages.evaluate.code_health``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from pipeline.ground.errors import CacheError, ConfigError, DataError
from pipeline.ground.store.parquet import read_table, write_table_atomic
from pipeline.ground.store.runs import RunDir
from pipeline.ground.store.codes import CODE_CONVENTIONS
from stages.evaluate.code_health import degenerate_note, health_rows
from stages.evaluate.metrics import (
    TIE_RULES,
    map_from_stats,
    pr_curve_from_stats,
    precision_at_k_from_stats,
    precision_within_radius_from_stats,
    ranking_stats,
)

log = logging.getLogger(__name__)
_SAID: set = set()  # (Ks over the database size, database size) already logged by this process

DEFAULT_KS = (50, 100, 500, 1000)
#: P@K curve grid, as CCAH's p_topK (50..5000) plus the head of the ranking.
PK_CURVE_KS = (1, 10, 50, 100, 200, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000)
RADIUS = 2  # "precision within Hamming radius 2", the usual hashing-paper radius
CROSS_TASKS = {"i2t": ("image", "text"), "t2i": ("text", "image")}
INTRA_TASKS = {"i2i": ("image", "image"), "t2t": ("text", "text")}


#: Columns every report carries, with their Arrow types (typed even when a run leaves one NULL,
#: so ``union_by_name`` across runs never meets a NULL-typed column).
REQUIRED_META: dict[str, pa.DataType] = {
    "run_id": pa.string(), "method": pa.string(), "dataset": pa.string(),
    "image_features": pa.string(), "text_features": pa.string(),
    "bits": pa.int64(), "seed": pa.int64(), "eval_mode": pa.string(), "tie_rule": pa.string(),
    "n_train": pa.int64(), "n_query": pa.int64(), "n_database": pa.int64(),
    "train_s": pa.float64(), "encode_s": pa.float64(), "eval_s": pa.float64(),
}
#: Always present (NULL when not given) so cross-run SQL can group on them: the training length, the
#: hash of the resolved method config (seeds of one configuration share it), the paper's epochs (a
#: shorter run is marked as a budget run), the code version (``pipeline.ground.versions.RESULTS_VERSION``) and whether
#: the method read training labels (marked in tables: not comparable with the unsupervised rows).
OPTIONAL_META: dict[str, pa.DataType] = {"epochs": pa.int64(), "config_hash": pa.string(),
                                         "paper_epochs": pa.int64(), "code_version": pa.string(),
                                         "supervised": pa.bool_()}
ROW_SCHEMA: dict[str, pa.DataType] = {"task": pa.string(), "metric": pa.string(), "k": pa.int64(),
                                      "value": pa.float64()}
CURVE_SCHEMA: dict[str, pa.DataType] = {"task": pa.string(), "curve": pa.string(), "x": pa.int64(),
                                        "precision": pa.float64(), "recall": pa.float64(),
                                        "n_queries": pa.int64()}


@dataclass
class Evaluation:
    """Scalar metric rows (task, metric, k, value) and curve rows (task, curve, x, precision, recall, n_queries)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)


def _task_inputs(split: Mapping[str, Any], modality: str, which: str) -> np.ndarray:
    if modality not in split or split[modality] is None:
        raise DataError(f"the {which} split has no {modality} codes; encode that modality or drop the task")
    return np.asarray(split[modality])


def evaluate_codes_and_curves(query: Mapping[str, Any], database: Mapping[str, Any], *,
                              ks: Sequence[int] = DEFAULT_KS, tie: str = "stable",
                              tasks: Sequence[str] = ("i2t", "t2i"), intra: bool = False,
                              pk_curve_ks: Sequence[int] = PK_CURVE_KS, radius: int = RADIUS) -> Evaluation:
    """Rank once per task and derive every metric and curve from that ranking.

    query / database: ``{"image": (n, bits) ±1, "text": (n, bits) ±1, "labels": (n, L) multi-hot}``.
    """
    if tie not in TIE_RULES:
        raise ConfigError(f"unknown tie rule {tie!r}; choose one of {', '.join(TIE_RULES)}")
    known = {**CROSS_TASKS, **INTRA_TASKS}
    wanted = list(tasks) + ([t for t in INTRA_TASKS if t not in tasks] if intra else [])
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise ConfigError(f"unknown task(s) {unknown}; choose from {', '.join(known)}")
    for name, split in (("query", query), ("database", database)):
        if "labels" not in split:
            raise DataError(f"the {name} split has no 'labels'; relevance (shared label) needs them")
    n_db = len(database["labels"])
    # the P@K curve stops at the database size: beyond it the top K is the whole database and P@K only falls as 1/K
    curve_ks = sorted({int(k) for k in pk_curve_ks if int(k) <= n_db}
                      | ({n_db} if any(int(k) > n_db for k in pk_curve_ks) else set()))
    all_ks = tuple(sorted(set(int(k) for k in ks) | set(curve_ks)))
    over = tuple(k for k in ks if k > n_db)
    if over and (over, n_db) not in _SAID:  # a fact of the dataset, not of the run: once per process
        _SAID.add((over, n_db))
        log.info("K=%s exceeds the database size %d: the top K is the whole database (P@K still divides by K)",
                 list(over), n_db)
    out = Evaluation(rows=health_rows(database))
    bits = next((np.asarray(database[m]).shape[1] for m in ("image", "text") if database.get(m) is not None), 0)
    collapsed = degenerate_note(out.rows, n_db, bits)
    if collapsed:  # ties everywhere: the scores below measure the tie order and the label prior
        log.warning("degenerate codes: %s; the scores of this run do not measure retrieval (train longer, lower "
                    "the learning rate, or use the method's own optimiser)", collapsed)
    for task in wanted:
        q_mod, d_mod = known[task]
        stats = ranking_stats(_task_inputs(query, q_mod, "query"), _task_inputs(database, d_mod, "database"),
                              query["labels"], database["labels"], all_ks, full=True, tie=tie)
        for k in ks:
            out.rows.append({"task": task, "metric": f"map@{k}", "k": int(k), "value": map_from_stats(stats, int(k)).mean})
        out.rows.append({"task": task, "metric": "map", "k": None, "value": map_from_stats(stats, None).mean})
        p_at = precision_at_k_from_stats(stats)
        p_mean = dict(zip(stats.ks, np.atleast_1d(p_at.mean).tolist()))
        for k in ks:
            out.rows.append({"task": task, "metric": f"p@{k}", "k": int(k), "value": p_mean[int(k)]})
        within = precision_within_radius_from_stats(stats, radius)
        if within.n_empty:
            log.debug("%s: %d of %d queries retrieve nothing within radius %d (counted as precision 0)",
                      task, within.n_empty, stats.n_query, radius)
        out.rows.append({"task": task, "metric": f"p@r{radius}", "k": None, "value": within.mean})
        for k in curve_ks:
            out.curves.append({"task": task, "curve": "p@k", "x": int(k), "precision": p_mean[int(k)],
                               "recall": None, "n_queries": stats.n_query})
        pr = pr_curve_from_stats(stats)
        for r in range(stats.bits + 1):
            prec = float(pr.precision[r])
            out.curves.append({"task": task, "curve": "pr", "x": r, "precision": None if np.isnan(prec) else prec,
                               "recall": float(pr.recall[r]), "n_queries": int(pr.n_retrieving[r])})
    return out


def evaluate_codes(query: Mapping[str, Any], database: Mapping[str, Any], *, ks: Sequence[int] = DEFAULT_KS,
                   tie: str = "stable", tasks: Sequence[str] = ("i2t", "t2i"), intra: bool = False) -> list[dict]:
    """Metric rows ``{"task", "metric", "k", "value"}``; see :func:`evaluate_codes_and_curves` for curves."""
    return evaluate_codes_and_curves(query, database, ks=ks, tie=tie, tasks=tasks, intra=intra).rows


def flatten_meta(meta: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``parent_child`` scalar keys; lists/tuples -> JSON text; None stays None."""
    flat: dict[str, Any] = {}
    for key, value in meta.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_meta(value, f"{name}_"))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value, default=str)
        elif isinstance(value, np.generic):
            flat[name] = value.item()
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def _table(rows: Sequence[Mapping[str, Any]], row_schema: Mapping[str, pa.DataType],
           meta: Mapping[str, Any]) -> tuple[pa.Table, dict[str, Any]]:
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ConfigError(f"report meta lacks {missing}; pass them (None where a value does not apply)")
    flat = {**{k: None for k in OPTIONAL_META}, **flatten_meta(meta)}
    clash = sorted(set(flat) & set(row_schema))
    if clash:
        raise ConfigError(f"report meta keys {clash} collide with row columns {list(row_schema)}; rename them")
    if flat["tie_rule"] is not None and flat["tie_rule"] not in TIE_RULES:
        raise ConfigError(f"tie_rule {flat['tie_rule']!r} is not one of {', '.join(TIE_RULES)}")
    n = len(rows)
    columns: dict[str, pa.Array] = {}
    for name, typ in row_schema.items():
        columns[name] = pa.array([r.get(name) for r in rows], type=typ)
    for name, value in flat.items():
        typ = REQUIRED_META.get(name, OPTIONAL_META.get(name))
        columns[name] = pa.array([value] * n, type=typ) if typ is not None else pa.array([value] * n)
    return pa.table(columns), flat


def _file_meta(flat: Mapping[str, Any]) -> dict[str, Any]:
    rule = flat.get("tie_rule")
    return {**flat, "tie_rule_text": TIE_RULES.get(rule) if rule else None, **CODE_CONVENTIONS}


def write_report(run: RunDir | Path, rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> Path:
    """Write the run's report (``report.parquet``): the metric rows, each with every meta field as a column.

    ``meta`` must hold every key of ``REQUIRED_META`` (values may be None); extra keys are flattened
    into scalar columns (nested ``a: {b: 1}`` -> ``a_b``; lists as JSON text).
    """
    if not rows:
        raise DataError("write_report: no metric rows to write")
    table, flat = _table(rows, ROW_SCHEMA, meta)
    return write_table_atomic(table, _run(run).report_path, metadata=_file_meta(flat))


def write_curves(run: RunDir | Path, curves: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> Path:
    """Write the run's ``curves.parquet`` (PR and P@K curves) with the same meta columns as the report."""
    if not curves:
        raise DataError("write_curves: no curve rows to write")
    table, flat = _table(curves, CURVE_SCHEMA, meta)
    return write_table_atomic(table, _run(run).curves_path, metadata=_file_meta(flat))


def _run(run: RunDir | Path) -> RunDir:
    return run if isinstance(run, RunDir) else RunDir(Path(run))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """All rows of a report or curves file as dicts."""
    path = Path(path)
    if not path.exists():
        raise CacheError(f"{path} does not exist; evaluate the run first (cmh train / cmh evaluate)")
    return read_table(path, fix="train the run again with `cmh train ... --force`").to_pylist()
