"""Cases of issue 22's classes found by a second, independent campaign (beyond the issue's list)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.faults.conftest import REPO, one_line_error, write_pairs


def _extract(cli, data, cache, *extra):
    return cli("extract", "--dataset", "pairs", "--data-dir", data, "--cache", cache, "--encoders", "bow", *extra)


# -- class 4: a file that says one thing twice is refused, not read as its last word --------------------------

def test_a_csv_header_naming_a_column_twice_is_refused(cli, tmp_path):
    data = tmp_path / "d"
    write_pairs(data)
    rows = [json.loads(line) for line in (data / "pairs.jsonl").read_text().splitlines()]
    (data / "pairs.jsonl").unlink()
    body = [f"{r['image']},{' '.join(r['text'])},{'|'.join(r['labels'])},x" for r in rows]
    (data / "pairs.csv").write_text("image,text,labels,Labels\n" + "\n".join(body) + "\n")
    line = one_line_error(_extract(cli, data, tmp_path / "c"))
    assert "pairs.csv line 1" in line and "['labels'] more than once" in line
    assert not (tmp_path / "c" / "datasets").exists()  # every label "x" was cached before


def test_a_json_key_given_twice_in_one_record_is_refused(cli, tmp_path):
    data = tmp_path / "d"
    write_pairs(data)
    lines = (data / "pairs.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-1] + ', "labels": []}'  # the row was dropped as unlabelled, without a word
    (data / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    line = one_line_error(_extract(cli, data, tmp_path / "c"))
    assert "pairs.jsonl line 3: the key 'labels' appears twice" in line


def test_coco_json_key_given_twice_is_refused(cli, tmp_path):
    root = tmp_path / "coco"
    lines = _coco_lines(root, [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}], lambda i: [1])
    lines[4] = lines[4][:-1] + ', "image_id": 0}'
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    line = one_line_error(cli("extract", "--dataset", "coco", "--data-dir", root, "--cache", tmp_path / "c",
                              "--encoders", "bow"))
    assert "pairs.jsonl line 5: the key 'image_id' appears twice" in line


def test_json_lines_with_a_comma_after_each_object_say_to_remove_it(cli, tmp_path):
    data = tmp_path / "d"
    write_pairs(data)
    lines = (data / "pairs.jsonl").read_text().splitlines()
    (data / "pairs.jsonl").write_text("\n".join(line + "," for line in lines) + "\n")
    line = one_line_error(_extract(cli, data, tmp_path / "c"))
    assert "pairs.jsonl line 1 " in line and "remove the comma at the end of each line" in line
    assert "spread over several lines" not in line  # not the pretty-printed-document hint


# -- class 2 / damage: tabulating a scratch results folder leaves the committed figure alone ------------------

def test_report_of_other_results_does_not_replace_the_figure_in_the_current_folder(cli, tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results" / "mirflickr", results / "mirflickr")
    work = tmp_path / "repo"
    (work / "docs").mkdir(parents=True)
    committed = work / "docs" / "mirflickr_map_vs_bits.png"
    committed.write_bytes(b"the committed figure")
    monkeypatch.chdir(work)
    result = cli("report", "--results", results, "--dataset", "mirflickr")
    assert result.code == 0, result.err
    assert committed.read_bytes() == b"the committed figure"
    assert "map_vs_bits.png" not in result.out  # the block names no figure it did not draw
    figure = tmp_path / "fig.png"
    assert cli("report", "--results", results, "--dataset", "mirflickr", "--figure", figure).code == 0
    assert figure.read_bytes()[:4] == b"\x89PNG"


# -- class 6/7: an empty value is refused, not read as the current folder or as runs/ itself ------------------


@pytest.mark.parametrize("args, flag", [
    (["extract", "--dataset", "pairs", "--encoders", "bow", "--data-dir", "DATA", "--cache", ""], "--cache"),
    (["extract", "--dataset", "pairs", "--encoders", "bow", "--data-dir", "DATA", "--cache="], "--cache"),
    (["extract", "--dataset", "pairs", "--encoders", "bow", "--data-dir", " ", "--cache", "CACHE"], "--data-dir"),
    (["publish", "--dataset", "pairs", "--cache", "CACHE", "--results", ""], "--results"),
    (["report", "--cache", "CACHE", "--out-dir", ""], "--out-dir"),
])
def test_an_empty_path_option_is_refused_before_anything_is_written(cli, tmp_path, monkeypatch, args, flag):
    data = tmp_path / "data"
    write_pairs(data)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # an empty path was this folder: extract wrote datasets/, features/, locks/ here
    args = [str(data) if a == "DATA" else str(tmp_path / "c") if a == "CACHE" else a for a in args]
    line = one_line_error(cli(*args))
    assert line.startswith(f"error: {flag} is empty: give a path")
    assert list(work.iterdir()) == []


def test_an_empty_run_id_is_refused_as_empty(cli, built):
    _, cache, _ = built
    line = one_line_error(cli("query", "--run", "", "--text", "dog", "--cache", cache))
    assert "--run is empty: give a run id" in line and "config.json" not in line


def test_a_query_text_of_separators_only_is_empty(cli, built):
    _, cache, run = built
    line = one_line_error(cli("query", "--run", run, "--text", " , ,", "--cache", cache))
    assert "the query text is empty" in line


@pytest.mark.parametrize("args, expect", [
    (["--image", "nope:pool"], "--image (IMAGE=) 'nope:pool': unknown encoder 'nope'"),
    (["--text", "bo"], "did you mean 'bow'?"),
])
def test_a_feature_spec_naming_an_unknown_encoder_does_not_suggest_extracting_it(cli, built, args, expect):
    _, cache, _ = built
    line = one_line_error(cli("train", "--method", "baseline", "--dataset", "pairs", "--cache", cache, "--bits", "8",
                              *args))
    assert expect in line and "cmh extract" not in line  # `--encoders nope` cannot work


def test_coco_categories_of_one_name_under_two_ids_are_refused(cli, tmp_path):
    root = tmp_path / "coco"
    lines = _coco_lines(root, [{"id": 1, "name": "dog"}, {"id": 2, "name": "dog"}], lambda i: [1 + i % 2])
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    line = one_line_error(cli("extract", "--dataset", "coco", "--data-dir", root, "--cache", tmp_path / "c",
                              "--encoders", "bow"))
    assert "categories.json: category name(s) ['dog'] are given to more than one id" in line  # two "dog" columns


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("how", ["CACHE", "CMH_CACHE"])
def test_make_clean_cache_cleans_the_cache_named_not_the_repositorys(tmp_path, how):
    import os
    import shlex
    import subprocess

    cache = tmp_path / "it's my cache"
    # run as a top-level make even under `make test` (no "make[1]: Entering directory" lines)
    base = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env = {**base, "CMH_CACHE": str(cache)} if how == "CMH_CACHE" else base
    args = [f"CACHE={cache}"] if how == "CACHE" else []
    out = subprocess.run(["make", "--no-print-directory", "-n", "clean-cache", *args], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.returncode == 0, out.stderr
    words = shlex.split(out.stdout)
    assert words[:2] == ["cd", str(cache)] and "cache/features" not in out.stdout


def test_a_figure_path_that_is_a_folder_names_that_folder_not_a_temporary_file(cli, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results" / "mirflickr", results / "mirflickr")
    folder = tmp_path / "figs"
    folder.mkdir()
    line = one_line_error(cli("report", "--results", results, "--dataset", "mirflickr", "--figure", folder))
    assert f"error: {folder}: Is a directory" in line and ".partial" not in line
    assert list(folder.iterdir()) == [] and not list(tmp_path.glob("*.partial"))


def test_a_query_page_path_that_is_a_folder_is_named_as_a_folder(cli, built, tmp_path):
    _, cache, run = built
    folder = tmp_path / "page.html"
    folder.mkdir()
    line = one_line_error(cli("query", "--run", run, "--text", "dog", "--cache", cache, "--html", folder))
    assert "is a folder: give the page's file name" in line


def test_a_null_json_field_is_named_null_not_missing(cli, tmp_path):
    data = tmp_path / "d"
    write_pairs(data)
    lines = (data / "pairs.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    lines[1] = json.dumps({**row, "text": None})
    (data / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    line = one_line_error(_extract(cli, data, tmp_path / "c"))
    assert "pairs.jsonl line 2: field(s) ['text'] are null" in line and "missing" not in line


def test_a_damaged_result_file_beside_the_one_published_is_named_with_arrows_reason_uncut(cli, built, tmp_path):
    _, cache, run = built
    results = tmp_path / "results"
    other = results / "pairs" / "pairs-baseline-8b-s1-00000000.parquet"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"PAR1 truncated")
    line = one_line_error(cli("publish", "--dataset", "pairs", "--run", run, "--cache", cache, "--results", results))
    assert f"{other} is damaged or not a Parquet file (Parquet magic bytes not found" in line
    assert "publish without comparing with it" in line  # --replace does not repair that other file
    assert not (results / "pairs" / f"{run}.parquet").exists()


def _coco_lines(root, categories: list[dict], category_ids) -> list[str]:
    """A 20-image COCO-style collection under ``root`` (images, categories.json); its pairs.jsonl lines, to edit."""
    (root / "images").mkdir(parents=True)
    (root / "categories.json").write_text(json.dumps(categories))
    rng = np.random.default_rng(0)
    lines = []
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "image_id": i, "captions": ["a dog"],
                                 "category_ids": category_ids(i)}))
    return lines
