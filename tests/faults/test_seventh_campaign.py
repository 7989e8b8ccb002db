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
