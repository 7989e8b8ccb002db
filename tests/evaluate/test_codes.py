from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.ground.errors import CacheError, DataError
from pipeline.ground.store.codes import (
    BIT_ORDER, binarize, n_words, pack_codes, pack_labels, read_codes, unpack_codes, write_codes,
)
from tests.evaluate.helpers import random_codes


def test_binarize_sign_zero_is_plus_one():
    x = np.array([[-0.5, 0.0, 0.3, -0.0]], dtype=np.float32)
    assert binarize(x).tolist() == [[-1, 1, 1, 1]]
    assert binarize(x).dtype == np.int8


def test_binarize_accepts_torch_and_refuses_nan():
    t = torch.tensor([[1.0, -2.0], [0.0, -0.1]], requires_grad=True)
    assert binarize(t).tolist() == [[1, -1], [1, -1]]
    with pytest.raises(DataError, match="non-finite"):
        binarize(np.array([[np.nan, 1.0]]))


@pytest.mark.parametrize("bits", [16, 32, 64, 128, 130])
def test_pack_unpack_round_trip(bits):
    codes = random_codes(np.random.default_rng(bits), 37, bits)
    words = pack_codes(codes)
    assert words.dtype == np.uint64 and words.shape == (37, n_words(bits))
    assert np.array_equal(unpack_codes(words, bits), codes)


def test_bit_layout_matches_documented_order():
    bits = 130
    codes = -np.ones((1, bits), np.int8)
    for j in (0, 5, 63, 64, 100, 129):
        codes[0, j] = 1
    words = pack_codes(codes)[0]
    expected = [0, 0, 0]
    for j in (0, 5, 63, 64, 100, 129):
        expected[j // 64] |= 1 << (j % 64)
    assert [int(w) for w in words] == expected
    assert "j mod 64" in BIT_ORDER


def test_pack_refuses_non_pm1():
    with pytest.raises(DataError, match="binarize"):
        pack_codes(np.array([[1, 0, -1]]))


def test_pack_labels_relevance():
    labels = np.zeros((3, 70), np.int64)
    labels[0, 3] = labels[1, 3] = labels[1, 68] = labels[2, 68] = 1
    w = pack_labels(labels)
    share = lambda a, b: bool(((w[a] & w[b]) != 0).any())  # noqa: E731
    assert share(0, 1) and share(1, 2) and not share(0, 2)


def test_codes_parquet_round_trip(tmp_path: Path):
    rng = np.random.default_rng(0)
    img, txt = random_codes(rng, 20, 130), random_codes(rng, 20, 130)
    ids = np.arange(100, 120)
    path = write_codes(tmp_path, "query", ids, img, txt, {"run_id": "r1", "bits": 130})
    assert path == tmp_path / "split=query" / "part-00000.parquet"
    back = read_codes(tmp_path, "query")
    assert back["bits"] == 130 and back["meta"]["run_id"] == "r1" and back["meta"]["item_id_ascending"]
    assert np.array_equal(back["item_id"], ids)
    assert np.array_equal(back["image"], img) and np.array_equal(back["text"], txt)
    assert np.array_equal(back["image_words"], pack_codes(img))


def test_codes_one_modality_and_duckdb_reads_words(tmp_path: Path):
    import duckdb

    codes = random_codes(np.random.default_rng(1), 5, 128)
    write_codes(tmp_path, "database", np.arange(5), None, codes, {})
    back = read_codes(tmp_path, "database")
    assert "image" not in back and np.array_equal(back["text"], codes)
    con = duckdb.connect()
    got = con.execute("SELECT text_code[1], text_code[2] FROM read_parquet($p) ORDER BY item_id",
                      {"p": str(tmp_path / "split=database" / "part-00000.parquet")}).fetchall()
    assert [tuple(int(v) for v in row) for row in got] == [tuple(int(w) for w in r) for r in pack_codes(codes)]


def test_write_codes_checks_inputs(tmp_path: Path):
    rng = np.random.default_rng(2)
    with pytest.raises(DataError, match="differ in length"):
        write_codes(tmp_path, "query", np.arange(3), random_codes(rng, 3, 16), random_codes(rng, 3, 32), {})
    with pytest.raises(DataError, match="item ids"):
        write_codes(tmp_path, "query", np.arange(4), random_codes(rng, 3, 16), None, {})
    with pytest.raises(DataError, match="bits=64"):
        write_codes(tmp_path, "query", np.arange(3), random_codes(rng, 3, 16), None, {"bits": 64})
    with pytest.raises(CacheError, match="no codes"):
        read_codes(tmp_path, "validation")
