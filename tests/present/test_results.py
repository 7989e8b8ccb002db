"""The results registry: publishing report rows, stale code versions, the generated README block."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.ground.versions import RESULTS_VERSION
from pipeline.ground.errors import CacheError, DataError
from pipeline.ground.store.runs import REPORT_FILE
from stages.present.results import (README_END, README_START, publish_runs, readme_block, readme_block_in,
                                     scan_results, update_readme, within_noise)
from tests.evaluate.helpers import make_run


def _provenance(version: str = RESULTS_VERSION, epochs: int = 10, paper: int = 10) -> dict:
    return {"config_hash": "abcd1234", "epochs": epochs, "paper_epochs": paper,
            "split_protocol": "random seed 1: query 30, database 300, train 100, validation 30",
            "hardware": "test CPU (1 torch threads)", "code_version": version, "git": "deadbee"}


@pytest.fixture
def published(tmp_path: Path) -> Path:
    cache, results = tmp_path / "cache", tmp_path / "results"
    runs = []
    for method, noise in (("alpha", 0.5), ("beta", 3.0)):
        for seed in (1, 2, 3):
            runs.append(make_run(cache, f"toy-{method}-16b-s{seed}", method, 16, seed, noise, **_provenance()))
    publish_runs(runs, results)
    return results


def test_publish_copies_report_rows_with_provenance(published: Path, tmp_path: Path):
    files = sorted((published / "toy").glob("*.parquet"))
    assert [f.name for f in files][:2] == ["toy-alpha-16b-s1.parquet", "toy-alpha-16b-s2.parquet"]
    original = pq.read_table(tmp_path / "cache" / "runs" / "toy-alpha-16b-s1" / REPORT_FILE)
    copy = pq.read_table(files[0])
    assert copy.equals(original)  # the rows themselves, nothing recomputed or dropped
    assert {"hardware", "code_version", "split_protocol", "config_hash", "train_s"} <= set(copy.column_names)


def test_a_report_without_provenance_is_refused(tmp_path: Path):
    run = make_run(tmp_path / "cache", "old-run", "alpha", 16, 1, 1.0)  # an older report: no provenance
    with pytest.raises(DataError, match="provenance column"):
        publish_runs([run], tmp_path / "results")
    with pytest.raises(CacheError, match="has no report.parquet: its training was interrupted"):
        publish_runs([tmp_path / "cache" / "runs" / "missing"], tmp_path / "results")


def test_stale_rows_are_listed_and_kept_out_of_the_table(published: Path, tmp_path: Path):
    old = make_run(tmp_path / "cache", "toy-gamma-16b-s1", "gamma", 16, 1, 0.1, **_provenance(version="0.0.1"))
    publish_runs([old], published)
    scan = scan_results(published, "toy")
    assert [p.name for p, _ in scan.stale] == ["toy-gamma-16b-s1.parquet"] and scan.stale[0][1] == "0.0.1"
    block = readme_block(published, "toy")
    assert "gamma" not in block.split("Stale")[0]  # not in the table
    assert "toy-gamma-16b-s1.parquet (0.0.1)" in block


def test_block_has_mean_std_and_the_spread_reading(published: Path):
    block = readme_block(published, "toy")
    assert "| alpha |" in block and "| beta |" in block and " ± " in block
    assert "6 runs, seeds 1, 2, 3" in block
    lines = within_noise("toy", scan_results(published, "toy").current)
    assert len(lines) == 2 and all(line.startswith(("i2t 16: best", "t2i 16: best")) for line in lines)


def test_budget_runs_are_marked_with_their_epochs(tmp_path: Path):
    run = make_run(tmp_path / "cache", "toy-delta-16b-s1", "delta", 16, 1, 1.0, **_provenance(epochs=3, paper=80))
    publish_runs([run], tmp_path / "results")
    assert "| delta (budget: 3 of 80 epochs) |" in readme_block(tmp_path / "results", "toy")


def test_update_readme_rewrites_only_its_block(published: Path, tmp_path: Path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START.format(dataset='toy')}\nold\n{README_END.format(dataset='toy')}\nrest\n")
    block = readme_block(published, "toy")
    assert update_readme(readme, "toy", block) is True
    assert readme_block_in(readme, "toy") == block
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n")
    assert update_readme(readme, "toy", block) is False  # idempotent
    with pytest.raises(DataError, match="no generated block"):
        update_readme(readme, "other", block)


def test_single_seed_cells_are_compared_with_the_other_side_spread(published: Path, tmp_path: Path):
    runs = [make_run(tmp_path / "cache", f"toy-{m}-16b-s1", m, 16, 1, noise, **_provenance())
            for m, noise in (("gamma", 4.0), ("delta", 5.0))]
    publish_runs(runs, published)
    lines = within_noise("toy", scan_results(published, "toy").current)
    best_alpha = [line for line in lines if line.startswith("i2t 16: best alpha")]
    assert best_alpha, lines
    # gamma and delta (one seed each) are judged against alpha's std; none lacks a spread on both sides
    assert "one seed on both sides" not in best_alpha[0]


def test_a_gpu_configuration_is_tabulated_and_read_apart_from_the_cpu_one(tmp_path: Path):
    """A GPU rounds otherwise than the CPU, so its runs of a method are a configuration of their own (its run
    ids differ): its own table row, named by device in the table, the reading and the papers' comparison,
    never more seeds of the CPU's, and never hiding them."""
    cache, results = tmp_path / "cache", tmp_path / "results"
    runs = []
    for seed in (1, 2, 3):
        runs.append(make_run(cache, f"toy-alpha-16b-s{seed}-aaaa", "alpha", 16, seed, 2.0, device="cpu",
                             **_provenance()))
        runs.append(make_run(cache, f"toy-beta-16b-s{seed}-aaaa", "beta", 16, seed, 1.5, device="cpu",
                             **_provenance()))
    for seed in (1, 2):  # cuda and cuda:0 are one device
        runs.append(make_run(cache, f"toy-alpha-16b-s{seed}-bbbb", "alpha", 16, seed, 0.3,
                             device="cuda" if seed == 1 else "cuda:0", **{**_provenance(), "config_hash": "bbbb"}))
    publish_runs(runs, results)
    block = readme_block(results, "toy")
    rows = [line for line in block.splitlines() if line.startswith("| alpha (")]
    assert sorted(r.split(" |")[0] for r in rows) == ["| alpha (device=cpu)", "| alpha (device=cuda)"], rows
    assert any("device=cuda" in r and "(n=2)" in r for r in rows) and any("(n=3)" in r for r in rows)
    reading = block.split("Within noise")[1].split("Beside the papers")[0]
    assert "best alpha on cuda (" in reading and "alpha on cuda has the best mean" in reading, reading
    beside = [line for line in block.split("papers' own numbers")[1].splitlines() if line.startswith("| alpha")]
    assert len(beside) == 4 and sum("cuda]" in line for line in beside) == 2, beside  # neither hides the other


def test_a_budget_configuration_is_read_apart_from_the_papers_schedule(tmp_path: Path):
    cache, results = tmp_path / "cache", tmp_path / "results"
    runs = [make_run(cache, f"toy-alpha-16b-s{seed}-{key}", "alpha", 16, seed, noise,
                     **{**_provenance(epochs=epochs), "config_hash": key})
            for seed in (1, 2) for key, epochs, noise in (("aaaa", 10, 2.0), ("cccc", 2, 0.3))]
    publish_runs(runs, results)
    block = readme_block(results, "toy")
    reading = block.split("Within noise")[1].split("Beside the papers")[0]
    assert "best alpha (2 of 10 epochs) (" in reading and "alpha (2 of 10 epochs) has the best mean" in reading


@pytest.mark.parametrize("corrupt, says", [
    (lambda rows: rows + [dict(rows[0])], "twice"),  # one score twice: it would count as another seed
    (lambda rows: [{**r, "bits": 64} if r["task"] == "t2i" else r for r in rows], "disagree on bits"),
    (lambda rows: [{**r, "task": "I2T"} if r["task"] == "i2t" else r for r in rows], "task 'I2T' is none of"),
    (lambda rows: [{**r, "hardware": None} for r in rows], "a row has no hardware"),
    (lambda rows: [{**r, "method": None} for r in rows], "a row has no method"),
])
def test_result_rows_that_would_land_in_another_cell_are_refused_in_one_line(published: Path, corrupt, says):
    import pyarrow as pa

    path = published / "toy" / "toy-alpha-16b-s1.parquet"
    table = pq.read_table(path)
    rows = corrupt(table.to_pylist())
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema).replace_schema_metadata(table.schema.metadata), path)
    with pytest.raises(DataError, match=says) as err:
        scan_results(published, "toy")
    assert "is not a result file cmh can trust" in str(err.value) and "\n" not in str(err.value)
