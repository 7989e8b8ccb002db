from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.ground.errors import ConfigError, DataError
from stages.evaluate.metrics import map_at_k, precision_within_radius
from stages.evaluate.report import evaluate_codes, evaluate_codes_and_curves, read_rows, write_report
from tests.evaluate.helpers import run_meta
from tests.evaluate.helpers import correlated


def _splits(seed=0, bits=16):
    rng = np.random.default_rng(seed)
    qi, di, ql, dl = correlated(rng, 20, 200, bits)
    qt, dt, _, _ = correlated(rng, 20, 200, bits)
    return {"image": qi, "text": qt, "labels": ql}, {"image": di, "text": dt, "labels": dl}


def test_rows_have_every_task_metric_and_k():
    query, database = _splits()
    rows = evaluate_codes(query, database, ks=(5, 50), intra=True)
    keys = {(r["task"], r["metric"], r["k"]) for r in rows}
    for task in ("i2t", "t2i", "i2i", "t2t"):
        assert {(task, "map@5", 5), (task, "map@50", 50), (task, "map", None), (task, "p@5", 5),
                (task, "p@50", 50), (task, "p@r2", None)} <= keys
    assert {(r["task"], r["metric"]) for r in rows if r["task"] in ("image", "text")} == {
        (m, h) for m in ("image", "text") for h in ("distinct_codes", "constant_bits")}
    assert len(rows) == 4 * 6 + 2 * 2 and all(set(r) == {"task", "metric", "k", "value"} for r in rows)


def test_row_values_equal_the_metric_functions():
    query, database = _splits(1)
    rows = {(r["task"], r["metric"]): r["value"] for r in evaluate_codes(query, database, ks=(10,))}
    assert rows[("i2t", "map@10")] == pytest.approx(
        map_at_k(query["image"], database["text"], query["labels"], database["labels"], 10).mean)
    assert rows[("t2i", "map")] == pytest.approx(
        map_at_k(query["text"], database["image"], query["labels"], database["labels"], None).mean)
    assert rows[("t2i", "p@r2")] == pytest.approx(
        precision_within_radius(query["text"], database["image"], query["labels"], database["labels"]).mean)


def test_curves_cover_radii_and_cutoffs():
    query, database = _splits(2, bits=32)
    ev = evaluate_codes_and_curves(query, database, ks=(10,), pk_curve_ks=(1, 10, 100))
    pr = [c for c in ev.curves if c["task"] == "i2t" and c["curve"] == "pr"]
    assert [c["x"] for c in pr] == list(range(33)) and pr[-1]["recall"] == pytest.approx(1.0)
    pk = [c["x"] for c in ev.curves if c["task"] == "t2i" and c["curve"] == "p@k"]
    assert pk == [1, 10, 100]


def test_report_schema_and_flattened_meta(tmp_path: Path):
    query, database = _splits(3)
    rows = evaluate_codes(query, database, ks=(10,))
    meta = run_meta("r1", "alpha", 16, 0, loss_weights={"image_text": 1.0}, ks=[10])
    path = write_report(tmp_path, rows, meta)
    table = pq.read_table(path)
    schema = {f.name: str(f.type) for f in table.schema}
    assert schema["k"] == "int64" and schema["value"] == "double" and schema["bits"] == "int64"
    assert schema["eval_s"] == "double"  # typed although NULL in this run
    assert schema["loss_weights_image_text"] == "double" and schema["ks"] == "string"
    back = read_rows(path)
    assert len(back) == len(rows) and {r["run_id"] for r in back} == {"r1"}


def test_report_requires_meta_and_known_tie_rule(tmp_path: Path):
    rows = [{"task": "i2t", "metric": "map", "k": None, "value": 0.5}]
    meta = run_meta("r1", "alpha", 16, 0)
    del meta["seed"]
    with pytest.raises(ConfigError, match="seed"):
        write_report(tmp_path, rows, meta)
    with pytest.raises(ConfigError, match="tie_rule"):
        write_report(tmp_path, rows, {**run_meta("r1", "a", 16, 0), "tie_rule": "quick"})
    with pytest.raises(ConfigError, match="collide"):
        write_report(tmp_path, rows, {**run_meta("r1", "a", 16, 0), "metric": "x"})
    with pytest.raises(DataError, match="no metric rows"):
        write_report(tmp_path, [], run_meta("r1", "a", 16, 0))


def test_unknown_task_and_missing_modality():
    query, database = _splits()
    with pytest.raises(ConfigError, match="task"):
        evaluate_codes(query, database, tasks=("x2y",))
    with pytest.raises(DataError, match="text codes"):
        evaluate_codes({"image": query["image"], "labels": query["labels"]}, database)


def test_duckdb_query_across_runs(cache_root: Path):
    import duckdb

    con = duckdb.connect()
    rows = con.execute(
        "SELECT method, bits, seed, task, value, lr_head FROM read_parquet($g, union_by_name = true) "
        "WHERE metric = 'map@50' ORDER BY method, bits, seed, task",
        {"g": str(cache_root / "runs" / "*" / "report.parquet")}).fetchall()
    assert len(rows) == 7 * 2  # seven runs, two tasks
    assert {r[5] for r in rows} == {None, 0.01}  # the extra column exists only in one run
    alpha = np.mean([r[4] for r in rows if r[0] == "alpha"])
    beta = np.mean([r[4] for r in rows if r[0] == "beta"])
    assert alpha > beta  # less noise in the toy codes -> better retrieval


def test_the_pk_curve_stops_at_the_database_size():
    """Issue 19 item 8: no P@K point beyond the database (there the top K is the whole database)."""
    query, database = _splits(4, bits=16)
    n_db = len(database["labels"])
    ev = evaluate_codes_and_curves(query, database, ks=(10,), pk_curve_ks=(1, 10, n_db - 1, n_db + 1, 5 * n_db))
    pk = [c["x"] for c in ev.curves if c["task"] == "i2t" and c["curve"] == "p@k"]
    assert pk == [1, 10, n_db - 1, n_db]
