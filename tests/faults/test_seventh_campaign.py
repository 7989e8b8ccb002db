"""Seventh fault campaign: files of the cache that are there, readable and of the right format, but of the wrong
kind (valid JSON of another shape, a Parquet file with other columns, types or rows, a model of another run),
typed queries far longer than a query, feature specs that differ only in spacing, and a process out of file
descriptors.

Each case runs on the fault cases' built collection (40 tag pairs, alexnet + bow, a 16-bit baseline run): the
command does the right thing, or stops with one ``error:`` line naming the file and the fix, and never answers
with a traceback or a silently wrong result.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.conftest import one_line_error


def _set_metadata(path: Path, blob: bytes) -> None:
    """Rewrite a Parquet file of the cache with its ``cmh`` metadata replaced by ``blob``, rows unchanged."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = dict(table.schema.metadata or {})
    meta[b"cmh"] = blob
    pq.write_table(table.replace_schema_metadata(meta), path)


# -- JSON records of the right name but another shape ------------------------------------------------------------
@pytest.mark.parametrize("record, said", [("[]", "a JSON array, not an object"), ("null", "a JSON null, not an object"),
                                          ("{}", "no dataset, method, bits"),
                                          ('{"dataset": "pairs", "method": "baseline", "bits": "16"}',
                                           "bits is a JSON string")])
def test_a_run_config_of_another_json_shape_is_named_not_a_traceback(cli, built, record, said):
    _, cache, run = built
    (cache / "runs" / run / "config.json").write_text(record)
    line = one_line_error(cli("query", "--run", run, "--text", "dog", "--cache", cache))
    assert "config.json is damaged" in line and said in line and "--force" in line, line
    listed = cli("ls", "--kind", "runs", "--cache", cache)
    assert listed.code == 0 and run in listed.out and "damaged" in listed.out, listed
    # the table leaves it out and says so, instead of leaving it out as a run of no dataset without a word
    line = one_line_error(cli("report", "--dataset", "pairs", "--cache", cache))
    assert run in line and "config.json is damaged" in line, line


def test_train_trains_a_run_whose_config_is_empty_again_instead_of_reusing_it(cli, built, caplog):
    _, cache, run = built
    (cache / "runs" / run / "config.json").write_text("{}")
    result = cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "16", "--cache", cache)
    assert result.code == 0 and "damaged config.json: training it again" in caplog.text, result.err
    assert json.loads((cache / "runs" / run / "config.json").read_text())["run_id"] == run


@pytest.mark.parametrize("record, said", [("[]", "a JSON array, not an object"),
                                          ('{"schema_version": 1}', "no columns, default_columns, shard_size, parts")])
def test_a_feature_manifest_of_another_json_shape_names_the_overwrite(cli, built, record, said):
    _, cache, _ = built
    (cache / "features" / "dataset=pairs" / "encoder=bow" / "_manifest.json").write_text(record)
    line = one_line_error(cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "8", "--cache", cache))
    assert "_manifest.json is damaged" in line and said in line and "--encoders bow --overwrite" in line, line
    assert cli("ls", "--cache", cache).code == 0


@pytest.mark.parametrize("blob, said", [(b"[1]", "its cmh metadata is a JSON array"),
                                        (b'{"schema_version": 1}', "no dataset, label_names, text_kind, source")])
def test_item_table_metadata_of_another_json_shape_is_named(cli, built, blob, said):
    _, cache, _ = built
    _set_metadata(cache / "datasets" / "dataset=pairs" / "items.parquet", blob)
    line = one_line_error(cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "8", "--cache", cache))
    assert "items.parquet is damaged" in line and said in line and "--overwrite" in line, line


# -- Parquet files of the cache that Arrow reads but that their writer never wrote -------------------------------
def _rewrite(path: Path, change) -> None:
    """Rewrite a Parquet file with ``change(table)``, keeping its schema metadata (what a reader checks first)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata
    pq.write_table(change(pq.read_table(path)).replace_schema_metadata(meta), path)


def _column(table, name, array):
    return table.set_column(table.schema.get_field_index(name), name, array)


def _nan_row(table):
    import numpy as np
    import pyarrow as pa

    vectors = table.column("pool").combine_chunks()
    values = vectors.flatten().to_numpy(zero_copy_only=False).copy()
    values[: vectors.type.list_size] = np.nan  # the first item's vector
    return _column(table, "pool", pa.FixedSizeListArray.from_arrays(pa.array(values), vectors.type.list_size))


def _with_ids(table, change):
    import pyarrow as pa

    ids = table.column("item_id").to_numpy().copy()
    change(ids)
    return _column(table, "item_id", pa.array(ids))


def _pool_as_lists(table):
    import pyarrow as pa

    return _column(table, "pool", pa.array(table.column("pool").to_pylist(), pa.list_(pa.float64())))


def _ids_as_text(table):
    import pyarrow as pa

    return _column(table, "item_id", pa.array([str(i) for i in table.column("item_id").to_pylist()]))


def _twice(ids):
    ids[1] = ids[0]


def _foreign(ids):
    ids[0] = 10**6


SHARD_FAULTS = {
    "pool as lists of any length": (_pool_as_lists, "has column 'pool' of type list<element: double>, not fixed-size"),
    "item ids as text": (_ids_as_text, "has column 'item_id' of type string, not integers"),
    "an item id twice": (lambda t: _with_ids(t, _twice), "more than once"),
    "rows lost": (lambda t: t.slice(0, 3), "lost rows"),
    "another item's id": (lambda t: _with_ids(t, _foreign), "lost rows"),
}


@pytest.mark.parametrize("fault", sorted(SHARD_FAULTS))
def test_a_feature_shard_with_other_columns_ids_or_rows_is_named_and_a_rerun_rebuilds_it(cli, built, fault):
    data, cache, run = built
    change, said = SHARD_FAULTS[fault]
    shard = cache / "features/dataset=pairs/encoder=alexnet.imagenet/split=database/part-00000.parquet"
    _rewrite(shard, change)
    line = one_line_error(cli("encode", "--run", run, "--dataset", "pairs", "--cache", cache))
    assert said in line and "--encoders alexnet`, which rebuilds it" in line, line
    # the command it names (an extraction without --overwrite) finds the shard and rebuilds it
    again = cli("extract", "--dataset", "pairs", "--data-dir", data, "--encoders", "alexnet", "-o",
                "dataset.text_kind=tags", "--cache", cache)
    assert again.code == 0, again.err
    assert cli("encode", "--run", run, "--dataset", "pairs", "--cache", cache).code == 0


def test_non_finite_features_are_named_with_the_overwrite_not_as_a_diverged_model(cli, built):
    _, cache, _ = built
    _rewrite(cache / "features/dataset=pairs/encoder=alexnet.imagenet/split=train/part-00000.parquet", _nan_row)
    for method in ("baseline", "cca-itq"):  # cca-itq's SVD raised a raw LinAlgError on them
        line = one_line_error(cli("train", "--method", method, "--dataset", "pairs", "--bits", "8", "--cache", cache))
        assert "non-finite value(s) (NaN or infinity) in column 'pool'" in line and "--overwrite" in line, line


@pytest.mark.parametrize("change, said", [
    (lambda t: t.drop(["labels"]), "has no column 'labels'"),
    (lambda t: t.take(list(range(t.num_rows)) + [0]), "more than once"),
])
def test_an_item_table_with_other_columns_or_an_id_twice_is_named(cli, built, change, said):
    _, cache, _ = built
    _rewrite(cache / "datasets/dataset=pairs/items.parquet", change)
    line = one_line_error(cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "8", "--cache", cache))
    assert "items.parquet is not an item table" in line and said in line and "--overwrite" in line, line


@pytest.mark.parametrize("change, said", [
    (lambda t: t.drop(["image_code"]), "has no column 'image_code'"),
    (lambda t: _with_ids(t, _twice), "more than once"),
])
def test_a_codes_file_with_a_column_lost_or_an_item_twice_is_named(cli, built, change, said):
    _, cache, run = built
    _rewrite(cache / "runs" / run / "codes/split=database/part-00000.parquet", change)
    line = one_line_error(cli("query", "--run", run, "--text", "dog", "--cache", cache))
    assert "part-00000.parquet" in line and said in line and "--force" in line, line


# -- a model.pt that is not the run's -------------------------------------------------------------------------
@pytest.mark.parametrize("saved, said", [([], "is not a model saved by `cmh train` (a list)"),
                                         ({"method": "baseline"}, "(no state_dict, config, dims, bits)")])
def test_a_model_file_of_another_kind_is_one_line(cli, built, saved, said):
    import torch

    _, cache, run = built
    torch.save(saved, cache / "runs" / run / "model.pt")
    line = one_line_error(cli("query", "--run", run, "--text", "dog", "--cache", cache))
    assert "model.pt" in line and said in line and "--force" in line, line


def test_a_model_copied_from_a_run_of_another_code_length_is_refused_not_searched_with(cli, built):
    import shutil

    _, cache, run = built
    assert cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "8", "--cache", cache).code == 0
    other = next(p for p in (cache / "runs").iterdir() if "-8b-" in p.name)
    shutil.copy(other / "model.pt", cache / "runs" / run / "model.pt")
    # its 8-bit query codes were compared with the 16-bit database codes, and a ranking printed
    for command in (["query", "--run", run, "--text", "dog"], ["encode", "--run", run, "--dataset", "pairs"]):
        line = one_line_error(cli(*command, "--cache", cache))
        assert "holds a baseline model of 8 bits, but its run trained baseline at 16 bits" in line, line


def test_a_model_copied_from_a_run_of_another_seed_is_refused_naming_both_runs(cli, built):
    """Same method, same code length: only the run id the file records tells it apart."""
    import shutil

    _, cache, run = built
    assert cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "16", "--seed", "2", "--cache",
               cache).code == 0
    other = next(p for p in (cache / "runs").iterdir() if "-16b-s2-" in p.name)
    shutil.copy(other / "model.pt", cache / "runs" / run / "model.pt")
    for command in (["query", "--run", run, "--text", "dog"], ["encode", "--run", run, "--dataset", "pairs"]):
        line = one_line_error(cli(*command, "--cache", cache))
        assert f"holds the model of run {other.name}, not of run {run}" in line and "--force" in line, line
    assert cli("query", "--run", other.name, "--text", "dog", "--cache", cache).code == 0


# -- a finished run's report or codes replaced after the fact ----------------------------------------------------
def _values_as_text(table):
    import pyarrow as pa

    return _column(table, "value", pa.array([str(v) for v in table.column("value").to_pylist()]))


@pytest.mark.parametrize("change, why", [(lambda t: t.drop(["value"]), "without column(s) value"),
                                         (_values_as_text, "whose scores are string, not numbers")])
def test_train_trains_a_run_whose_report_lost_its_scores_again_instead_of_a_traceback(cli, built, caplog, change, why):
    _, cache, run = built
    _rewrite(cache / "runs" / run / "report.parquet", change)
    listed = cli("ls", "--kind", "runs", "--cache", cache)  # not "complete" with no score: train trains it again
    line = next(row for row in listed.out.splitlines() if run in row)
    assert listed.code == 0 and line.endswith("damaged") and "(0 complete)" in listed.out, listed
    result = cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "16", "--cache", cache)
    assert result.code == 0 and f"has a report.parquet {why}: training it again" in caplog.text, result.err
    assert "mAP@50 i2t 0." in result.out


def test_codes_cut_short_are_refused_by_query_and_trained_again_not_searched_in_part(cli, built, caplog):
    _, cache, run = built
    _rewrite(cache / "runs" / run / "codes/split=database/part-00000.parquet", lambda t: t.slice(0, 3))
    # query searched the 3 codes left as if they were the database
    line = one_line_error(cli("query", "--run", run, "--text", "dog", "--cache", cache))
    assert "database codes of run" in line and "hold 3 item(s) where 36 were coded" in line and "--force" in line
    result = cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "16", "--cache", cache)
    assert result.code == 0 and "has 3 database codes where 36 were written: training it again" in caplog.text
    assert cli("query", "--run", run, "--text", "dog", "--cache", cache).code == 0


# -- a typed query of thousands of words ---------------------------------------------------------------------------
def test_a_query_of_thousands_of_unknown_words_is_one_short_line_and_looks_up_few_of_them(cli, built, monkeypatch):
    from stages.extract.bow import BowEncoder

    _, cache, run = built
    looked_up = []
    close_terms = BowEncoder.close_terms
    monkeypatch.setattr(BowEncoder, "close_terms", lambda self, word, n=5: looked_up.append(word) or close_terms(
        self, word, n))
    words = " ".join(f"zq{i}" for i in range(5000))
    line = one_line_error(cli("query", "--run", run, "--text", words, "--cache", cache))
    # the whole text was echoed (a 30 KB "line"), and every word compared with every vocabulary term (1.7 ms each
    # on MIRFlickr's 1,386 terms: the ~20,000 words a command line holds took half a minute)
    assert "no word of the query 'zq0 zq1" in line and f"({len(words)} characters)" in line and len(line) < 400, line
    assert 0 < len(looked_up) <= 20
    result = cli("query", "--run", run, "--text", "dog " + words, "--cache", cache)
    said = next(x for x in result.err.splitlines() if x.startswith("query terms in the vocabulary: dog"))
    assert result.code == 0 and said.endswith("zq19 and 4980 more)") and len(said) < 300, said


# -- two spellings of the same features ------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["alexnet:pool ", "alexnet:pool,", " alexnet : pool"])
def test_a_feature_spec_with_blanks_or_a_trailing_comma_is_the_same_run_not_a_second_one(cli, built, spec):
    _, cache, run = built
    result = cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "16", "--image", spec,
                 "--cache", cache)
    # the spec is part of the run id: a blank made a second run of the same features, a second "seed" in tables
    assert result.code == 0 and "(cached)" in result.out, result.out
    assert [p.name for p in (cache / "runs").iterdir()] == [run]


def test_a_feature_spec_naming_a_column_twice_is_refused(cli, built):
    _, cache, run = built
    line = one_line_error(cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "16", "--image",
                              "alexnet:pool,alexnet.imagenet:pool", "--cache", cache))
    assert "names alexnet.imagenet:pool twice" in line, line
    assert [p.name for p in (cache / "runs").iterdir()] == [run]


# -- a process out of file descriptors (a low `ulimit -n`) ---------------------------------------------------------
def _out_of_descriptors(*args, **kwargs):
    import errno

    raise OSError(errno.EMFILE, f"Failed to open local file '{args[0] if args else ''}'. Detail: [errno 24] Too many "
                                f"open files")


def test_too_many_open_files_says_ulimit_and_never_calls_a_healthy_file_damaged(cli, built, monkeypatch):
    import pyarrow.parquet as pq

    data, cache, _ = built
    shards = sorted((cache / "features").rglob("*.parquet"))
    # read_table called a cache file it could not open "damaged or not a Parquet file": delete it and rebuild
    monkeypatch.setattr(pq, "read_table", _out_of_descriptors)
    line = one_line_error(cli("train", "--method", "baseline", "--dataset", "pairs", "--bits", "8", "--cache", cache))
    assert line.startswith("error: too many open files") and "ulimit -n" in line and "damaged" not in line, line
    # the extraction's resume check deleted each shard it could not open and began to rebuild it
    monkeypatch.setattr(pq, "ParquetFile", _out_of_descriptors)
    line = one_line_error(cli("extract", "--dataset", "pairs", "--data-dir", data, "--encoders", "alexnet,bow", "-o",
                              "dataset.text_kind=tags", "--cache", cache))
    assert line.startswith("error: too many open files") and "run the command again" in line, line
    assert sorted((cache / "features").rglob("*.parquet")) == shards


# -- a pairs file that is a device ----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["/dev/null", "link"])
def test_a_pairs_file_that_is_a_device_is_named_so_not_as_missing(cli, tmp_path, device):
    if device == "link":  # a .jsonl name for an endless device
        device = tmp_path / "pairs.jsonl"
        device.symlink_to("/dev/zero")
    line = one_line_error(cli("extract", "--dataset", "pairs", "--data-dir", device, "--cache", tmp_path / "cache"))
    assert "is not a regular file or a folder (a device, FIFO or socket)" in line and "does not exist" not in line, line
    assert not (tmp_path / "cache").exists()


# -- a checkpoint of this run whose state is of another shape ---------------------------------------------------------
def _codes_bytes(run: Path) -> dict[str, bytes]:
    import pyarrow.parquet as pq

    return {split: pq.read_table(run / f"codes/split={split}/part-00000.parquet").to_pandas().to_json().encode()
            for split in ("query", "database")}


@pytest.mark.parametrize("field, value", [("epoch", 10**9), ("rng", None)])
def test_a_checkpoint_whose_state_cannot_be_put_back_starts_over_and_gives_a_fresh_runs_codes(
        cli, built, monkeypatch, caplog, field, value):
    import torch

    from pipeline.ground.store.checkpoints import RunCheckpoints

    _, cache, _ = built
    train = ("train", "--method", "djsrh", "--dataset", "pairs", "--bits", "16", "--epochs", "3",
             "--checkpoint-every", "1", "--cache", cache)
    with monkeypatch.context() as keep:  # a finished run drops its checkpoint: keep the last one instead
        keep.setattr(RunCheckpoints, "discard", lambda self: None)
        assert cli(*train).code == 0
    run = next(p for p in (cache / "runs").iterdir() if "-djsrh-" in p.name)
    fresh = _codes_bytes(run)
    saved = torch.load(run / "checkpoint.pt", weights_only=False)
    saved["state"][field] = value  # the right run's identity, a state of another shape
    torch.save(saved, run / "checkpoint.pt")
    (run / "report.parquet").unlink()  # as if killed before its end
    result = cli(*train)
    # an epoch past the end finished the run untrained ("resumed from epoch 1000000000"); a negative one failed with
    # a math domain error, a missing or foreign part with a TypeError or KeyError, each a traceback
    assert result.code == 0, result.err
    assert "the checkpoint cannot be resumed" in caplog.text and "starts over from epoch 0" in caplog.text
    assert _codes_bytes(run) == fresh  # everything the failed restore had put back was undone


# -- Ctrl-C while torch writes a checkpoint ---------------------------------------------------------------------------
def test_ctrl_c_while_a_checkpoint_is_written_is_the_one_interrupted_line_and_leaves_no_partial(cli, built,
                                                                                                monkeypatch):
    import torch

    _, cache, _ = built
    real_save = torch.save

    def interrupted_mid_file(obj, f, *args, **kwargs):
        """What torch's zip writer does when Ctrl-C lands inside it: its exit fails too ("unexpected pos")."""
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 9121792 vs 9121744")

    monkeypatch.setattr(torch, "save", interrupted_mid_file)
    train = ("train", "--method", "djsrh", "--dataset", "pairs", "--bits", "16", "--epochs", "2",
             "--checkpoint-every", "1", "--cache", cache)
    result = cli(*train)
    # the writer's RuntimeError hid the Ctrl-C: a traceback, one time in ten with a checkpoint each epoch
    assert result.code == 130 and "Traceback" not in result.err, result.err
    assert [x for x in result.err.splitlines() if x.startswith("error: ")] == [
        next(x for x in result.err.splitlines() if x.startswith("error: interrupted (Ctrl-C)"))]
    run = next(p for p in (cache / "runs").iterdir() if "-djsrh-" in p.name)
    assert not list(run.rglob("*.partial")) and not (run / "checkpoint.pt").exists()
    monkeypatch.setattr(torch, "save", real_save)
    assert cli(*train).code == 0
