"""`cmh ls` and `cmh rm` on the demo cache: what is listed, what a dry run keeps, what is held back or refused,
and the near matches an error names for a dataset or run that is not cached (issue 19 item 4)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline.ground.store.cache import Cache
from pipeline.ground.store.checkpoints import RunCheckpoints, training_lock
from pipeline.ground.store.near import near_matches
from tests.faults.conftest import one_line_error


@pytest.fixture(scope="module")
def _trained(_demo_cache, tmp_path_factory) -> Path:
    """The demo cache with baseline 16 and 32 bits and a one-epoch djsrh at 16 bits (it has a model.pt)."""
    from pipeline.orchestration.training import TrainRequest, train_runs

    root = tmp_path_factory.mktemp("inventory") / "cache"
    for part in ("datasets", "features"):
        shutil.copytree(_demo_cache / part, root / part)
    cache = Cache(root)
    list(train_runs(cache, TrainRequest(dataset="demo", method="baseline", bits=[16, 32])))
    list(train_runs(cache, TrainRequest(dataset="demo", method="djsrh", bits=[16], epochs=1)))
    return root


@pytest.fixture
def stocked(_trained, tmp_path) -> Cache:
    root = tmp_path / "cache"
    shutil.copytree(_trained, root)
    return Cache(root)


def _ids(cache: Cache, method: str | None = None) -> list[str]:
    return sorted(p.name for p in cache.runs_dir().iterdir() if method is None or f"-{method}-" in p.name)


def _ls(cli, cache, *args):
    return cli("ls", "--cache", cache.root, *args)


def _rm(cli, cache, *args):
    return cli("rm", "--cache", cache.root, *args)


# -- cmh ls -----------------------------------------------------------------------------------------------
def test_ls_lists_datasets_runs_and_their_state(cli, stocked):
    djsrh = _ids(stocked, "djsrh")[0]
    (stocked.runs_dir() / djsrh / "report.parquet").unlink()  # as a run killed after its codes were written
    out = _ls(cli, stocked)
    assert out.code == 0, out.err
    lines = out.out.splitlines()
    demo = next(line for line in lines if line.strip().startswith("demo "))
    assert "160 items" in demo and "query" in demo and "alexnet" in demo and "bow" in demo and "MiB" in demo
    base16 = next(line for line in lines if "-baseline-16b-" in line)
    assert "baseline 16b s1" in base16 and "closed form" in base16 and "complete" in base16
    assert "mAP@50 i2t 0." in base16 and "t2i 0." in base16
    deep = next(line for line in lines if djsrh in line)
    assert "1 epochs (budget: paper" in deep and "trained" in deep and "mAP@50 -" in deep
    assert any(line.startswith("runs: 3 (2 complete)") and "3 model(s)" in line for line in lines)


def test_ls_filters_by_kind_method_dataset_and_pattern(cli, stocked):
    runs_only = _ls(cli, stocked, "--kind", "runs", "--method", "baseline").out
    assert "datasets:" not in runs_only and "encodings" not in runs_only
    assert runs_only.count("-baseline-") == 2 and "-djsrh-" not in runs_only
    matched = _ls(cli, stocked, "*-32b-*").out
    assert matched.count("-baseline-32b-") == 1 and "-16b-" not in matched and "  demo " not in matched
    assert "demo-baseline" in _ls(cli, stocked, "--dataset", "demo").out


def test_ls_and_rm_of_a_cache_that_is_missing_or_a_file(cli, tmp_path):
    (tmp_path / "file").write_text("x")
    for cmd in (["ls"], ["rm", "x"]):
        assert "missing: nothing was extracted there" in one_line_error(cli(*cmd, "--cache", tmp_path / "nope"))
        assert "is a file, not a folder" in one_line_error(cli(*cmd, "--cache", tmp_path / "file"))


def test_rm_of_a_dataset_being_extracted_is_refused(cli, stocked):
    from pipeline.ground.store.lock import DatasetLock

    with DatasetLock(stocked, "demo") as lock:
        lock.shared()  # as an extraction holds it while it writes features
        line = one_line_error(_rm(cli, stocked, "--kind", "datasets", "demo", "--yes", "--force"))
    assert f"being extracted by process {os.getpid()}" in line and "nothing removed" in line
    assert stocked.dataset("demo").exists()


@pytest.mark.parametrize("args, expect", [
    (["--kind", "models"], "choose datasets, runs, encodings"),
    (["--dataset", "dem"], "no dataset 'dem'"),
    (["--dataset", ""], "--dataset is empty"),
    (["--method", "ucmfh"], "methods with runs: baseline, djsrh"),
    (["demo-ucmfh-*"], "nothing in"),
    ([""], "empty pattern"),
])
def test_ls_bad_input_is_one_line(cli, stocked, args, expect):
    line = one_line_error(_ls(cli, stocked, *args))
    assert expect in line
    if args == ["--dataset", "dem"]:
        assert "cached: demo" in line


# -- cmh rm -----------------------------------------------------------------------------------------------
def test_rm_is_a_dry_run_unless_yes(cli, stocked):
    before = _ids(stocked)
    dry = _rm(cli, stocked, "demo-baseline-*")
    assert dry.code == 0 and "would remove 2 runs" in dry.out and "dry run: nothing removed" in dry.out
    assert _ids(stocked) == before
    done = _rm(cli, stocked, "demo-baseline-*", "--yes")
    assert done.code == 0 and "removed 2 runs, freed" in done.out
    assert _ids(stocked) == _ids(stocked, "djsrh") and len(_ids(stocked)) == 1


def test_rm_of_every_run_needs_all(cli, stocked):
    line = one_line_error(_rm(cli, stocked, "*", "--yes"))
    assert "matches every one of the 3 runs" in line and "--all" in line
    assert len(_ids(stocked)) == 3
    assert _rm(cli, stocked, "--all", "--yes", "--method", "baseline").code == 0
    assert _ids(stocked) == _ids(stocked, "djsrh")


@pytest.mark.parametrize("args, expect", [
    ([], "say which runs to remove"),
    ([""], "empty pattern"),
    (["demo-ucmfh-*"], "no runs in"),
    (["--kind", "everything", "x"], "choose runs, datasets, thumbnails, checkpoints"),
    (["--kind", "thumbnails", "demo"], "no thumbnails to remove"),
    (["--method", "ucmfh", "x"], "no run of method 'ucmfh'"),
])
def test_rm_bad_input_is_one_line_and_removes_nothing(cli, stocked, args, expect):
    before = _ids(stocked)
    assert expect in one_line_error(_rm(cli, stocked, *args, "--yes"))
    assert _ids(stocked) == before


def test_rm_pattern_matching_nothing_names_the_closest(cli, stocked):
    run = _ids(stocked, "baseline")[0]
    line = one_line_error(_rm(cli, stocked, run[:-1] + "x", "--yes"))
    assert f"closest: {run}" in line


def test_rm_a_dataset_that_runs_were_trained_on_needs_force(cli, stocked):
    dry = _rm(cli, stocked, "--kind", "datasets", "demo")
    assert "needs --force: 3 run(s) were trained on it" in dry.out
    line = one_line_error(_rm(cli, stocked, "--kind", "datasets", "demo", "--yes"))
    assert "3 run(s) were trained on it" in line and "--force" in line and "nothing removed" in line
    assert stocked.dataset("demo").exists()
    assert _rm(cli, stocked, "--kind", "datasets", "demo", "--yes", "--force").code == 0
    assert not stocked.dataset("demo").exists() and not (stocked.root / "features" / "dataset=demo").exists()
    assert len(_ids(stocked)) == 3  # the runs stay (and read as stale)


def test_rm_a_run_with_an_encoding_needs_force(cli, stocked):
    from pipeline.orchestration.encoding import encode_dataset

    run = _ids(stocked, "baseline")[0]
    encode_dataset(stocked, run, "demo", say=lambda line: None)
    assert "encoded: demo" in _ls(cli, stocked, "--kind", "encodings").out
    line = one_line_error(_rm(cli, stocked, run, "--yes"))
    assert "codes of demo (cmh encode)" in line and "--force" in line
    assert run in _ids(stocked)
    assert _rm(cli, stocked, run, "--yes", "--force").code == 0 and run not in _ids(stocked)


def test_rm_a_run_being_trained_is_refused_naming_the_pid(cli, stocked):
    import os

    run = _ids(stocked, "djsrh")[0]
    with training_lock(stocked.runs_dir() / run, run):
        assert f"training now (pid {os.getpid()})" in _ls(cli, stocked, run).out
        line = one_line_error(_rm(cli, stocked, run, "--yes", "--force"))
        assert f"process {os.getpid()} is training it" in line
        assert run in _ids(stocked)
    assert _rm(cli, stocked, run, "--yes").code == 0 and run not in _ids(stocked)


def test_rm_checkpoints_keeps_the_run(cli, stocked):
    run = _ids(stocked, "djsrh")[0]
    RunCheckpoints(stocked.runs_dir() / run, {"config_hash": "x"}).save({"epoch": 0})
    out = _rm(cli, stocked, "--kind", "checkpoints", "--all", "--yes")
    assert out.code == 0 and "removed 1 checkpoints" in out.out and "leftover" in out.out
    assert not (stocked.runs_dir() / run / "checkpoint.pt").exists() and run in _ids(stocked)


# -- near matches in the errors of other commands --------------------------------------------------------
def test_near_matches_prefer_a_limit_cache_then_typos():
    assert near_matches("mirflickr", ["coco", "mirflickr-n2000", "nuswide"]) == ["mirflickr-n2000"]
    assert near_matches("mirflikr", ["coco", "mirflickr"]) == ["mirflickr"]
    assert near_matches("coco", ["mirflickr"]) == []


def test_train_and_report_on_an_uncached_name_name_the_limit_cache(cli, stocked, tmp_path):
    (stocked.root / "datasets" / "dataset=demo").rename(stocked.root / "datasets" / "dataset=demo-n160")
    line = one_line_error(cli("train", "--method", "baseline", "--dataset", "demo", "--bits", "16",
                              "--cache", stocked.root))
    assert "cached: demo-n160" in line and "LIMIT=160" in line
    assert not line.split("cached:")[0].rstrip().endswith("extract it first")
    stocked2 = Cache(tmp_path / "c2")
    shutil.copytree(stocked.root / "runs", stocked2.root / "runs")
    line = one_line_error(cli("report", "--dataset", "dem", "--cache", stocked2.root))
    assert "runs are cached for: demo" in line
    line = one_line_error(cli("publish", "--dataset", "dem", "--results", tmp_path / "results", "--cache",
                              stocked2.root))
    assert "runs are cached for: demo" in line


def test_query_on_an_uncached_run_names_the_closest(cli, stocked):
    run = _ids(stocked, "baseline")[0]
    line = one_line_error(cli("query", "--run", run[:-2], "--text", "dog", "--cache", stocked.root))
    assert f"closest: {run}" in line
