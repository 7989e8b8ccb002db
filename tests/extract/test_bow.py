"""BoW encoder: the shipped MIRFlickr vocabulary reproduces YAll; train-only vocabularies; tokenising."""
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from stages.prepare.datasets import get_dataset
from pipeline.ground.item_table import ItemTable
from pipeline.ground.errors import ConfigError
from pipeline.ground.store.features import read_split_raw
from pipeline.ground.store.cache import Cache
from stages.extract import create_encoder
from stages.extract.bow import terms, top_terms, vocabulary_index
from stages.extract.runner import run_extraction


def _table(texts, kind="tags", vocabulary=None, bow=None):
    n = len(texts)
    return ItemTable(dataset="toy", item_id=np.arange(10, 10 + n), image=[f"/x/{i}.jpg" for i in range(n)],
                     texts=texts, labels=np.zeros((n, 1), np.uint8), label_names=["a"], text_kind=kind,
                     source="/x", vocabulary=vocabulary, bow=bow).validate()


@pytest.mark.realdata
def test_mirflickr_bow_equals_shipped_yall(shared_data: Path, tmp_path: Path):
    folder = shared_data / "mirflickr25k_real730"
    items = get_dataset("mirflickr").builder(folder)
    yall = scipy.io.loadmat(str(folder / "cleaned20015" / "mirflickr25k-yall.mat"))["YAll"]  # (20015, 1386)
    ids = items.item_id  # = row20015
    splits = {"query": ids[:100], "database": ids[100:], "train": ids[100:600]}
    layout = Cache(tmp_path / "cache")
    summary = run_extraction(layout, items, splits, create_encoder("bow"), progress=False)
    assert summary.complete and summary.columns == {"bow": 1386}
    for split in ("query", "database", "train"):
        got = read_split_raw(layout, items.dataset, "bow", split)
        assert np.array_equal(got["item_id"], splits[split])
        assert got["bow"].dtype == np.uint8
        np.testing.assert_array_equal(got["bow"], yall[got["item_id"]])


def test_raw_tied_vocabulary_entries_set_every_tied_column():
    # the raw DCMH file spells two columns "save7|save8"; either tag sets both (they always co-occur)
    index = vocabulary_index(["sky", "save7|save8", "save7|save8", "Sea"])
    assert index == {"sky": [0], "save7": [1, 2], "save8": [1, 2], "sea": [3]}
    enc = create_encoder("bow")
    enc.prepare(_table([["save7", "save8", "sea"], ["sky"]], vocabulary=["sky", "save7|save8", "save7|save8", "Sea"]),
                {"train": np.array([10])})
    out = enc.encode(None, [["save7", "save8", "sea"], ["sky", "unknown"]], np.array([10, 11]))["bow"]
    assert out.tolist() == [[0, 1, 1, 1], [1, 0, 0, 0]]


def test_train_vocabulary_never_sees_query_terms():
    texts = [["qonly", "sky"], ["sky", "sea"], ["sea", "dog"], ["sky", "dog"], ["sky"]]
    items = _table(texts)
    splits = {"query": np.array([10]), "database": np.array([11, 12, 13, 14]), "train": np.array([11, 12, 13, 14])}
    enc = create_encoder("bow", top_n=2)
    enc.prepare(items, splits)
    assert enc.source == "train-top-n"
    assert enc.vocab == ["sky", "dog"]  # df: sky 3, dog 2, sea 2 (tie broken alphabetically)
    assert enc.columns["bow"].dim == 2
    out = enc.encode(None, [texts[0], texts[2]], np.array([10, 12]))["bow"]
    assert out.tolist() == [[1, 0], [0, 1]]
    assert enc.config()["source"] == "train-top-n" and enc.config()["vocab_size"] == 2


def test_caption_words_and_counts():
    assert terms(["A dog on the beach.", "The DOG runs!"], "captions") == ["dog", "beach", "dog", "runs"]
    assert terms(["a dog"], "captions", stop_words=False) == ["a", "dog"]
    assert terms([" Sky ", "new york", ""], "tags") == ["sky", "new york"]
    assert top_terms([["b", "a"], ["a"], ["c", "c"]], 2) == ["a", "b"]
    items = _table([["a dog and a dog", "dog on grass"], ["grass"]], kind="captions")
    splits = {"query": np.array([11]), "database": np.array([10]), "train": np.array([10])}
    enc = create_encoder("bow", binary=False)
    enc.prepare(items, splits)
    assert enc.vocab == ["dog", "grass"]
    assert enc.encode(None, items.texts, items.item_id)["bow"].tolist() == [[3, 1], [0, 1]]


def test_shipped_matrix_is_passed_through():
    matrix = np.array([[0, 2, 1], [1, 0, 0]], dtype=np.uint8)
    items = _table([["x"], ["y"]], bow=matrix, vocabulary=["p", "q", "r"])
    enc = create_encoder("bow")
    enc.prepare(items, {"train": items.item_id})
    assert enc.source == "dataset-matrix"
    out = enc.encode(None, None, np.array([11, 10]))["bow"]
    assert out.tolist() == [[1, 0, 0], [0, 1, 1]]  # binary by default


def test_dataset_vocabulary_required_when_asked():
    enc = create_encoder("bow", vocabulary="dataset")
    with pytest.raises(ConfigError, match="vocabulary=train"):
        enc.prepare(_table([["a"]]), {"train": np.array([10])})
    with pytest.raises(ConfigError):
        create_encoder("bow", vocabulary="mine")
