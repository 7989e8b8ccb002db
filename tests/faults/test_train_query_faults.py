"""Fault cases a user meets in `cmh train`, `grid`, `report` and `query`."""
from __future__ import annotations

import os

import pytest
import torch

from tests.faults.conftest import one_line_error


def _train(cli, cache, *extra):
    return cli("train", "--method", "djsrh", "--dataset", "pairs", "--cache", cache, *extra)


def _runs(cache):
    return sorted(p.name for p in (cache / "runs").iterdir())


# -- 7, 12, 17: values that train nothing or cannot be used are refused before any training -------------------
@pytest.mark.parametrize("args, expect", [
    (["--epochs", "0"], "epochs=0 trains nothing"),
    (["--epochs", "-3"], "epochs=-3 trains nothing"),
    (["--set", "epochs=0"], "epochs=0 trains nothing"),
    (["--bits", "0"], "code length 0"),
    (["--bits=-16"], "code length -16"),
    (["--bits", "100000"], "from 1 to 4096"),
    (["--set", "lr=fast"], "lr='fast': expected a number"),
    (["--set", "epochs=2.5"], "expected an integer"),
    (["--set", "batch_size=0"], "batch_size=0"),
    (["--device", "tpu"], "is not a device"),
    (["--tie", "random"], "tie rule"),
])
def test_train_refuses_before_training(cli, built, args, expect):
    _, cache, _ = built
    before = _runs(cache)
    assert expect in one_line_error(_train(cli, cache, *args))
    assert _runs(cache) == before  # nothing written, so `report` shows nothing new


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_train_on_cuda_without_a_gpu_is_refused(cli, built):
    _, cache, _ = built
    assert "CUDA is not available" in one_line_error(_train(cli, cache, "--device", "cuda"))


@pytest.mark.parametrize("epochs, expect", [("djsrh=abc", "not a whole number"), ("djsr=3", "not among --methods"),
                                            ("dsah=0", "epochs=0 trains nothing")])
def test_grid_refuses_bad_epochs_before_the_first_method_trains(cli, built, epochs, expect):
    _, cache, _ = built
    before = _runs(cache)
    result = cli("grid", "--methods", "baseline,djsrh,dsah", "--dataset", "pairs", "--cache", cache, "--bits", "8",
                 "--epochs", epochs)
    assert result.code == 2 and "Traceback" not in result.err
    assert expect in " ".join(result.err.split()), result.err  # typer wraps its usage errors in a box
    assert _runs(cache) == before


def test_report_names_a_damaged_run_report(cli, built):
    _, cache, run = built
    (cache / "runs" / run / "report.parquet").write_bytes(b"PAR1")
    line = one_line_error(cli("report", "--cache", cache, "--dataset", "pairs"))
    assert run in line and "--force" in line


# -- 2, 3: text queries typed as people type them --------------------------------------------------------------
def _query(cli, cache, run, *args):
    return cli("query", "--run", run, "--cache", cache, *args)


def test_a_query_with_spaces_reads_each_word(cli, built):
    _, cache, run = built
    spaced = _query(cli, cache, run, "--text", "Dog  beach SEA")
    commas = _query(cli, cache, run, "--text", "dog, beach, sea")
    assert spaced.code == 0 and commas.code == 0, spaced.err
    assert "query terms in the vocabulary: dog, beach, sea" in spaced.err
    assert spaced.out == commas.out and spaced.out.strip()


@pytest.mark.parametrize("text, expect", [("", "empty"), ("   ", "empty"), ("qqzx, wwvy", "its terms are like: "),
                                          ("dgo", "close terms: dog")])
def test_a_query_with_no_vocabulary_term_is_refused(cli, built, text, expect):
    _, cache, run = built
    assert expect in one_line_error(_query(cli, cache, run, "--text", text))


def test_unknown_words_are_named_and_ignored(cli, built):
    _, cache, run = built
    result = _query(cli, cache, run, "--text", "dog qqzx")
    assert result.code == 0 and "not in it, ignored: qqzx" in result.err


# -- 14: a run killed mid-training ------------------------------------------------------------------------------
@pytest.mark.parametrize("removed", [("model.pt", "codes", "report.parquet"), ("codes", "report.parquet")])
def test_query_on_an_interrupted_run_says_so(cli, built, removed):
    import shutil

    _, cache, run = built
    for name in removed:  # what a kill leaves: config.json first, then model.pt, then codes, report last
        path = cache / "runs" / run / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    line = one_line_error(_query(cli, cache, run, "--text", "dog"))
    assert "incomplete" in line and "cmh train" in line


# -- beyond the list: image queries that are not images -----------------------------------------------------
def test_query_image_that_is_a_folder_missing_or_a_fifo(cli, built, tmp_path):
    _, cache, run = built
    assert "folder" in one_line_error(_query(cli, cache, run, "--image", tmp_path))
    assert "No such file" in one_line_error(_query(cli, cache, run, "--image", tmp_path / "nope.jpg"))
    (tmp_path / "junk.jpg").write_bytes(b"junk")
    assert "cannot read image" in one_line_error(_query(cli, cache, run, "--image", tmp_path / "junk.jpg"))
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.jpg")
        assert "regular file" in one_line_error(_query(cli, cache, run, "--image", tmp_path / "pipe.jpg"))


def test_query_top_k_must_be_positive(cli, built):
    _, cache, run = built
    assert "--top-k" in one_line_error(_query(cli, cache, run, "--text", "dog", "--top-k", "0"))


# -- issue 19: a bad query input fails before the run's encoders and model are loaded (seconds) -------------
@pytest.mark.parametrize("args, expect", [
    (["--image", "{tmp}/nope.jpg"], "No such file"),
    (["--image", "{tmp}"], "folder"),
    (["--image", "{tmp}/junk.jpg"], "cannot read image"),
    (["--text", "   "], "query text is empty"),
    (["--text", "dog", "--top-k", "0"], "--top-k"),
    (["--text", "dog", "--run", "no-such-run"], "no run 'no-such-run'"),
])
def test_a_bad_query_input_fails_before_any_model_is_loaded(cli, built, tmp_path, monkeypatch, args, expect):
    import pipeline.orchestration.query as query_module

    _, cache, run = built
    (tmp_path / "junk.jpg").write_bytes(b"junk")
    loaded = []
    monkeypatch.setattr(query_module, "Searcher", lambda *a, **k: loaded.append(a) or pytest.fail("model loaded"))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--run" in args:
        run = args.pop(args.index("--run") + 1)
        args.remove("--run")
    assert expect in one_line_error(_query(cli, cache, run, *args))
    assert loaded == []
