"""Fault cases of the scale commands: `cmh encode` (local and --engine ray), `cmh index`, `cmh query` with an index.

Each case runs the real CLI entry point on the fault cases' built collection (40 tag pairs, alexnet +
bow, a 16-bit baseline run; copied per test). A refused command must end in one ``error:`` line that
names the fix, exit 2, and leave what was there intact. No test here starts Ray: the Ray cases are
argument checks that must fail before a Ray session would start (``ray_session`` is replaced by one
that fails the test)."""
from __future__ import annotations

import json
import shutil

import pytest

from tests.faults.conftest import one_line_error


def _enc(cli, cache, run, dataset="pairs", *extra):
    return cli("encode", "--run", run, "--dataset", dataset, "--cache", cache, *extra)


def _query(cli, cache, run, *extra):
    return cli("query", "--run", run, "--cache", cache, "--text", "dog, beach", "--top-k", "5", *extra)


def _encoded(cache, run, dataset="pairs"):
    return cache / "runs" / run / "encoded" / dataset


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if a Ray session would start."""
    import stages.extract.ray_engine as ray_engine

    def refuse(*_a, **_k):
        raise AssertionError("a Ray session was started for a request that is refused by its arguments")

    monkeypatch.setattr(ray_engine, "ray_session", refuse)


# --- controls: cases that were refused in one line before this campaign ---------------------------------------

@pytest.mark.parametrize("command", ["encode", "index", "query"])
def test_unknown_run_and_a_folder_that_is_not_a_run(cli, built, tmp_path, command):
    _, cache, _ = built
    for run in ("no-such-run", str(tmp_path)):
        extra = {"encode": ["--dataset", "pairs"], "index": [], "query": ["--text", "dog"]}[command]
        line = one_line_error(cli(command, "--run", run, "--cache", cache, *extra))
        assert "no run" in line and "make train" in line, line


@pytest.mark.parametrize("args, expect", [
    (["--kind", "lsh"], "unknown index kind 'lsh'"),
    (["--kind", "ivf", "--nlist", "0"], "nlist=0 must be between 1"),
    (["--kind", "ivf", "--nlist", "37"], "nlist=37 must be between 1"),
    (["--kind", "ivf", "--nlist", "4", "--nprobe", "5"], "nprobe=5 must be between 1 and nlist=4"),
    (["--kind", "hash", "--hash-bits", "17"], "between 1 and the code length"),
    (["--kind", "hash", "--hash-bits", "3", "--nflip", "4"], "nflip=4 must be between 0 and hash_bits=3"),
    (["--kind", "multihash", "--nhash", "0"], "nhash=0 must be >= 1"),
    (["--kind", "flat", "--nlist", "4"], "index kind flat has no parameter(s) nlist"),
])
def test_index_refuses_impossible_parameters(cli, built, args, expect):
    _, cache, run = built
    line = one_line_error(cli("index", "--run", run, "--cache", cache, *args))
    assert expect in line, line
    assert not (cache / "runs" / run / "index").exists()


def test_encode_refuses_bad_chunk_rows_engine_and_a_missing_dataset(cli, built):
    _, cache, run = built
    for extra, expect in ((["--chunk-rows", "-3"], "--chunk-rows -3: give 1 or more"),
                          (["--engine", "spark"], "--engine 'spark': choose local or ray"),
                          (["--device", "cpu"], "go with --engine ray")):
        assert expect in one_line_error(_enc(cli, cache, run, "pairs", *extra))
    line = one_line_error(_enc(cli, cache, run, "never-extracted"))
    assert "never-extracted" in line and "extract" in line, line
    assert not (cache / "runs" / run / "encoded").exists()


@pytest.mark.parametrize("missing", ["model.pt", "codes/split=database"])
def test_an_unfinished_run_is_refused_everywhere(cli, built, missing):
    _, cache, run = built
    path = cache / "runs" / run / missing
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    for result in (_enc(cli, cache, run), cli("index", "--run", run, "--cache", cache), _query(cli, cache, run)):
        line = one_line_error(result)
        assert f"{missing} missing" in line and "cmh train" in line, line


def test_encode_refuses_features_whose_extraction_was_interrupted_and_unsafe_names(cli, built):
    _, cache, run = built
    manifest = cache / "features" / "dataset=pairs" / "encoder=bow" / "_manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "complete": False}))
    line = one_line_error(_enc(cli, cache, run))
    assert "bow features are incomplete" in line and "cmh extract --dataset pairs --encoders bow" in line, line
    line = one_line_error(_enc(cli, cache, run, "../../x"))
    assert "../../x" in line, line
    assert not (cache / "runs" / run / "encoded").exists()


def test_index_and_query_of_an_incomplete_encoding_are_refused(cli, built):
    _, cache, run = built
    line = one_line_error(cli("index", "--run", run, "--dataset", "pairs", "--cache", cache))
    assert "has not encoded 'pairs'" in line and f"cmh encode --run {run} --dataset pairs" in line
    assert _enc(cli, cache, run).code == 0
    manifest = _encoded(cache, run) / "_encode.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "complete": False}))  # killed mid-way
    for result in (cli("index", "--run", run, "--dataset", "pairs", "--cache", cache),
                   _query(cli, cache, run, "--dataset", "pairs")):
        assert "is incomplete" in one_line_error(result)


def test_a_damaged_or_replaced_index_file_is_refused(cli, built):
    _, cache, run = built
    assert cli("index", "--run", run, "--cache", cache, "--kind", "ivf", "--nlist", "2").code == 0
    path = cache / "runs" / run / "index" / "image.faissindex"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # torn
    assert "is not the file its record describes" in one_line_error(_query(cli, cache, run))
    path.write_bytes(b"not a faiss index at all")  # garbage whose sha256 the record is edited to match
    record = path.with_suffix(".json")
    import hashlib
    meta = json.loads(record.read_text())
    record.write_text(json.dumps({**meta, "index_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}))
    line = one_line_error(_query(cli, cache, run))
    assert "cannot be read by faiss" in line and f"cmh index --run {run}" in line


def test_an_index_of_another_code_length_or_a_retrained_run_is_refused(cli, built):
    _, cache, run = built
    assert cli("index", "--run", run, "--cache", cache).code == 0
    record = cache / "runs" / run / "index" / "image.json"
    meta = json.loads(record.read_text())
    record.write_text(json.dumps({**meta, "bits": 32}))
    assert "holds 32-bit codes but run" in one_line_error(_query(cli, cache, run))
    record.write_text(json.dumps({**meta, "codes_fingerprint": "0" * 16}))  # as after `cmh train --force`
    assert "changed since the index was built" in one_line_error(_query(cli, cache, run))


def test_ray_argument_errors_are_one_line_before_ray_starts(cli, built, no_ray, pairs_dir, tmp_path):
    _, cache, run = built
    line = one_line_error(cli("extract", "--dataset", "pairs", "--data-dir", pairs_dir, "--cache", tmp_path / "c",
                              "--engine", "ray", "--workers", "2"))
    assert "--workers is for --engine local" in line
    line = one_line_error(cli("extract", "--dataset", "pairs", "--data-dir", pairs_dir, "--cache", tmp_path / "c",
                              "--engine", "dask"))
    assert "--engine 'dask'" in line


def test_ray_address_with_the_local_engine_is_logged_and_ignored(cli, built, no_ray, monkeypatch, caplog):
    _, cache, run = built
    monkeypatch.setenv("RAY_ADDRESS", "10.255.255.1:6379")  # unreachable: it would fail if it were used
    with caplog.at_level("INFO"):
        result = _enc(cli, cache, run)
    assert result.code == 0, result.err
    assert "40 items encoded" in result.out
    assert "the Ray address 10.255.255.1:6379 is not used" in caplog.text


# --- cases that misbehaved before this campaign ---------------------------------------------------------------

def test_query_refuses_codes_encoded_with_a_model_since_replaced(cli, built):
    _, cache, run = built
    assert _enc(cli, cache, run).code == 0
    assert cli("index", "--run", run, "--dataset", "pairs", "--cache", cache).code == 0
    other = cli("train", "--method", "baseline", "--dataset", "pairs", "--cache", cache, "--bits", "16", "--seed", "2")
    assert other.code == 0, other.err
    other_id = other.out.split(":")[0].strip()
    shutil.copyfile(cache / "runs" / other_id / "model.pt", cache / "runs" / run / "model.pt")  # as if retrained
    for result in (_query(cli, cache, run, "--dataset", "pairs"),
                   cli("index", "--run", run, "--dataset", "pairs", "--cache", cache)):
        line = one_line_error(result)
        assert "re-encode" in line and f"cmh encode --run {run} --dataset pairs" in line, line


def test_index_refuses_an_encoding_whose_features_were_re_extracted(cli, built):
    data, cache, run = built
    def extract(*extra):
        result = cli("extract", "--dataset", "pairs", "--data-dir", data, "--cache", cache, "--name", "mine",
                     "--encoders", "alexnet,bow", "-o", "dataset.text_kind=tags", *extra)
        assert result.code == 0, result.err
    extract()
    assert _enc(cli, cache, run, "mine").code == 0
    extract("--seed", "7", "--overwrite")  # another split: another bow vocabulary
    line = one_line_error(cli("index", "--run", run, "--dataset", "mine", "--cache", cache))
    assert "re-encode" in line and "mine" in line, line
    line = one_line_error(_query(cli, cache, run, "--dataset", "mine"))
    assert "re-encode" in line, line


@pytest.mark.parametrize("text", ["[]", "{}", "null", "7"])
def test_index_record_of_the_wrong_shape_is_refused(cli, built, text):
    _, cache, run = built
    assert cli("index", "--run", run, "--cache", cache).code == 0
    (cache / "runs" / run / "index" / "image.json").write_text(text)
    line = one_line_error(_query(cli, cache, run))
    assert f"cmh index --run {run}" in line, line


@pytest.mark.parametrize("edit", [{"params": None}, {"bits": "sixteen"}, {"params": {"nflip": "x"}}])
def test_index_record_with_a_field_missing_or_of_the_wrong_type_is_refused(cli, built, edit):
    _, cache, run = built
    assert cli("index", "--run", run, "--cache", cache, "--kind", "hash").code == 0
    record = cache / "runs" / run / "index" / "image.json"
    meta = {**json.loads(record.read_text()), **edit}
    record.write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))
    line = one_line_error(_query(cli, cache, run))
    assert f"cmh index --run {run}" in line, line


def test_an_index_file_without_its_record_is_said_not_silently_skipped(cli, built):
    _, cache, run = built
    assert cli("index", "--run", run, "--cache", cache).code == 0
    (cache / "runs" / run / "index" / "image.json").unlink()  # a build interrupted between the two writes
    result = _query(cli, cache, run)
    assert result.code == 0, result.err
    assert "exact search" in result.err and "without its record" in result.err, result.err


@pytest.mark.parametrize("text", ["garbage{", "[]", "null"])
def test_a_damaged_encode_manifest_is_one_line(cli, built, text):
    _, cache, run = built
    assert _enc(cli, cache, run, "pairs", "--chunk-rows", "7").code == 0
    (_encoded(cache, run) / "_encode.json").write_text(text)
    for result in (cli("index", "--run", run, "--dataset", "pairs", "--cache", cache),
                   _query(cli, cache, run, "--dataset", "pairs")):
        line = one_line_error(result)
        assert f"cmh encode --run {run} --dataset pairs" in line, line
    again = _enc(cli, cache, run, "pairs", "--chunk-rows", "7")  # encode itself recovers
    assert again.code == 0, again.err


def test_a_garbage_codes_part_of_an_encoding_names_cmh_encode(cli, built):
    _, cache, run = built
    assert _enc(cli, cache, run, "pairs", "--chunk-rows", "7").code == 0
    (_encoded(cache, run) / "codes" / "split=database" / "part-00001.parquet").write_bytes(b"garbage")
    line = one_line_error(cli("index", "--run", run, "--dataset", "pairs", "--cache", cache))
    assert "part-00001.parquet" in line and "cmh encode" in line, line


def test_a_garbage_model_is_one_line(cli, built):
    _, cache, run = built
    (cache / "runs" / run / "model.pt").write_bytes(b"garbage")
    for result in (_enc(cli, cache, run), _query(cli, cache, run)):
        line = one_line_error(result)
        assert "model.pt cannot be loaded" in line and "--force" in line, line


@pytest.mark.parametrize("command", ["encode", "index"])
def test_a_read_only_run_folder_is_one_line_naming_the_path(cli, built, monkeypatch, command):
    _, cache, run = built
    import pipeline.ground.store.parquet as parquet

    real = parquet.os.replace

    def denied(src, dst, *a, **k):  # the tests run as root, where chmod does not deny a write
        if str(dst).startswith(str(cache / "runs" / run)):
            raise PermissionError(13, "Permission denied", str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(parquet.os, "replace", denied)
    result = _enc(cli, cache, run) if command == "encode" else cli("index", "--run", run, "--cache", cache)
    line = one_line_error(result)
    assert str(cache / "runs" / run) in line and "permission" in line.lower(), line


@pytest.mark.parametrize("where", ["coding", "writing"])
def test_ctrl_c_mid_encode_leaves_no_torn_part_and_a_rerun_resumes(cli, built, monkeypatch, where):
    _, cache, run = built
    import pipeline.ground.store.parquet as parquet
    from stages.train import coding

    owner, name = (coding, "codes") if where == "coding" else (parquet.pq, "write_table")
    real, calls = getattr(owner, name), []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3 and where == "coding":
            raise KeyboardInterrupt
        result = real(*a, **k)
        if len(calls) == 3:  # the part is written in full but not yet renamed into place
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(owner, name, interrupted)
    result = _enc(cli, cache, run, "pairs", "--chunk-rows", "7")
    assert result.code != 0 and "Traceback" not in result.err, result.err
    out = _encoded(cache, run)
    assert not json.loads((out / "_encode.json").read_text())["complete"]
    assert not [p for p in out.rglob("*") if p.is_file() and not p.name.endswith((".parquet", ".json"))]
    assert len(list(out.rglob("*.parquet"))) == 2
    monkeypatch.setattr(owner, name, real)
    again = _enc(cli, cache, run, "pairs", "--chunk-rows", "7")
    assert again.code == 0 and "5 parts written, 2 reused" in again.out, again.out


def test_ray_resource_options_are_checked_before_ray_starts(cli, built, no_ray, pairs_dir, tmp_path):
    _, cache, run = built
    for extra, expect in ((["--concurrency", "0"], "--concurrency must be >= 1"),
                          (["--device", "tpu"], "--device 'tpu'")):
        line = one_line_error(_enc(cli, cache, run, "pairs", "--engine", "ray", *extra))
        assert expect in line, line
        line = one_line_error(cli("extract", "--dataset", "pairs", "--data-dir", pairs_dir, "--cache",
                                  tmp_path / "c", "--engine", "ray", *extra))
        assert expect in line, line
    assert not (cache / "runs" / run / "encoded").exists()


def test_an_encoding_copied_from_another_run_is_refused(cli, built):
    _, cache, run = built
    other = cli("train", "--method", "baseline", "--dataset", "pairs", "--cache", cache, "--bits", "16", "--seed", "3")
    assert other.code == 0, other.err
    other_id = other.out.split(":")[0].strip()
    assert _enc(cli, cache, other_id).code == 0
    shutil.copytree(_encoded(cache, other_id), _encoded(cache, run))
    shutil.copyfile(cache / "runs" / other_id / "model.pt", cache / "runs" / run / "model.pt")  # same model too
    line = one_line_error(cli("index", "--run", run, "--dataset", "pairs", "--cache", cache))
    assert f"was encoded by run {other_id}, not {run}" in line and f"cmh encode --run {run}" in line, line


def test_a_complete_encoding_missing_a_part_is_refused_not_indexed_short(cli, built):
    _, cache, run = built
    assert _enc(cli, cache, run, "pairs", "--chunk-rows", "7").code == 0
    (_encoded(cache, run) / "codes" / "split=database" / "part-00002.parquet").unlink()  # lost after the encoding
    for result in (cli("index", "--run", run, "--dataset", "pairs", "--cache", cache),
                   _query(cli, cache, run, "--dataset", "pairs")):
        line = one_line_error(result)
        assert "33 of the 40 items" in line and f"cmh encode --run {run} --dataset pairs" in line, line
    again = _enc(cli, cache, run, "pairs", "--chunk-rows", "7")  # the rerun the message names repairs it
    assert again.code == 0 and "4 parts written, 3 reused" in again.out, again.out
    assert cli("index", "--run", run, "--dataset", "pairs", "--cache", cache).code == 0
