"""Degenerate codes and settings that do nothing said, tracebacks become one line, messages that sent the
user wrong name the right fix (issue 22, classes 5-7)."""
from __future__ import annotations

import errno
import io
import json
import os
import shlex
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.faults.conftest import REPO, one_line_error, write_pairs


def _runs(cache):
    return sorted(p.name for p in (cache / "runs").iterdir()) if (cache / "runs").exists() else []


def _train(cli, cache, *extra, method="djsrh"):
    return cli("train", "--method", method, "--dataset", "pairs", "--cache", cache, "--bits", "8", *extra)


# -- class 5: degenerate codes, repeated keys, settings the optimiser ignores -----------------------------------
def test_collapsed_codes_are_said_by_train_in_the_report_and_in_the_table(cli, tmp_path, caplog):
    """Every item shows the same picture and the same tags: any model gives them one code."""
    data, cache = tmp_path / "same", tmp_path / "cache"
    (data / "img").mkdir(parents=True)
    picture = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    rows = []
    for i in range(40):
        Image.fromarray(picture).save(data / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "text": ["dog", "beach"], "labels": [["dog"], ["cat"]][i % 2]})
    (data / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert cli("extract", "--dataset", "pairs", "--data-dir", data, "--cache", cache, "--encoders", "alexnet,bow",
               "-o", "dataset.text_kind=tags").code == 0
    result = cli("train", "--method", "baseline", "--dataset", "pairs", "--cache", cache, "--bits", "16")
    assert result.code == 0, result.err
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("degenerate codes")]
    assert len(said) == 1 and "database image codes take 1 distinct value(s) and 16 of 16 bits never change" in said[0]
    (run,) = _runs(cache)
    rows = pq.read_table(cache / "runs" / run / "report.parquet").to_pylist()
    health = {(r["task"], r["metric"]): r["value"] for r in rows if r["metric"] in ("distinct_codes", "constant_bits")}
    assert health == {("image", "distinct_codes"): 1, ("image", "constant_bits"): 16,
                      ("text", "distinct_codes"): 1, ("text", "constant_bits"): 16}
    table = cli("report", "--cache", cache, "--dataset", "pairs")
    assert table.code == 0
    assert "†" in table.out and "degenerate codes in at least one seed" in table.out
    assert "baseline 16 bits (1 distinct database code(s), 16 of 16 bits constant)" in table.out
    assert "**0." not in table.out  # a collapsed cell is never the column's best
    written = pq.read_table(cache / "reports" / "pairs_map_at_50.parquet")
    assert written.column("i2t@16_degenerate").to_pylist() == [True]


def test_healthy_codes_are_not_marked(built, cli):
    _, cache, run = built
    table = cli("report", "--cache", cache, "--dataset", "pairs")
    assert table.code == 0 and "†" not in table.out
    rows = pq.read_table(cache / "runs" / run / "report.parquet").to_pylist()
    assert {r["value"] for r in rows if r["metric"] == "constant_bits"} == {0.0}


@pytest.mark.parametrize("args, expect", [
    (["grid", "--methods", "baseline,djsrh", "--epochs", "djsrh=1,djsrh=2"], "epochs for djsrh are given twice (1 and 2)"),
    (["train", "--method", "djsrh", "--set", "lr=0.1", "--set", "lr=0.2"], "--set lr is given twice (0.1 and 0.2)"),
    (["train", "--method", "djsrh", "--bits", "16,16"], "names 16 more than once"),
    (["grid", "--methods", "baseline", "--seeds", "1,2,1"], "names 1 more than once"),
])
def test_a_key_or_value_given_twice_is_refused(cli, built, args, expect):
    _, cache, _ = built
    before = _runs(cache)
    result = cli(*args, "--dataset", "pairs", "--cache", cache)
    assert result.code == 2 and "Traceback" not in result.err
    assert expect in " ".join(result.err.split()), result.err  # typer boxes its usage errors
    assert _runs(cache) == before


@pytest.mark.parametrize("method, extra, expect", [
    ("djsrh", ["--set", "optimizer=adam", "--set", "momentum=0.5", "--epochs", "1"],
     "optimizer adam does not read momentum (it reads lr, betas, weight_decay): --set momentum is ignored"),
    ("djsrh", ["--set", "betas=[0.5,0.9]", "--epochs", "1"], "optimizer sgd does not read betas"),
    ("baseline", ["--set", "lr=0.1"], "baseline is fitted in closed form, without an optimiser: its setting(s) lr are "
                                      "ignored"),
    ("baseline", ["--epochs", "5"], "its setting(s) epochs are ignored"),
])
def test_settings_the_optimiser_ignores_are_said_once(cli, built, caplog, method, extra, expect):
    _, cache, _ = built
    result = _train(cli, cache, *extra, method=method)
    assert result.code == 0, result.err
    assert sum(expect in r.getMessage() for r in caplog.records) == 1


# -- class 6: tracebacks that become one line ---------------------------------------------------------------
@pytest.mark.parametrize("args, expect", [
    (["--set", 'weights={"image_text": "x"}'], "loss weight image_text='x': give a number >= 0"),
    (["--set", 'weights={"image_text": -1}'], "loss weight image_text=-1"),
    (["--set", 'weights={"image_image": 0, "image_text": 0, "text_text": 0}'], "every loss weight is 0"),
    (["--set", "optimizer=lbfgs"], "optimizer='lbfgs' is not one cmh trains with; use sgd or adam"),
    (["--set", "nesterov=true", "--set", "momentum=0"], "nesterov=true needs momentum > 0"),
    (["--set", "betas=[0.9]", "--set", "optimizer=adam"], "betas=[0.9]: give two numbers in [0, 1)"),
    (["--set", "weight_decay=-1"], "weight_decay=-1: give a finite number >= 0"),
    (["--seed", "4294967296"], "training seed 4294967296: give a whole number from 0 to 4294967295"),
])
def test_settings_that_fail_mid_training_are_refused_before_it(cli, built, args, expect):
    _, cache, _ = built
    before = _runs(cache)
    assert expect in one_line_error(_train(cli, cache, *args))
    assert _runs(cache) == before  # no run folder started


def test_a_cache_a_report_folder_or_a_results_folder_that_is_a_file(cli, built, tmp_path):
    _, cache, run = built
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "--cache" in (line := one_line_error(_train(cli, afile))) and "is a file, not a folder" in line
    assert "is a file, not a folder" in one_line_error(_train(cli, afile / "below"))
    line = one_line_error(cli("report", "--cache", cache, "--dataset", "pairs", "--out-dir", afile))
    assert "--out-dir" in line and "is a file, not a folder" in line
    line = one_line_error(cli("publish", "--dataset", "pairs", "--cache", cache, "--results", afile))
    assert "--results" in line and "is a file, not a folder" in line
    line = one_line_error(cli("report", "--results", afile, "--dataset", "pairs"))
    assert "is a file, not a folder" in line


class _FullDisk(io.FileIO):
    """A file whose every write fails as on a full disk."""

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_the_model_is_saved_is_one_line_and_leaves_no_partial(cli, built, monkeypatch):
    import pipeline.ground.store.runs as runs

    _, cache, _ = built
    real_fdopen = os.fdopen

    def full_disk(fd, mode="r", *args, **kwargs):  # the model file is the one binary file written here
        return _FullDisk(fd, "wb") if "b" in mode else real_fdopen(fd, mode, *args, **kwargs)

    monkeypatch.setattr(runs.os, "fdopen", full_disk)
    line = one_line_error(_train(cli, cache, "--epochs", "1"))
    assert "model.pt: No space left on device: free space on that disk" in line and "--cache" not in line
    (run,) = [r for r in _runs(cache) if "djsrh" in r]
    assert sorted(p.name for p in (cache / "runs" / run).iterdir()) == ["config.json"]  # no model, no .partial


def _readme(tmp_path, text):
    readme = tmp_path / "README.md"
    readme.write_text(text)
    return readme


def test_a_readme_whose_end_marker_is_above_its_start_marker(cli, tmp_path):
    from stages.present.results import README_END, README_START

    results = tmp_path / "results"
    shutil.copytree(REPO / "results" / "mirflickr", results / "mirflickr")
    start, end = README_START.format(dataset="mirflickr"), README_END.format(dataset="mirflickr")
    readme = _readme(tmp_path, f"# title\n{end}\nold\n{start}\n")
    line = one_line_error(cli("report", "--results", results, "--dataset", "mirflickr", "--readme", readme))
    assert "README.md line 2: the end marker" in line and "above the start marker" in line and "(line 4)" in line
    assert not (tmp_path / "docs").exists()  # refused before the figure was drawn
    readme = _readme(tmp_path, f"{start}\n{end}\n{start}\n{end}\n")
    assert "keep one of each" in one_line_error(cli("report", "--results", results, "--dataset", "mirflickr",
                                                    "--readme", readme))


# -- class 2 (the reader) and 7: a published file that cannot be right ---------------------------------------
def _damage(path, change):
    table = pq.read_table(path)
    meta = table.schema.metadata
    pq.write_table(change(table).replace_schema_metadata(meta), path)


@pytest.mark.parametrize("change, expect", [
    (lambda t: t.set_column(t.column_names.index("value"), "value",
                            pa.array([1.5] + t.column("value").to_pylist()[1:])), "is outside [0, 1]"),
    (lambda t: t.drop_columns(["seed"]), "lacks the column(s) ['seed']"),
    (lambda t: t.set_column(t.column_names.index("value"), "value",
                            pa.array([str(v) for v in t.column("value").to_pylist()])), "column 'value' holds string"),
    (lambda t: t.set_column(t.column_names.index("bits"), "bits", pa.array([0] * len(t), pa.int64())),
     "bits=0, seed=1"),
])
def test_the_results_reader_refuses_rows_that_cannot_be_right_naming_the_file(cli, tmp_path, change, expect):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results" / "mirflickr", results / "mirflickr")
    bad = results / "mirflickr" / "mirflickr-cca-itq-16b-s1-1dd3cf89.parquet"
    _damage(bad, change)
    line = one_line_error(cli("report", "--results", results, "--dataset", "mirflickr"))
    assert f"{bad} is not a result file cmh can trust: " in line and expect in line
    assert "cmh publish --dataset mirflickr --run mirflickr-cca-itq-16b-s1-1dd3cf89" in line


def test_a_full_disk_while_publishing_names_no_cache_and_leaves_the_old_file(cli, built, tmp_path, monkeypatch):
    import pipeline.ground.store.parquet as parquet

    _, cache, run = built
    results = tmp_path / "results"
    assert cli("publish", "--dataset", "pairs", "--cache", cache, "--results", results).code == 0
    before = (results / "pairs" / f"{run}.parquet").read_bytes()

    def full(table, where, **kwargs):
        with open(where, "wb") as fh:
            fh.write(b"PAR1 half")
        raise OSError(errno.ENOSPC, "No space left on device", str(where))

    monkeypatch.setattr(parquet.pq, "write_table", full)
    line = one_line_error(cli("publish", "--dataset", "pairs", "--cache", cache, "--results", results))
    assert "No space left on device: free space on that disk" in line and "--cache" not in line
    assert sorted(p.name for p in (results / "pairs").iterdir()) == [f"{run}.parquet"]  # no .partial
    assert (results / "pairs" / f"{run}.parquet").read_bytes() == before


# -- class 7: messages that named the wrong fix -------------------------------------------------------------
def test_a_missing_split_table_names_the_extract_command_that_makes_it(cli, built, tmp_path):
    data, cache, _ = built
    assert cli("extract", "--dataset", "pairs", "--data-dir", data, "--cache", cache, "--encoders", "alexnet,bow",
               "--limit", "30", "-o", "dataset.text_kind=tags").code == 0
    (cache / "datasets" / "dataset=pairs-n30" / "splits.parquet").unlink()
    line = one_line_error(cli("train", "--method", "baseline", "--dataset", "pairs-n30", "--cache", cache,
                              "--bits", "8"))
    assert f"cmh extract --dataset pairs --data-dir {data} --limit 30 -o dataset.text_kind=tags --overwrite" in line
    assert "--dataset pairs-n30" not in line


def test_a_missing_manifest_is_not_listed_as_cached(cli, built):
    _, cache, _ = built
    (cache / "features/dataset=pairs/encoder=alexnet.imagenet/_manifest.json").unlink()
    line = one_line_error(_train(cli, cache, method="baseline"))
    assert "encoder=alexnet.imagenet have no _manifest.json" in line and "cached encoders" not in line
    assert "--encoders alexnet --overwrite" in line


def test_a_run_folder_without_its_config_is_named_as_such(cli, built, caplog):
    _, cache, run = built
    (cache / "runs" / run / "config.json").unlink()
    line = one_line_error(cli("query", "--run", run, "--cache", cache, "--text", "dog"))
    assert f"run folder {cache / 'runs' / run} has no config.json" in line and "runs:" not in line
    line = one_line_error(cli("report", "--cache", cache, "--dataset", "pairs"))
    assert "no run to report" in line and "its config.json is missing" in line
    result = cli("train", "--method", "baseline", "--dataset", "pairs", "--cache", cache, "--bits", "16")
    assert result.code == 0 and "(cached)" not in result.out and "its config.json is missing" in caplog.text
    assert (cache / "runs" / run / "config.json").exists()


def test_an_empty_cmh_cache_is_refused_not_the_current_folder(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CMH_CACHE", "")
    line = one_line_error(cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "8"))
    assert "$CMH_CACHE is set but empty" in line and "unset CMH_CACHE" in line
    assert list(tmp_path.iterdir()) == []


def test_an_empty_cmh_data_root_is_refused(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CMH_DATA_ROOT", " ")
    line = one_line_error(cli("extract", "--dataset", "coco", "--cache", tmp_path / "c", "--encoders", "bow"))
    assert "$CMH_DATA_ROOT is set but empty" in line


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_makefile_passes_folders_with_spaces_and_quotes_as_one_word(tmp_path):
    data, cache = "my data/it's here", "my cache"
    out = subprocess.run(["make", "-n", "-o", ".venv/.cmh-installed", "extract", "train", "report", f"DATA_DIR={data}",
                          f"CACHE={cache}", "LIMIT=30"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    commands = [shlex.split(c) for c in out.stdout.replace("\\\n", " ").splitlines() if "-m pipeline" in c]
    assert [c[3] for c in commands] == ["extract", "train", "report"]
    extract, train, report = commands
    assert extract[extract.index("--data-dir") + 1] == data and extract[extract.index("--encoders") + 1] == "alexnet,bow"
    assert all(c[c.index("--cache") + 1] == cache for c in commands)
    assert train[train.index("--dataset") + 1] == "mirflickr-n30"


def test_a_failed_json_write_leaves_no_partial_file(tmp_path):
    from pipeline.ground.store.parquet import write_json_atomic

    class Unwritable:
        def __str__(self) -> str:  # json.dump(default=str) calls it half-way through the file
            raise TypeError("cannot be written")

    write_json_atomic({"a": 1}, tmp_path / "x.json")
    with pytest.raises(TypeError):
        write_json_atomic({"a": Unwritable()}, tmp_path / "x.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}


# -- beyond the list ------------------------------------------------------------------------------------------
def test_a_grid_naming_a_method_twice_is_refused(cli, built):
    _, cache, _ = built
    result = cli("grid", "--methods", "baseline,baseline", "--dataset", "pairs", "--cache", cache, "--bits", "8")
    assert result.code == 2 and "--methods names baseline more than once" in " ".join(result.err.split())


def test_a_cache_under_the_home_folder_is_expanded_not_made_here(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CMH_CACHE", "~/cache")
    line = one_line_error(cli("train", "--method", "baseline", "--dataset", "mirflickr-n300", "--bits", "8"))
    assert f"no cached dataset 'mirflickr-n300' under {tmp_path / 'home' / 'cache'}" in line
    assert "`cmh extract --dataset mirflickr --limit 300`" in line  # the source and its limit, not the cache name
    assert not (tmp_path / "~").exists()


def test_a_full_disk_while_features_are_written_names_the_shard(cli, tmp_path, monkeypatch):
    import pipeline.ground.store.parquet as parquet

    data = tmp_path / "d"
    write_pairs(data)
    real = parquet.pq.write_table

    def full(table, where, **kwargs):
        if "features" in str(where):
            raise OSError(errno.ENOSPC, "Error writing bytes to file")  # as Arrow raises it: no file name
        return real(table, where, **kwargs)

    monkeypatch.setattr(parquet.pq, "write_table", full)
    line = one_line_error(cli("extract", "--dataset", "pairs", "--data-dir", data, "--cache", tmp_path / "c",
                              "--encoders", "bow"))
    assert "/features/dataset=pairs/encoder=bow/" in line and "No space left on device" in line
    assert not list((tmp_path / "c").rglob("*.partial"))
