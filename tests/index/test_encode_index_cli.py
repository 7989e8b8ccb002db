"""`cmh encode`, `cmh index` and `cmh query` with an index, through the real CLI entry point.

The collection is the fault cases' 40-pair tag set extracted with alexnet + bow, and a 16-bit
baseline run on it (built once per session, copied per test)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.faults.conftest import one_line_error
from pipeline.ground.store.codes import read_codes, write_codes


def _extract(cli, data, cache, name, *extra):
    result = cli("extract", "--dataset", "pairs", "--data-dir", data, "--cache", cache, "--name", name,
                 "-o", "dataset.text_kind=tags", *extra)
    assert result.code == 0, result.err


def _run_codes(cache, run):
    out = {}
    for split in ("query", "database"):
        c = read_codes(cache / "runs" / run / "codes", split)
        out.update({int(i): (a.tobytes(), b.tobytes()) for i, a, b in zip(c["item_id"], c["image_words"], c["text_words"])})
    return out


def _encoded_codes(cache, run, dataset):
    out = {}
    for split in ("query", "database"):
        c = read_codes(cache / "runs" / run / "encoded" / dataset / "codes", split)
        out.update({int(i): (a.tobytes(), b.tobytes()) for i, a, b in zip(c["item_id"], c["image_words"], c["text_words"])})
    return out


@pytest.mark.parametrize("dataset", ["pairs", "pairs-copy"])
def test_encode_equals_the_runs_own_codes(cli, built, dataset):
    data, cache, run = built
    if dataset != "pairs":  # another cached dataset: the same files extracted under another name
        _extract(cli, data, cache, dataset, "--encoders", "alexnet,bow")
    result = cli("encode", "--run", run, "--dataset", dataset, "--cache", cache, "--chunk-rows", "7")
    assert result.code == 0, result.err
    assert "40 items encoded" in result.out
    encoded, own = _encoded_codes(cache, run, dataset), _run_codes(cache, run)
    assert set(encoded) == set(own) and len(own) == 40
    assert all(encoded[i] == own[i] for i in own)  # both modalities, every item
    parts = sorted((cache / "runs" / run / "encoded" / dataset / "codes" / "split=database").glob("part-*.parquet"))
    assert len(parts) == 6  # 36 database items in chunks of 7: never the whole split at once
    manifest = json.loads((cache / "runs" / run / "encoded" / dataset / "_encode.json").read_text())
    assert manifest["complete"] and manifest["run_id"] == run and manifest["items"] == 40
    assert set(manifest["features"]) == {"alexnet.imagenet", "bow"}


def test_encode_resumes_at_the_first_missing_part(cli, built):
    _, cache, run = built
    assert cli("encode", "--run", run, "--dataset", "pairs", "--cache", cache, "--chunk-rows", "7").code == 0
    codes = cache / "runs" / run / "encoded" / "pairs" / "codes" / "split=database"
    before = _encoded_codes(cache, run, "pairs")
    (codes / "part-00004.parquet").unlink()
    (codes / "part-00005.parquet").unlink()
    again = cli("encode", "--run", run, "--dataset", "pairs", "--cache", cache, "--chunk-rows", "7")
    assert again.code == 0 and "2 parts written, 5 reused" in again.out, again.out
    assert _encoded_codes(cache, run, "pairs") == before
    damaged = codes / "part-00002.parquet"
    damaged.write_bytes(damaged.read_bytes()[:40])  # a torn part is encoded again, with the ones after it
    third = cli("encode", "--run", run, "--dataset", "pairs", "--cache", cache, "--chunk-rows", "7")
    assert third.code == 0 and "4 parts written, 3 reused" in third.out, third.out
    assert _encoded_codes(cache, run, "pairs") == before


def test_encode_refuses_a_dataset_without_the_runs_features(cli, built):
    data, cache, run = built
    _extract(cli, data, cache, "pairs-bow", "--encoders", "bow")
    line = one_line_error(cli("encode", "--run", run, "--dataset", "pairs-bow", "--cache", cache))
    assert "lacks the run's image features" in line and "alexnet" in line
    assert "cmh extract --dataset pairs" in line and "--name pairs-bow" in line and "--encoders alexnet" in line
    assert not (cache / "runs" / run / "encoded" / "pairs-bow").exists()


def test_encode_refuses_features_from_another_vocabulary(cli, built):
    data, cache, run = built
    _extract(cli, data, cache, "pairs-other", "--encoders", "alexnet,bow", "--seed", "7")  # other train split
    line = one_line_error(cli("encode", "--run", run, "--dataset", "pairs-other", "--cache", cache))
    assert "another encoder setup" in line and "bow" in line


def test_encode_refuses_other_feature_widths(cli, built):
    _, cache, run = built
    config_path = cache / "runs" / run / "config.json"
    config = json.loads(config_path.read_text())
    manifest_path = cache / "features" / "dataset=pairs" / "encoder=bow" / "_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["columns"]["bow"]["dim"] += 5
    manifest_path.write_text(json.dumps(manifest))
    line = one_line_error(cli("encode", "--run", run, "--dataset", "pairs", "--cache", cache))
    assert "feature bow:bow is 15-d in 'pairs' but 10-d in the run" in line, line
    assert config == json.loads(config_path.read_text())


def _query(cli, cache, run, *extra):
    return cli("query", "--run", run, "--cache", cache, "--text", "dog, beach", "--top-k", "8", *extra)


def test_query_uses_a_flat_index_and_matches_exact_search(cli, built):
    _, cache, run = built
    exact = _query(cli, cache, run)
    assert exact.code == 0 and "exact search over 36 image codes" in exact.err, exact.err
    built_index = cli("index", "--run", run, "--cache", cache, "--kind", "flat")
    assert built_index.code == 0, built_index.err
    meta = json.loads((cache / "runs" / run / "index" / "image.json").read_text())
    assert meta["run_id"] == run and meta["bits"] == 16 and meta["kind"] == "flat" and meta["n"] == 36
    indexed = _query(cli, cache, run)
    assert indexed.code == 0 and "searched the flat index of 36 image codes" in indexed.err, indexed.err
    assert indexed.out == exact.out and len(indexed.out.splitlines()) == 8


def test_query_an_encoded_dataset_with_and_without_its_index(cli, built):
    _, cache, run = built
    assert cli("encode", "--run", run, "--dataset", "pairs", "--cache", cache).code == 0
    exact = _query(cli, cache, run, "--dataset", "pairs")
    assert exact.code == 0 and "exact search over 40 image codes of pairs (encoded)" in exact.err, exact.err
    assert cli("index", "--run", run, "--dataset", "pairs", "--cache", cache, "--kind", "ivf", "--nlist", "2",
               "--nprobe", "2").code == 0  # every list probed: exhaustive
    ivf = _query(cli, cache, run, "--dataset", "pairs")
    assert ivf.code == 0 and "searched the ivf index of 40 image codes" in ivf.err and "approximate" in ivf.err
    dist = lambda out: [line.split("\t")[2] for line in out.splitlines()]  # noqa: E731
    assert dist(ivf.out) == dist(exact.out)  # same distances; ties may come in another order


def test_query_of_a_dataset_never_encoded_is_refused(cli, built):
    _, cache, run = built
    line = one_line_error(_query(cli, cache, run, "--dataset", "pairs"))
    assert "has not encoded 'pairs'" in line and "cmh encode" in line


def _second_run(cli, cache, *args):
    result = cli("train", "--method", "baseline", "--dataset", "pairs", "--cache", cache, *args)
    assert result.code == 0, result.err
    return result.out.split(":")[0].strip()


def test_an_index_copied_from_another_run_is_refused(cli, built):
    _, cache, run = built
    other = _second_run(cli, cache, "--bits", "16", "--seed", "2")
    assert cli("index", "--run", other, "--cache", cache).code == 0
    shutil.copytree(cache / "runs" / other / "index", cache / "runs" / run / "index")
    line = one_line_error(_query(cli, cache, run))
    assert f"was built for run {other}, not {run}" in line and f"cmh index --run {run}" in line


def test_an_index_of_another_code_length_is_refused(cli, built):
    _, cache, run = built
    other = _second_run(cli, cache, "--bits", "32")
    assert cli("index", "--run", other, "--cache", cache).code == 0
    shutil.copytree(cache / "runs" / other / "index", cache / "runs" / run / "index")
    for modality in ("image", "text"):  # relabelled as this run's: only the code length gives it away
        path = cache / "runs" / run / "index" / f"{modality}.json"
        meta = json.loads(path.read_text())
        path.write_text(json.dumps({**meta, "run_id": run}))
    line = one_line_error(_query(cli, cache, run))
    assert "holds 32-bit codes but run" in line and "16-bit codes" in line and "cmh index" in line


def test_an_index_of_codes_that_changed_since_is_refused(cli, built):
    _, cache, run = built
    assert cli("index", "--run", run, "--cache", cache).code == 0
    codes_dir = cache / "runs" / run / "codes"
    db = read_codes(codes_dir, "database")
    write_codes(codes_dir, "database", db["item_id"], -db["image"], db["text"], db["meta"])  # as a retrain would
    line = one_line_error(_query(cli, cache, run))
    assert "image codes of the run's database changed since the index was built" in line and "cmh index" in line


def test_an_index_of_a_run_whose_config_changed_is_refused(cli, built):
    _, cache, run = built
    assert cli("index", "--run", run, "--cache", cache).code == 0
    path = cache / "runs" / run / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "config_hash": "0000beef"}))
    line = one_line_error(_query(cli, cache, run))
    assert "changed since its index was built (config hash" in line and "0000beef" in line


def test_an_index_file_that_is_not_the_recorded_one_is_refused(cli, built):
    _, cache, run = built
    assert cli("index", "--run", run, "--cache", cache).code == 0
    path = cache / "runs" / run / "index" / "image.faissindex"
    path.write_bytes(path.read_bytes()[:-9])
    line = one_line_error(_query(cli, cache, run))
    assert "is not the file its record describes" in line


@pytest.mark.parametrize("args, expect", [(["--kind", "lsh"], "unknown index kind 'lsh'"),
                                          (["--kind", "flat", "--nprobe", "3"], "has no parameter(s) nprobe"),
                                          (["--kind", "ivf", "--nlist", "500"], "nlist=500 must be between 1")])
def test_index_refuses_bad_kinds_and_parameters(cli, built, args, expect):
    _, cache, run = built
    assert expect in one_line_error(cli("index", "--run", run, "--cache", cache, *args))
    assert not (cache / "runs" / run / "index").exists()


def test_evaluation_never_reads_an_index(cli, built, monkeypatch):
    """A retrain evaluates with an index on disk and every index entry point broken: mAP is the exact one."""
    from stages.evaluate import binary_index
    from stages.evaluate.report import read_rows

    _, cache, run = built
    before = {(r["task"], r["metric"], r["k"]): r["value"] for r in read_rows(cache / "runs" / run / "report.parquet")}
    assert cli("index", "--run", run, "--cache", cache, "--kind", "ivf", "--nlist", "2", "--nprobe", "1").code == 0

    def broken(*args, **kwargs):
        raise AssertionError("evaluation used an index")

    for name in ("search", "from_bytes", "build_index"):
        monkeypatch.setattr(binary_index, name, broken)
    result = cli("train", "--method", "baseline", "--dataset", "pairs", "--cache", cache, "--bits", "16", "--force")
    assert result.code == 0, result.err
    after = {(r["task"], r["metric"], r["k"]): r["value"] for r in read_rows(cache / "runs" / run / "report.parquet")}
    assert after == before and any(k[1] == "map@50" for k in after)


def test_an_item_missing_from_one_encoder_is_dropped_and_counted(cli, built):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    _, cache, run = built
    shard = cache / "features" / "dataset=pairs" / "encoder=alexnet.imagenet" / "split=database" / "part-00000.parquet"
    table = pq.read_table(shard)
    gone = table.column("item_id")[3].as_py()
    pq.write_table(table.filter(pc.not_equal(table.column("item_id"), gone)), shard)  # as a failed image leaves it,
    pq.write_table(pa.table({"item_id": pa.array([gone], pa.int64()), "reference": ["img/3.png"],  # listed as failed
                             "reason": ["decode failed"]}), shard.parent.parent / "errors.parquet")
    result = cli("encode", "--run", run, "--dataset", "pairs", "--cache", cache, "--chunk-rows", "7")
    assert result.code == 0 and "39 items encoded" in result.out and "1 missing from some encoder" in result.out
    encoded, own = _encoded_codes(cache, run, "pairs"), _run_codes(cache, run)
    assert gone not in encoded and all(encoded[i] == own[i] for i in encoded) and len(encoded) == 39
