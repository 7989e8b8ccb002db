"""extract -> train -> evaluate -> SQL -> query, through the public entry points, on small real and demo data."""
from __future__ import annotations

import json
import re

import duckdb
import numpy as np
import pytest

from stages.prepare import DatasetRequest, prepare_dataset
from pipeline.ground.store.cache import Cache
from stages.extract import create_encoder
from stages.extract.runner import run_extraction
from pipeline.orchestration.training import TrainRequest, train_runs


def _extract(layout, req, encoders=("alexnet", "bow")):
    items, splits = prepare_dataset(layout, req)
    for name in encoders:
        run_extraction(layout, items, splits, create_encoder(name), workers=0, progress=False)
    return items, splits


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    layout = Cache(root)
    req = DatasetRequest(dataset="demo", data_dir=root / "demo-data", options={"n_items": 160, "size": 64})
    _extract(layout, req)
    return layout


def test_demo_train_report_sql_and_query(demo_cache):
    layout = demo_cache
    results = train_runs(layout, TrainRequest(dataset="demo", method="baseline", bits=(16, 64), progress=False))
    results += train_runs(layout, TrainRequest(dataset="demo", method="djsrh", bits=(32,), epochs=3, progress=False))
    assert [r.bits for r in results] == [16, 64, 32]
    for r in results:
        assert (r.run_dir / "report.parquet").exists() and (r.run_dir / "config.json").exists()
        cfg = json.loads((r.run_dir / "config.json").read_text())
        assert cfg["environment"]["packages"]["torch"] and cfg["data"]["fingerprint"] and cfg["dataset"] == "demo"
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT method, bits, task, value FROM read_parquet('{layout.runs_dir()}/*/report.parquet', union_by_name=true) "
        "WHERE metric = 'map@50' ORDER BY method, bits, task").fetchall()
    assert {(m, b) for m, b, _, _ in rows} == {("baseline", 16), ("baseline", 64), ("djsrh", 32)}
    assert all(0.0 <= v <= 1.0 for *_, v in rows)

    # validation: a curve in history.json (every epochs // 10 and the last), its last point in the report,
    # computed on the validation split against train, and the provenance a published row needs
    djsrh_dir = results[2].run_dir
    history = json.loads((djsrh_dir / "history.json").read_text())
    assert [p["epoch"] for p in history["validation"]] == [1, 2, 3]
    report = con.execute(f"SELECT task, value, n_validation, split_protocol, hardware, code_version, paper_epochs, "
                         f"epochs FROM read_parquet('{djsrh_dir}/report.parquet') WHERE metric = 'val_map@50' "
                         "ORDER BY task").fetchall()
    assert [r[0] for r in report] == ["i2t", "t2i"]
    assert [r[1] for r in report] == [history["validation"][-1]["i2t"], history["validation"][-1]["t2i"]]
    n_val, protocol, hardware, version, paper, epochs = report[0][2:]
    splits = prepare_dataset(layout, DatasetRequest(dataset="demo", data_dir=layout.root / "demo-data",
                                                    options={"n_items": 160, "size": 64}))[1]
    assert n_val == len(splits["validation"]) > 0 and "validation" in protocol and hardware
    assert (paper, epochs) == (80, 3)  # DJSRH's paper schedule, and the budget this run used
    assert not np.intersect1d(splits["validation"], splits["query"]).size

    # a rerun with the same config is not trained again
    again = train_runs(layout, TrainRequest(dataset="demo", method="baseline", bits=(16,), progress=False))
    assert again[0].skipped and again[0].run_id == results[0].run_id

    # retrieval with a new text through the run's own encoders and model
    from pipeline.orchestration.query import query_run

    hits = query_run(layout, results[2].run_id, text="sky, sea", top_k=5)  # two of the demo's tags
    assert len(hits) == 5 and [h[0] for h in hits] == [1, 2, 3, 4, 5]
    assert [h[2] for h in hits] == sorted(h[2] for h in hits)  # ranked by Hamming distance

    # the same through the CLI in a fresh process, with an image query
    import subprocess
    import sys

    image = layout.root / "demo-data"
    picture = next(p for p in image.rglob("*.jpg"))
    page = layout.root / "query.html"
    out = subprocess.run([sys.executable, "-m", "pipeline", "query", "--run", results[2].run_id, "--image",
                          str(picture), "--top-k", "3", "--cache", str(layout.root), "--html", str(page)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [line.split("\t") for line in out.stdout.strip().splitlines() if "\t" in line]
    assert [line[0] for line in lines] == ["1", "2", "3"] and all(len(line) == 5 for line in lines)
    # the same result as a single-file gallery: the query image and the three hits, in rank order
    html = page.read_text()
    assert f"html: {page}" in out.stdout
    assert html.count("data:image/jpeg;base64,") == 4  # image->text hits show their picture too (issue 19)
    assert re.findall(r'class="cell unk" title="[^"]*? · item (\d+)[^"]*">.*?#(\d+) · d=(\d+)', html) == \
        [(line[1], line[0], line[2]) for line in lines]


def test_paired_mode_is_refused_for_methods_without_it(demo_cache):
    from pipeline.ground.errors import ConfigError

    with pytest.raises(ConfigError, match="paired"):
        train_runs(demo_cache, TrainRequest(dataset="demo", method="baseline", bits=(16,), eval_mode="paired",
                                            progress=False))


@pytest.mark.realdata
def test_real_mirflickr_end_to_end(shared_data, tmp_path):
    """200 real MIRFlickr pairs: real images through AlexNet, real tags through the DCMH vocabulary."""
    layout = Cache(tmp_path)
    req = DatasetRequest(dataset="mirflickr", data_dir=shared_data / "mirflickr25k_real20015", limit=200)
    items, splits = _extract(layout, req)
    assert len(items) == 200 and set(splits["train"]) <= set(splits["database"])
    assert not set(splits["query"]) & set(splits["database"])
    (run,) = train_runs(layout, TrainRequest(dataset="mirflickr-n200", method="cca-itq", bits=(32,), progress=False))
    report = duckdb.connect().execute(
        f"SELECT task, value FROM read_parquet('{run.run_dir}/report.parquet') WHERE metric = 'map@50'").fetchall()
    assert {t for t, _ in report} == {"i2t", "t2i"}
    assert all(np.isfinite(v) for _, v in report)


def test_readme_sql_runs_on_real_artifacts(demo_cache):
    """The DuckDB queries the README shows, run as written against this cache."""
    import re
    from pathlib import Path

    (run,) = train_runs(demo_cache, TrainRequest(dataset="demo", method="baseline", bits=(128,), progress=False))
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2
    con = duckdb.connect()
    root = str(demo_cache.root)
    for statement in [s for s in blocks[0].split(";") if "SELECT" in s]:
        sql = statement.replace("'cache/", f"'{root}/").replace("'mirflickr'", "'demo'")
        assert con.execute(sql).fetchall()
    top = con.execute(blocks[1].replace("'cache/", f"'{root}/").replace("RUN", run.run_id)).fetchall()
    assert len(top) == 10 and [d for _, d in top] == sorted(d for _, d in top)


def test_grid_in_worker_processes_gives_the_sequential_grid(demo_cache, tmp_path):
    """cmh grid --workers 2: every cell once, in cell order, the same codes as one process, then the tables."""
    from pipeline.orchestration.grid import GridRequest, run_grid
    from pipeline.ground.store.codes import read_codes

    req = GridRequest(dataset="demo", methods=["baseline", "djsrh"], bits=(16, 32), seeds=(1,), epochs={"djsrh": 1},
                      workers=2, out_dir=tmp_path / "par")
    parallel = run_grid(demo_cache, req, echo=lambda line: None)
    assert [rid.split("-")[1:3] for rid in parallel.run_ids] == [["baseline", "16b"], ["baseline", "32b"],
                                                                 ["djsrh", "16b"], ["djsrh", "32b"]]
    codes = {rid: read_codes(demo_cache.run_dir(rid) / "codes", "query") for rid in parallel.run_ids}
    for rid in parallel.run_ids:  # retrain each cell in this process, one thread, and compare codes
        import shutil

        shutil.rmtree(demo_cache.run_dir(rid))
    sequential = run_grid(demo_cache, GridRequest(**{**req.__dict__, "workers": 1, "out_dir": tmp_path / "seq"}),
                          echo=lambda line: None)
    assert sequential.run_ids == parallel.run_ids
    for rid in parallel.run_ids:
        again = read_codes(demo_cache.run_dir(rid) / "codes", "query")
        assert np.array_equal(again["image"], codes[rid]["image"]) and np.array_equal(again["text"], codes[rid]["text"]), rid
    assert parallel.tables["map@50"].markdown.splitlines()[2:] == sequential.tables["map@50"].markdown.splitlines()[2:]


def test_a_paired_mode_run_is_validated_in_paired_mode(demo_cache):
    """UCMFH trained for paired evaluation cannot encode one modality alone: validation must not ask it to."""
    (run,) = train_runs(demo_cache, TrainRequest(dataset="demo", method="ucmfh", bits=(16,), epochs=1,
                                                 eval_mode="paired", progress=False))
    history = json.loads((run.run_dir / "history.json").read_text())
    assert [p["epoch"] for p in history["validation"]] == [1]
    assert run.summary["i2t_val_map@50"] == history["validation"][-1]["i2t"]
