"""Splits: the DJSRH per-label algorithm against a literal transcription of the reference code's loop, the real
MIRFlickr sizes, the random protocol, validation carving and scaled sizes for small sets."""
from __future__ import annotations

import numpy as np
import pytest

from stages.prepare.datasets import get_dataset
from pipeline.ground.item_table import ItemTable
from pipeline.ground.errors import ConfigError
from stages.prepare.splits import (DJSRH_PRESETS, default_protocol, djsrh_nuswide_split, djsrh_split, make_splits,
                             random_split)


def _reference(labels, seed, q0, t0, q1, t1, train_size):
    """The DJSRH per-label split as the reference code writes it: global np.random, Python list scans."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        n, n_labels = labels.shape
        query, train = [], []
        for col in range(n_labels):
            idx = np.random.permutation(np.where(labels[:, col] == 1)[0])
            if col == 0:
                query += list(idx[:q0])
                train += list(idx[q0:q0 + t0])
            else:
                rem = [i for i in idx if i not in query and i not in train]
                query += rem[:q1]
                train += rem[q1:q1 + t1]
        database = [i for i in range(n) if i not in query]
        if len(train) < train_size:
            pick = [i for i in database if i not in train]
            train += list(np.random.permutation(pick)[:train_size - len(train)])
        return query, database, train
    finally:
        np.random.set_state(state)


def _labels(n: int, n_labels: int, seed: int, density: float = 0.25) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rates = density * rng.uniform(0.1, 1.5, n_labels)  # some rare labels, so later labels can run out
    return (rng.random((n, n_labels)) < rates).astype(np.uint8)


def _table(labels: np.ndarray, first_id: int = 1000) -> ItemTable:
    n = len(labels)
    return ItemTable(dataset="t", item_id=np.arange(first_id, first_id + n, dtype=np.int64), image=["x"] * n,
                     texts=[["a"]] * n, labels=labels, label_names=[f"l{j}" for j in range(labels.shape[1])],
                     text_kind="tags", source="test").validate()


@pytest.mark.parametrize("seed", [1, 7])
def test_djsrh_split_equals_the_reference_transcription(seed):
    labels = _labels(400, 6, seed=seed)
    got = djsrh_split(labels, seed, q_first=12, t_first=30, q_rest=6, t_rest=15, train_size=150)
    query, database, train = _reference(labels, seed, 12, 30, 6, 15, 150)
    assert got["query"].tolist() == [int(i) for i in query]
    assert got["database"].tolist() == database
    assert got["train"].tolist() == [int(i) for i in train]


def test_djsrh_split_when_labels_run_out():
    labels = np.zeros((200, 4), dtype=np.uint8)
    labels[:60, 0] = 1
    labels[60:66, 1] = 1  # 6 positives: fewer than q_rest, so this label gives 6 queries, 0 train
    labels[150:, 2:] = 1
    got = djsrh_split(labels, 3, 10, 20, 10, 20, train_size=100)
    query, database, train = _reference(labels, 3, 10, 20, 10, 20, 100)
    assert got["query"].tolist() == query and got["train"].tolist() == [int(i) for i in train]
    assert len(got["train"]) == 100 and len(got["query"]) < 40


@pytest.mark.realdata
def test_real_mirflickr_seed1_sizes(shared_data):
    table = get_dataset("mirflickr").builder(shared_data / "mirflickr25k_real20015")
    result = make_splits(table, protocol="djsrh-mirflickr", seed=1)
    s = result.splits
    assert result.sizes == {"query": 2000, "database": 18015, "train": 5000, "validation": 2000}
    assert not np.intersect1d(s["query"], s["database"]).size
    assert np.isin(s["validation"], s["database"]).all() and not np.intersect1d(s["validation"], s["train"]).size
    assert np.isin(s["train"], s["database"]).all() and len(np.unique(s["train"])) == 5000
    assert np.array_equal(np.sort(np.concatenate([s["query"], s["database"]])), np.sort(table.item_id))
    assert result.notes == []
    again = make_splits(table, protocol="djsrh-mirflickr", seed=1).splits
    other = make_splits(table, protocol="djsrh-mirflickr", seed=2).splits
    assert all(np.array_equal(s[k], again[k]) for k in s)
    assert not np.array_equal(s["query"], other["query"]) and not np.array_equal(s["train"], other["train"])
    # the per-label draw: the first 160 queries all carry label 0 (animals)
    rows = np.searchsorted(table.item_id, s["query"][:160])
    assert table.labels[rows, 0].all()


def test_nuswide_preset_gives_exact_sizes():
    labels = _labels(9000, 10, seed=0, density=0.5)
    rows = djsrh_nuswide_split(labels, seed=1)
    assert len(rows["query"]) == 2000 and len(rows["train"]) == 5000 and len(rows["database"]) == 7000
    result = make_splits(_table(labels), protocol="djsrh-nuswide", seed=1)
    assert result.sizes == {"query": 2000, "database": 7000, "train": 5000, "validation": 2000}
    assert result.params["q_first"] == 200 and result.params["t_rest"] == 500


def test_random_split_properties():
    rows = random_split(100, seed=5, n_query=10, n_train=30)
    assert len(rows["query"]) == 10 and len(rows["database"]) == 90 and len(rows["train"]) == 30
    assert not np.intersect1d(rows["query"], rows["database"]).size
    assert np.isin(rows["train"], rows["database"]).all()
    assert np.array_equal(np.sort(np.concatenate([rows["query"], rows["database"]])), np.arange(100))
    assert np.array_equal(random_split(100, 5, 10, 30)["train"], rows["train"])
    assert not np.array_equal(random_split(100, 6, 10, 30)["query"], rows["query"])
    with pytest.raises(ConfigError, match="n_train=95"):
        random_split(100, 5, 10, 95)


def test_make_splits_returns_item_ids_and_draws_validation():
    table = _table(_labels(3000, 5, seed=2))
    result = make_splits(table, protocol="random", seed=1, n_query=200, n_train=1000, n_validation=300)
    s = result.splits
    assert result.sizes == {"query": 200, "database": 2800, "train": 1000, "validation": 300}
    assert np.isin(np.concatenate(list(s.values())), table.item_id).all()  # ids, not row positions
    assert not np.intersect1d(s["validation"], s["train"]).size
    assert np.isin(s["validation"], s["database"]).all()  # stays in the retrieval database, like train
    assert not np.intersect1d(s["validation"], s["query"]).size
    assert np.isin(s["train"], s["database"]).all()
    all_ids = np.sort(np.concatenate([s["query"], s["database"]]))
    assert np.array_equal(all_ids, table.item_id)
    # adding validation changes neither query nor train (no test result moves)
    other = make_splits(table, protocol="random", seed=1, n_query=200, n_train=1000, n_validation=50).splits
    assert np.array_equal(other["query"], s["query"]) and np.array_equal(other["train"], s["train"])
    # the default: as many as the query split
    assert make_splits(table, protocol="random", seed=1, n_query=200, n_train=1000).sizes["validation"] == 200
    with pytest.raises(ConfigError, match=r"validation 2000 do not fit"):
        make_splits(table, protocol="djsrh-mirflickr", seed=1, n_query=200, n_train=1000, n_validation=2000)
    with pytest.raises(ConfigError, match=r"n_validation=0: expected an integer >= 1"):
        make_splits(table, protocol="random", seed=1, n_query=200, n_train=1000, n_validation=0)
    with pytest.raises(ConfigError, match=r"query 200 \+ train 2800 leave no database item outside train"):
        make_splits(table, protocol="random", seed=1, n_query=200, n_train=2800)


@pytest.mark.realdata
def test_scaled_sizes_for_the_730_set(shared_data):
    table = get_dataset("mirflickr").builder(shared_data / "mirflickr25k_real730")
    result = make_splits(table, protocol="djsrh-mirflickr", seed=1)
    assert result.params["n_query"] == 73 and result.params["n_train"] == 328  # 10% / half the database
    assert 60 <= result.sizes["query"] <= 80 and result.sizes["train"] == 328
    assert result.sizes["query"] + result.sizes["database"] == 730
    assert any("too few" in note for note in result.notes)


def test_scaled_sizes_random_and_explicit_sizes_that_do_not_fit():
    table = _table(_labels(238, 4, seed=3))
    result = make_splits(table, protocol="random", seed=1)
    assert result.sizes == {"query": 24, "database": 214, "train": 107, "validation": 24} and result.notes
    only_query = make_splits(table, protocol="random", seed=1, n_query=50)  # train scaled around it
    assert only_query.sizes["query"] == 50 and only_query.sizes["train"] == 94
    assert make_splits(table, protocol="random", seed=1, n_query=200).sizes["train"] == 19
    with pytest.raises(ConfigError, match=r"\(238 items\): query 240 \+ train 0"):
        make_splits(table, protocol="random", seed=1, n_query=240)
    with pytest.raises(ConfigError, match="train 500"):
        make_splits(table, protocol="random", seed=1, n_query=20, n_train=500)


def test_bad_protocol_and_sizes():
    table = _table(_labels(100, 3, seed=0))
    with pytest.raises(ConfigError, match="djsrh-mirflickr, djsrh-nuswide, random"):
        make_splits(table, protocol="djsrh", seed=1)
    with pytest.raises(ConfigError, match="n_query=0"):
        make_splits(table, protocol="random", seed=1, n_query=0)


def test_default_protocol():
    assert default_protocol("mirflickr") == "djsrh-mirflickr"
    assert default_protocol("MIRFlickr25K") == "djsrh-mirflickr"  # aliases resolve
    assert default_protocol("nus-wide") == "djsrh-nuswide"
    assert default_protocol("coco") == default_protocol("pairs") == default_protocol("demo") == "random"
    with pytest.raises(ConfigError, match="unknown dataset"):
        default_protocol("flickr30k")
    assert set(DJSRH_PRESETS) == {"djsrh-mirflickr", "djsrh-nuswide"}


@pytest.mark.parametrize("n, n_labels, seed", [(200, 24, 1), (238, 4, 3), (400, 24, 2)])
def test_the_scaling_note_states_the_sizes_the_split_holds(n, n_labels, seed, caplog):
    """The note once said the target ("scaled to query 20") while the per-label draw wrote 25; it now names
    the drawn sizes, comes once, and is not also logged by the splitter (the caller warns with each note)."""
    table = _table(_labels(n, n_labels, seed=seed))
    for protocol in ("djsrh-mirflickr", "random"):
        caplog.clear()
        with caplog.at_level("DEBUG"):
            result = make_splits(table, protocol=protocol, seed=1)
        scaled = [note for note in result.notes if "too few" in note]
        assert len(scaled) == 1, result.notes
        assert (f"scaled to query {result.sizes['query']}, train {result.sizes['train']}" in scaled[0]), (
            scaled[0], result.sizes)
        assert not any("per-label split gave" in note for note in result.notes)
        assert not [r for r in caplog.records if "too few" in r.getMessage()]
