"""Runs, encodings, indexes and published rows tied to the data they came from (issue 22, classes 1-3).

A run id is the method config alone, so after the dataset is extracted again under the same name every
use of an old run must notice: training trains it again (and says so), the others refuse it with the
command that makes it current. Published rows are compared with what they would replace, and two
writers of one dataset cannot mix their collections.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.faults.conftest import REPO, one_line_error, write_pairs


def _extract(cli, data, cache, *extra, encoders="alexnet,bow"):
    return cli("extract", "--dataset", "pairs", "--data-dir", data, "--cache", cache, "--encoders", encoders,
               "-o", "dataset.text_kind=tags", *extra)


def _train(cli, cache, *extra):
    return cli("train", "--method", "baseline", "--dataset", "pairs", "--cache", cache, "--bits", "16", *extra)


def _report_bytes(cache, run):
    return (cache / "runs" / run / "report.parquet").read_bytes()


@pytest.fixture
def changed(built, tmp_path, cli):
    """The built cache after `extract --overwrite` of other pixels and labels under the same name."""
    _, cache, run = built
    data = tmp_path / "other"
    write_pairs(data, seed=3, pixels_seed=7)
    assert _extract(cli, data, cache, "--overwrite").code == 0
    return data, cache, run


# -- class 1: a finished run whose data changed -------------------------------------------------------------
def test_train_trains_a_run_again_when_its_data_changed_and_says_so(changed, cli, caplog):
    _, cache, run = changed
    before = _report_bytes(cache, run)
    result = _train(cli, cache)
    assert result.code == 0, result.err
    assert "(cached)" not in result.out and run in result.out
    said = [r.getMessage() for r in caplog.records if "trained on other data" in r.getMessage()]
    assert len(said) == 1 and "training it again" in said[0] and "its items were extracted again" in said[0]
    assert _report_bytes(cache, run) != before
    caplog.clear()
    again = _train(cli, cache)
    assert "(cached)" in again.out and "trained on other data" not in caplog.text  # said once, then current


@pytest.mark.parametrize("command", [
    ["query", "--text", "dog"],
    ["index", "--kind", "flat"],
    ["encode", "--dataset", "pairs"],
])
def test_uses_of_a_run_whose_data_changed_are_refused_with_the_retrain_command(changed, cli, command):
    _, cache, run = changed
    line = one_line_error(cli(command[0], "--run", run, "--cache", cache, *command[1:]))
    assert f"run {run} was trained on other data than 'pairs' holds now" in line
    assert "`cmh train --method baseline --dataset pairs --bits 16 --seed 1" in line


def test_report_leaves_out_a_stale_run_and_publish_refuses_it(changed, cli, tmp_path, caplog):
    _, cache, run = changed
    line = one_line_error(cli("report", "--cache", cache, "--dataset", "pairs"))
    assert "no run to report: 1 of 1 run(s) were trained on other data" in line
    results = tmp_path / "results"
    line = one_line_error(cli("publish", "--dataset", "pairs", "--cache", cache, "--results", results))
    assert "nothing published" in line and "cmh train --method baseline" in line
    assert not results.exists()
    # a current run beside it: the table shows that one and counts the one left out
    assert cli("train", "--method", "cca-itq", "--dataset", "pairs", "--cache", cache, "--bits", "8").code == 0
    result = cli("report", "--cache", cache, "--dataset", "pairs", "--html")
    assert result.code == 0 and "cca-itq" in result.out and "| baseline" not in result.out
    assert "left out of the table: 1 of 2 run(s)" in caplog.text
    page = (cache / "reports" / "pairs.html").read_text()
    assert "cca-itq" in page and run not in page  # no gallery of old codes beside new pictures


def test_a_new_split_seed_makes_the_run_stale(built, cli):
    data, cache, run = built
    assert _extract(cli, data, cache, "--overwrite", "--seed", "2").code == 0
    line = one_line_error(cli("query", "--run", run, "--cache", cache, "--text", "dog"))
    assert "its splits were drawn again, split settings seed 1 -> 2" in line


def test_other_item_ids_give_one_line_not_a_key_error(built, cli, tmp_path):
    _, cache, run = built
    data = tmp_path / "renumbered"
    write_pairs(data)
    rows = [json.loads(line) for line in (data / "pairs.jsonl").read_text().splitlines()]
    (data / "pairs.jsonl").write_text("\n".join(json.dumps({**r, "id": 1000 + k}) for k, r in enumerate(rows)))
    assert _extract(cli, data, cache, "--overwrite").code == 0
    line = one_line_error(cli("query", "--run", run, "--cache", cache, "--text", "dog"))
    assert "trained on other data" in line


def test_an_index_of_a_run_whose_data_changed_is_not_used(built, cli, tmp_path):
    data, cache, run = built
    assert cli("index", "--run", run, "--cache", cache).code == 0
    other = tmp_path / "other"
    write_pairs(other, seed=4)
    assert _extract(cli, other, cache, "--overwrite").code == 0
    assert "trained on other data" in one_line_error(cli("query", "--run", run, "--cache", cache, "--text", "dog"))


# -- class 2: publish compares what it would replace ----------------------------------------------------------
def test_publish_refuses_to_replace_results_of_other_data_unless_told(built, cli, tmp_path):
    data, cache, run = built
    results = tmp_path / "results"
    assert cli("publish", "--dataset", "pairs", "--cache", cache, "--results", results).code == 0
    published = results / "pairs" / f"{run}.parquet"
    before = published.read_bytes()
    # the case: a LIMIT= extraction cached under the benchmark's own name, trained and published
    assert _extract(cli, data, cache, "--overwrite", "--limit", "30", "--name", "pairs").code == 0
    assert _train(cli, cache).code == 0
    line = one_line_error(cli("publish", "--dataset", "pairs", "--cache", cache, "--results", results))
    assert f"would replace {published}" in line and "published from other data" in line
    assert "query 4, database 36" in line and "query 3, database 27" in line and "--replace" in line
    assert published.read_bytes() == before
    assert cli("publish", "--dataset", "pairs", "--cache", cache, "--results", results, "--replace").code == 0
    assert published.read_bytes() != before
    assert pq.read_table(published).column("n_database")[0].as_py() == 27


def test_publish_refuses_a_run_beside_results_of_other_data(built, cli, tmp_path):
    data, cache, run = built
    results = tmp_path / "results"
    assert cli("publish", "--dataset", "pairs", "--cache", cache, "--results", results).code == 0
    assert _extract(cli, data, cache, "--overwrite", "--limit", "30", "--name", "pairs").code == 0
    assert cli("train", "--method", "cca-itq", "--dataset", "pairs", "--cache", cache, "--bits", "8").code == 0
    cca = next(p.name for p in (cache / "runs").iterdir() if "cca-itq" in p.name)
    line = one_line_error(cli("publish", "--dataset", "pairs", "--run", cca, "--cache", cache, "--results", results))
    assert "would be tabulated beside" in line
    assert sorted(p.name for p in (results / "pairs").iterdir()) == [f"{run}.parquet"]


def test_publish_a_run_of_another_dataset_or_a_run_that_does_not_exist(built, cli, tmp_path):
    _, cache, run = built
    line = one_line_error(cli("publish", "--dataset", "mirflickr", "--run", run, "--cache", cache,
                              "--results", tmp_path / "r"))
    assert "was trained on 'pairs', not on 'mirflickr'" in line and "--dataset pairs" in line
    line = one_line_error(cli("publish", "--dataset", "pairs", "--run", "nope", "--cache", cache,
                              "--results", tmp_path / "r"))
    assert "no run 'nope'" in line and "did not finish" not in line


# -- class 3: writers of one dataset, and features of other items ----------------------------------------------
def test_an_extraction_waits_for_no_one_and_mixes_nothing_while_another_holds_the_dataset(built, cli, tmp_path):
    from pipeline.ground.store.cache import Cache
    from pipeline.ground.store.lock import DatasetLock

    _, cache, _ = built
    other = tmp_path / "other"
    write_pairs(other, seed=5, pixels_seed=5)
    items = cache / "datasets" / "dataset=pairs" / "items.parquet"
    before = items.read_bytes()
    with DatasetLock(Cache(cache), "pairs") as lock:
        lock.shared()  # what a running extraction of the cached collection holds
        line = one_line_error(_extract(cli, other, cache, "--overwrite", encoders="bow"))
    assert f"is being extracted by process {os.getpid()}" in line and "run the command again" in line
    assert items.read_bytes() == before


def test_two_extractions_of_different_collections_at_once_never_leave_a_mix(tmp_path):
    cache = tmp_path / "cache"
    sources = [write_pairs(tmp_path / f"src{k}", n=40 + 10 * k, seed=k).parent for k in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline", "extract", "--dataset", "pairs", "--data-dir", src,
                               "--cache", cache, "--encoders", "bow", "-o", "dataset.text_kind=tags"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for src in sources]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 2], outcomes  # one wins; the other is refused in one line, whichever came second
    loser = next(err for code, err in outcomes if code == 2)
    assert "Traceback" not in loser and sum(line.startswith("error: ") for line in loser.splitlines()) == 1
    from pipeline.ground.store.cache import Cache

    winner = next(k for k, (code, _) in enumerate(outcomes) if code == 0)
    ds = Cache(cache).dataset("pairs")
    assert len(ds.items) == 40 + 10 * winner  # the winner's collection, whole
    assert ds.manifest("bow")["dataset_fingerprint"] == ds.items_meta["fingerprint"]
    assert ds.manifest("bow")["splits_fingerprint"] == ds.splits_fingerprint


def test_training_refuses_features_extracted_from_other_items(built, cli, tmp_path):
    _, cache, _ = built
    other = tmp_path / "other"
    write_pairs(other, seed=6, pixels_seed=6)
    assert _extract(cli, other, cache, "--overwrite", encoders="bow").code == 0  # alexnet's features stay behind
    line = one_line_error(cli("train", "--method", "cca-itq", "--dataset", "pairs", "--cache", cache, "--bits", "8"))
    assert "the alexnet.imagenet features of 'pairs' were extracted from other items" in line
    assert "--encoders alexnet --overwrite" in line


def test_a_lock_is_released_when_its_extraction_fails(built, cli, tmp_path):
    data, cache, _ = built
    assert one_line_error(_extract(cli, data, cache, "--seed", "3"))  # refused: other splits than cached
    assert _extract(cli, data, cache, "--overwrite", "--seed", "3", encoders="bow").code == 0
    assert os.path.exists(cache / "locks" / "dataset=pairs.lock")


# -- beyond the list ------------------------------------------------------------------------------------------
def test_shard_workers_that_start_together_share_the_dataset(tmp_path):
    """The lock must not refuse the --shard workers of one extraction, which start at the same moment."""
    data, cache = write_pairs(tmp_path / "src").parent, tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline", "extract", "--dataset", "pairs", "--data-dir", data,
                               "--cache", cache, "--encoders", "bow", "-o", "dataset.text_kind=tags",
                               "--shard", f"{k}/2"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(2)]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    from pipeline.ground.store.cache import Cache

    assert Cache(cache).dataset("pairs").manifest("bow")["complete"]


def test_results_copied_twice_or_into_another_datasets_folder_are_refused(cli, tmp_path):
    import shutil

    results = tmp_path / "results"
    shutil.copytree(REPO / "results" / "mirflickr", results / "mirflickr")
    one = results / "mirflickr" / "mirflickr-cca-itq-16b-s1-1dd3cf89.parquet"
    shutil.copy(one, results / "mirflickr" / "copy.parquet")
    line = one_line_error(cli("report", "--results", results, "--dataset", "mirflickr"))
    assert "both hold run mirflickr-cca-itq-16b-s1-1dd3cf89: delete the copy" in line
    (results / "mirflickr" / "copy.parquet").unlink()
    (results / "coco").mkdir()
    shutil.copy(one, results / "coco" / one.name)
    line = one_line_error(cli("report", "--results", results, "--dataset", "coco"))
    assert "its rows are of dataset mirflickr, not of 'coco' (its folder)" in line
    (results / "coco" / one.name).unlink()
    assert "no published results for 'coco'" in one_line_error(cli("report", "--results", results, "--dataset", "coco"))
