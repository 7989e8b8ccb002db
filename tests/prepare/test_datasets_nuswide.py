"""NUS-WIDE source: DCMH .mat files written by the test, with YAll stored HDF5 (read transposed)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from stages.prepare.datasets import get_dataset
from pipeline.ground.errors import DataError

nuswide = get_dataset("nus-wide").builder  # an alias resolves to the nuswide source

N, V, L = 6, 5, 10


def _write(tmp_path: Path, yall: np.ndarray, lall: np.ndarray, n_images: int = N) -> Path:
    root = tmp_path / "nus"
    root.mkdir()
    with h5py.File(root / "nus-wide-tc10-iall.mat", "w") as f:
        f.create_dataset("IAll", data=np.zeros((n_images, 3, 4, 4), dtype=np.uint8))
    with h5py.File(root / "nus-wide-tc10-yall.mat", "w") as f:
        f.create_dataset("YAll", data=yall.T)  # (V, N): how h5py returns MATLAB's (N, V)
    scipy.io.savemat(root / "nus-wide-tc10-lall.mat", {"LAll": lall})
    return root


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yall = (rng.random((N, V)) < 0.5).astype(np.uint8)
    yall[:, 0] = 1  # no empty text
    lall = (rng.random((N, L)) < 0.3).astype(np.uint8)
    return yall, lall


def test_transposed_yall_is_detected(tmp_path):
    yall, lall = _data()
    table = nuswide(_write(tmp_path, yall, lall))
    assert table.bow.shape == (N, V) and np.array_equal(table.bow, yall)
    assert np.array_equal(table.labels, lall) and table.label_names == [f"label_{j}" for j in range(L)]
    assert table.texts[1] == [f"t{j}" for j in np.flatnonzero(yall[1])]
    assert table.item_id.tolist() == list(range(N)) and table.dataset == "nuswide"
    assert table.image[3].endswith("nus-wide-tc10-iall.mat#3")


def test_label_names_option_and_vocabulary_file(tmp_path):
    yall, lall = _data()
    root = _write(tmp_path, yall, lall)
    vocab = root / "words.txt"
    vocab.write_text("a\nb\nc\nd\ne\n")
    names = [f"c{j}" for j in range(L)]
    table = nuswide(root, vocabulary=vocab, label_names=names)
    assert table.label_names == names and table.vocabulary == list("abcde")
    assert table.texts[0] == [list("abcde")[j] for j in np.flatnonzero(yall[0])]


def test_empty_bow_row_dropped_unless_kept(tmp_path):
    yall, lall = _data()
    yall[4] = 0
    root = _write(tmp_path, yall, lall)
    assert nuswide(root).skipped == [(4, "empty text")]
    assert len(nuswide(root, drop_empty_text=False)) == N


def test_yall_that_matches_no_item_count(tmp_path):
    yall, lall = _data()
    root = _write(tmp_path, yall, lall, n_images=N + 1)
    with pytest.raises(DataError, match="YAll|LAll"):
        nuswide(root)


def test_wrong_number_of_label_names(tmp_path):
    yall, lall = _data()
    with pytest.raises(DataError, match="3 label names"):
        nuswide(_write(tmp_path, yall, lall), label_names=["a", "b", "c"])


def test_non_binary_labels_name_the_row(tmp_path):
    yall, lall = _data()
    lall[2, 0] = 3
    with pytest.raises(DataError, match="LAll row 2"):
        nuswide(_write(tmp_path, yall, lall))


def test_missing_files_and_missing_folder(tmp_path):
    yall, lall = _data()
    root = _write(tmp_path, yall, lall)
    (root / "nus-wide-tc10-iall.mat").unlink()
    with pytest.raises(DataError, match="nus-wide-tc10-iall.mat"):
        nuswide(root)
    with pytest.raises(DataError, match="DATA_DIR"):
        nuswide(tmp_path / "absent")
