"""Fault cases a user meets in `cmh extract`: stale caches, bad options, unreadable inputs, damaged shards."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.ground.store.cache import Cache
from pipeline.ground.store.parquet import read_metadata
from tests.faults.conftest import cli_subprocess, one_line_error, write_pairs

BOW = "bow"


def _extract(cli, data, cache, *extra):
    return cli("extract", "--dataset", "pairs", "--data-dir", data, "--cache", cache, "--encoders", BOW,
               "-o", "dataset.text_kind=tags", *extra)


def _shards(cache: Path, encoder: str = "bow") -> dict[str, str]:
    base = cache / "features" / "dataset=pairs" / f"encoder={encoder}"
    return {str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.glob("split=*/*.parquet"))}


def _rows(cache: Path, encoder: str, split: str) -> list[int]:
    base = cache / "features" / "dataset=pairs" / f"encoder={encoder}" / f"split={split}"
    return sorted(i for f in base.glob("*.parquet") for i in pq.read_table(f).column("item_id").to_pylist())


# -- 1: a cache is reused only for the same data, folder and options ---------------------------------------
def test_same_file_names_other_pixels_is_refused(cli, tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    write_pairs(a)
    write_pairs(b, pixels_seed=7)  # same names and texts, other pixels
    assert _extract(cli, a, tmp_path / "c").code == 0
    line = one_line_error(_extract(cli, b, tmp_path / "c"))
    assert "differs" in line and "--overwrite" in line


def test_an_edited_image_in_the_same_folder_is_refused(cli, pairs_dir, tmp_path):
    assert _extract(cli, pairs_dir, tmp_path / "c").code == 0
    img = pairs_dir / "img" / "3.png"
    img.write_bytes(img.read_bytes() + b"\0")  # other size and time, same name
    assert "differs" in one_line_error(_extract(cli, pairs_dir, tmp_path / "c"))


def test_other_dataset_options_are_refused(cli, pairs_dir, tmp_path):
    cache = tmp_path / "c"
    assert _extract(cli, pairs_dir, cache).code == 0
    result = cli("extract", "--dataset", "pairs", "--data-dir", pairs_dir, "--cache", cache, "--encoders", BOW,
                 "-o", "dataset.text_kind=captions")
    assert "differs" in one_line_error(result)


def test_hr_option_on_a_mirflickr_cache_is_refused(cli, shared_data, tmp_path):
    args = ["extract", "--dataset", "mirflickr", "--data-dir", shared_data / "mirflickr25k_real20015",
            "--cache", tmp_path / "c", "--encoders", BOW, "--limit", "60"]
    assert cli(*args).code == 0
    assert "differs" in one_line_error(cli(*args, "-o", "dataset.hr=true"))


def test_a_cache_written_before_the_file_fingerprint_is_refused(cli, pairs_dir, tmp_path):
    cache = tmp_path / "c"
    assert _extract(cli, pairs_dir, cache).code == 0
    items = Cache(cache).items_path("pairs")
    table = pq.read_table(items)
    meta = read_metadata(items)
    del meta["fingerprint_kind"]  # what the older code wrote
    pq.write_table(table.replace_schema_metadata({b"cmh": json.dumps(meta).encode()}), items)
    line = one_line_error(_extract(cli, pairs_dir, cache))
    assert "older cmh" in line and "--overwrite" in line


def test_the_same_request_twice_reuses_the_cache(cli, pairs_dir, tmp_path):
    cache = tmp_path / "c"
    assert _extract(cli, pairs_dir, cache).code == 0
    before = _shards(cache)
    second = _extract(cli, pairs_dir, cache)
    assert second.code == 0 and "already complete" in second.out and "shard(s) written" not in second.out
    assert _shards(cache) == before


# -- 4, 5: texts without a vocabulary term are counted; a pair whose image fails is dropped everywhere -----
def test_all_zero_bag_of_words_rows_are_counted_per_split(cli, tmp_path, caplog):
    data = tmp_path / "data"
    rare = [{"image": f"img/{i}.png", "text": [f"rareword{i}"], "labels": ["dog"]} for i in range(10)]
    write_pairs(data, n=40, extra_rows=rare)
    caplog.set_level(logging.WARNING)
    result = _extract(cli, data, tmp_path / "c", "-o", "bow.top_n=5")
    assert result.code == 0, result.err
    warning = [r.getMessage() for r in caplog.records if "all-zero bag of words" in r.getMessage()]
    assert warning and "query" in warning[0] and "database" in warning[0]
    manifest = json.loads((tmp_path / "c/features/dataset=pairs/encoder=bow/_manifest.json").read_text())
    counts = manifest["provenance"]["rows_without_terms"]
    assert counts["query"] + counts["database"] >= 10  # the ten rare-word items at least (train holds 5 terms)


def test_a_pair_whose_image_fails_is_dropped_from_the_text_features_too(cli, pairs_dir, tmp_path):
    (pairs_dir / "img" / "5.png").write_bytes(b"not an image")
    cache = tmp_path / "c"
    result = _extract(cli, pairs_dir, cache)
    assert result.code == 0, result.err
    rows = _rows(cache, "bow", "query") + _rows(cache, "bow", "database")
    assert 5 not in rows and len(rows) == 39
    skipped = read_metadata(Cache(cache).items_path("pairs"))["skipped"]
    assert any(s[0] == "5" and "unreadable" in s[1] for s in skipped)


# -- 6, 8, 11: options that cannot mean what they say ---------------------------------------------------------
@pytest.mark.parametrize("limit", ["0", "-5"])
def test_limit_must_be_positive(cli, pairs_dir, tmp_path, limit):
    line = one_line_error(_extract(cli, pairs_dir, tmp_path / "c", "--limit", limit))
    assert "LIMIT" in line and ">= 1" in line
    assert not (tmp_path / "c" / "features").exists()


@pytest.mark.parametrize("option, expect", [
    ("alexnt.channels=32", "did you mean alexnet.channels"),
    ("dataset.text_knd=tags", "did you mean dataset.text_kind"),
    ("clip.model=ViT-B-32", "not among --encoders"),
    ("channels=32", "needs a prefix"),
    ("dataset.keep_unlabelled=maybe", "true or false"),
])
def test_unknown_or_misspelled_options_are_refused(cli, pairs_dir, tmp_path, option, expect):
    result = cli("extract", "--dataset", "pairs", "--data-dir", pairs_dir, "--cache", tmp_path / "c",
                 "--encoders", "alexnet,bow", "-o", option)
    assert expect in one_line_error(result)


# -- 9: a huge "word" stays out of every file's metadata ----------------------------------------------------
def test_a_huge_word_is_not_copied_into_metadata(cli, tmp_path):
    data = tmp_path / "data"
    blob = "x" * 1_000_000
    write_pairs(data, n=30, extra_rows=[{"image": f"img/{i}.png", "text": ["dog", blob], "labels": ["dog"]}
                                        for i in range(10)])
    cache = tmp_path / "c"
    assert _extract(cli, data, cache).code == 0
    enc = cache / "features" / "dataset=pairs" / "encoder=bow"
    for shard in enc.glob("split=*/*.parquet"):
        assert len(pq.read_schema(shard).metadata[b"cmh"]) < 20_000, shard
    assert (enc / "_manifest.json").stat().st_size < 50_000


# -- 10, 16: encodings ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_a_non_utf8_file_names_file_line_and_fix(cli, pairs_dir, tmp_path, suffix):
    if suffix == "jsonl":
        body = '{"image": "img/0.png", "text": "dog", "labels": ["dog"]}\n'.encode()
        body += '{"image": "img/1.png", "text": "caf\u00e9", "labels": ["dog"]}\n'.encode("latin-1")
    else:
        body = "image,text,labels\nimg/0.png,dog,dog\nimg/1.png,caf\u00e9,dog\n".encode("latin-1")
    path = pairs_dir / f"latin.{suffix}"
    path.write_bytes(body)
    line = one_line_error(_extract(cli, path, tmp_path / "c"))
    bad_line = 2 if suffix == "jsonl" else 3  # the CSV has a header line
    assert str(path) in line and f"line {bad_line} " in line and "UTF-8" in line


def test_a_csv_with_a_byte_order_mark_is_read(cli, pairs_dir, tmp_path):
    rows = "".join(f"img/{i}.png,dog|sea,dog|sea\n" if i % 2 else f"img/{i}.png,cat|tree,cat\n" for i in range(40))
    path = pairs_dir / "bom.csv"
    path.write_bytes("\ufeffimage,text,labels\n".encode("utf-8") + rows.encode())
    result = _extract(cli, path, tmp_path / "c")
    assert result.code == 0, result.err
    assert "40 items" in result.out


# -- 13: damaged shards are rebuilt by extract and named by train ----------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_extract_rebuilds_a_damaged_shard(cli, built, damage):
    data, cache, _ = built
    before = _shards(cache)
    shard = cache / "features/dataset=pairs/encoder=bow/split=database/part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:200] if damage == "truncate" else b"garbage")
    gathered = cache / "features/dataset=pairs/encoder=bow/split=train/part-00000.parquet"
    gathered.write_bytes(b"garbage")
    train = cli("train", "--method", "baseline", "--dataset", "pairs", "--cache", cache, "--bits", "8")
    line = one_line_error(train)
    assert "part-00000.parquet" in line and "cmh extract" in line
    again = _extract(cli, data, cache)
    assert again.code == 0, again.err
    assert _shards(cache) == before
    assert cli("train", "--method", "baseline", "--dataset", "pairs", "--cache", cache, "--bits", "8").code == 0


def test_extract_rebuilds_a_shard_with_the_wrong_row_count(cli, pairs_dir, tmp_path):
    cache = tmp_path / "c"
    assert _extract(cli, pairs_dir, cache).code == 0
    before = _shards(cache)
    shard = cache / "features/dataset=pairs/encoder=bow/split=query/part-00000.parquet"
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, 1), shard)  # a readable file that lost rows
    assert _extract(cli, pairs_dir, cache).code == 0
    assert _shards(cache) == before


# -- 15: a FIFO (or any non-regular file) never blocks ---------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_like_an_image_is_recorded_not_opened(pairs_dir, tmp_path):
    fifo = pairs_dir / "img" / "7.png"
    fifo.unlink()
    os.mkfifo(fifo)
    (pairs_dir / "img" / "8.png").unlink()
    (pairs_dir / "img" / "8.png").mkdir()
    cache = tmp_path / "c"
    result = cli_subprocess("extract", "--dataset", "pairs", "--data-dir", pairs_dir, "--cache", cache,
                            "--encoders", "alexnet,bow", "-o", "dataset.text_kind=tags", timeout=240)
    assert result.code == 0, result.err
    skipped = {s[0]: s[1] for s in read_metadata(Cache(cache).items_path("pairs"))["skipped"]}
    assert "regular file" in skipped["7"] and "folder" in skipped["8"]
