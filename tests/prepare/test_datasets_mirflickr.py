"""MIRFlickr source: the real folder layouts (no image opened), the DCMH .mat layout, and bad input."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from stages.prepare.datasets import get_dataset
from pipeline.ground.images import load_image
from pipeline.ground.errors import ConfigError, DataError

mirflickr = get_dataset("mirflickr").builder


def _first_row(pairs: Path) -> dict[str, str]:
    with open(pairs, encoding="utf-8", newline="") as f:
        return next(csv.DictReader(f, delimiter="\t"))


@pytest.mark.realdata
def test_real_20015_folder(shared_data):
    root = shared_data / "mirflickr25k_real20015"
    table = mirflickr(root)
    assert len(table) == 20015 and table.skipped == []
    assert table.item_id.tolist() == list(range(20015))  # row20015, in DCMH order
    first = _first_row(root / "pairs.tsv")
    assert table.texts[0] == first["tags"].split(",")
    assert "".join(map(str, table.labels[0])) == first["label_vector"]
    assert [table.label_names[j] for j in np.flatnonzero(table.labels[0])] == first["labels"].split(",")
    assert table.image[0] == str(root.resolve() / "images" / first["image"])
    assert table.labels.shape == (20015, 24) and table.labels.dtype == np.uint8
    assert len(table.vocabulary) == 1386 and len(set(table.vocabulary)) == 1386
    assert table.text_kind == "tags" and table.bow is None


@pytest.mark.realdata
def test_real_tags_with_vocabulary_reproduce_yall_and_lall(shared_data):
    root = shared_data / "mirflickr25k_real20015"
    table = mirflickr(root)
    yall = scipy.io.loadmat(root / "cleaned20015" / "mirflickr25k-yall.mat")["YAll"]
    lall = scipy.io.loadmat(root / "cleaned20015" / "mirflickr25k-lall.mat")["LAll"]
    column = {w: j for j, w in enumerate(table.vocabulary)}
    bow = np.zeros_like(yall)
    for i, tags in enumerate(table.texts):
        bow[i, [column[t] for t in tags]] = 1
    assert np.array_equal(bow, yall[table.item_id])
    assert np.array_equal(table.labels, lall[table.item_id])
    assert table.vocabulary[962:964] == ["save7", "save8"]  # the file's tied "save7|save8" columns


@pytest.mark.realdata
def test_real_730_folder_and_hr(shared_data):
    small = mirflickr(shared_data / "mirflickr25k_real730")
    assert len(small) == 730
    first = _first_row(shared_data / "mirflickr25k_real730" / "pairs.tsv")
    assert small.texts[0] == first["tags"].split(",") and int(first["row20015"]) == small.item_id[0]
    full_hr = mirflickr(shared_data / "mirflickr25k_real20015", hr=True)
    hr_ids = set(small.item_id.tolist())
    uses_hr = {int(i) for i, ref in zip(full_hr.item_id, full_hr.image) if "mirflickr25k_real730" in ref}
    assert uses_hr == hr_ids
    assert any(n.startswith("hr: 730 of 20015") for n in full_hr.notes)


# --- a tiny folder layout written by the tests ------------------------------------------------------

NAMES = ["animals", "sky", "water"]


def _folder(tmp_path: Path, rows: list[tuple], with_images: bool = True) -> Path:
    """rows: (image, row20015, tags, label_vector)."""
    root = tmp_path / "mir"
    (root / "images").mkdir(parents=True)
    (root / "cleaned20015").mkdir()
    (root / "cleaned20015" / "label_names.txt").write_text("\n".join(NAMES) + "\n")
    (root / "cleaned20015" / "yall_vocab_dcmh_order.txt").write_text("dog\nsky\nsea\n")
    lines = ["image\tmir_id\trow20015\ttags\tlabels\tlabel_vector"]
    for image, row, tags, vector in rows:
        names = ",".join(n for n, b in zip(NAMES, vector) if b == "1")
        lines.append(f"{image}\t{row + 1}\t{row}\t{tags}\t{names}\t{vector}")
        if with_images:
            (root / "images" / image).write_bytes(b"not decoded at read time")
    (root / "pairs.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_folder_layout_small(tmp_path):
    root = _folder(tmp_path, [("im1.jpg", 0, "dog,sky", "110"), ("im2.jpg", 1, "sea", "001")])
    table = mirflickr(root)
    assert table.texts == [["dog", "sky"], ["sea"]]
    assert table.labels.tolist() == [[1, 1, 0], [0, 0, 1]]
    assert table.vocabulary == ["dog", "sky", "sea"]


def test_missing_data_dir_names_path_and_data_dir(tmp_path):
    with pytest.raises(DataError, match=r"(?s)nowhere.*DATA_DIR"):
        mirflickr(tmp_path / "nowhere")


def test_folder_without_any_layout(tmp_path):
    with pytest.raises(DataError, match="no MIRFlickr layout"):
        mirflickr(tmp_path)


def test_missing_label_names_file(tmp_path):
    root = _folder(tmp_path, [("im1.jpg", 0, "dog", "100")])
    (root / "cleaned20015" / "label_names.txt").unlink()
    with pytest.raises(DataError, match="label_names.txt"):
        mirflickr(root)


def test_label_row_of_wrong_width_names_file_and_line(tmp_path):
    root = _folder(tmp_path, [("im1.jpg", 0, "dog", "100"), ("im2.jpg", 1, "sky", "01")])
    with pytest.raises(DataError, match=r"pairs.tsv line 3 \(row20015=1\).*expected 3"):
        mirflickr(root)


def test_missing_image_file_is_dropped_and_recorded(tmp_path, caplog):
    root = _folder(tmp_path, [("im1.jpg", 0, "dog", "100"), ("im2.jpg", 1, "sky", "010")])
    (root / "images" / "im2.jpg").unlink()
    with caplog.at_level(logging.WARNING):
        table = mirflickr(root)
    assert table.item_id.tolist() == [0] and len(table.image) == len(table.texts) == len(table.labels) == 1
    assert table.skipped[0][0] == 1 and table.skipped[0][1].startswith("image file missing")
    assert "dropped 1 pair(s)" in caplog.text


def test_empty_tags_are_dropped_with_a_warning(tmp_path, caplog):
    root = _folder(tmp_path, [("im1.jpg", 0, "", "100"), ("im2.jpg", 1, "sky", "010"), ("im3.jpg", 2, " , ", "001")])
    with caplog.at_level(logging.WARNING):
        table = mirflickr(root)
    assert table.item_id.tolist() == [1]
    assert table.skipped == [(0, "empty text"), (2, "empty text")]
    assert "dropped 2 pair(s)" in caplog.text and "empty text" in caplog.text


def test_duplicate_ids_raise(tmp_path):
    root = _folder(tmp_path, [("im1.jpg", 0, "dog", "100"), ("im2.jpg", 0, "sky", "010")])
    with pytest.raises(DataError, match="duplicate item ids"):
        mirflickr(root)


def test_labels_column_must_agree_with_vector(tmp_path):
    root = _folder(tmp_path, [("im1.jpg", 0, "dog", "100")])
    text = (root / "pairs.tsv").read_text().replace("\tanimals\t", "\tsky\t")
    (root / "pairs.tsv").write_text(text)
    with pytest.raises(DataError, match="disagree"):
        mirflickr(root)


# --- the DCMH .mat layout, written by the tests ----------------------------------------------------

def _mat_layout(tmp_path: Path, yall: np.ndarray, lall: np.ndarray, vocab: list[str] | None) -> Path:
    root = tmp_path / "dcmh"
    root.mkdir()
    n = lall.shape[0]
    images = np.zeros((n, 3, 8, 8), dtype=np.uint8)  # (N, 3, W, H) as h5py reads IAll
    for i in range(n):
        images[i, i % 3] = 50 * (i + 1)
    with h5py.File(root / "mirflickr25k-iall.mat", "w") as f:
        f.create_dataset("IAll", data=images)
    scipy.io.savemat(root / "mirflickr25k-yall.mat", {"YAll": yall})
    scipy.io.savemat(root / "mirflickr25k-lall.mat", {"LAll": lall})
    if vocab is not None:
        (root / "yall_vocab_dcmh_order.txt").write_text("\n".join(vocab) + "\n")
    return root


YALL = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=np.uint8)
LALL = np.array([[1, 0], [0, 1], [1, 1], [0, 1]], dtype=np.uint8)


def test_mat_layout_with_vocabulary(tmp_path):
    root = _mat_layout(tmp_path, YALL, LALL, ["dog", "sky", "sea"])
    table = mirflickr(root)
    assert table.texts == [["dog", "sea"], ["sky"], ["dog", "sky", "sea"], ["sea"]]
    assert np.array_equal(table.bow, YALL) and np.array_equal(table.labels, LALL)
    assert table.label_names == ["label_0", "label_1"]
    assert table.image[2] == f"{(root / 'mirflickr25k-iall.mat').resolve()}#2"
    pixels = np.asarray(load_image(table.image[2]))  # (H, W, 3) after the reference's transpose
    assert pixels.shape == (8, 8, 3) and pixels[..., 2].min() == 150 and pixels[..., :2].max() == 0


def test_mat_layout_without_vocabulary_uses_column_names(tmp_path):
    root = _mat_layout(tmp_path, YALL, LALL, None)
    (root / "label_names.txt").write_text("animals\nsky\n")
    table = mirflickr(root)
    assert table.texts[0] == ["t0", "t2"] and table.vocabulary == ["t0", "t1", "t2"]
    assert table.label_names == ["animals", "sky"]
    assert np.array_equal(table.bow, YALL)


def test_mat_layout_drops_empty_bow_rows(tmp_path):
    yall = YALL.copy()
    yall[1] = 0
    table = mirflickr(_mat_layout(tmp_path, yall, LALL, None))
    assert table.item_id.tolist() == [0, 2, 3] and table.bow.shape == (3, 3)
    assert table.skipped == [(1, "empty text")]


def test_mat_layout_missing_file(tmp_path):
    root = _mat_layout(tmp_path, YALL, LALL, None)
    (root / "mirflickr25k-lall.mat").unlink()
    with pytest.raises(DataError, match="mirflickr25k-lall.mat"):
        mirflickr(root)


def test_mat_layout_row_count_mismatch(tmp_path):
    root = _mat_layout(tmp_path, YALL, LALL, None)
    scipy.io.savemat(root / "mirflickr25k-lall.mat", {"LAll": LALL[:3]})
    with pytest.raises(DataError, match=r"LAll has shape \(3, 2\).*4 items"):
        mirflickr(root)


def test_mat_layout_vocabulary_of_wrong_length(tmp_path):
    root = _mat_layout(tmp_path, YALL, LALL, ["dog", "sky"])
    with pytest.raises(DataError, match="2 words.*3 columns"):
        mirflickr(root)


def test_hr_option_needs_the_folder_layout(tmp_path):
    with pytest.raises(ConfigError, match="hr=True"):
        mirflickr(_mat_layout(tmp_path, YALL, LALL, None), hr=True)


@pytest.mark.realdata
def test_cleaned20015_folder_points_at_its_parent(shared_data):
    with pytest.raises(DataError, match="point DATA_DIR at its parent"):
        mirflickr(shared_data / "mirflickr25k_real20015" / "cleaned20015")
