"""COCO source: the real 238-image pairs.jsonl folder and an official-annotation layout written by the test."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stages.prepare.datasets import get_dataset
from pipeline.ground.errors import DataError

coco = get_dataset("coco").builder


@pytest.mark.realdata
def test_real_238_pairs_jsonl(shared_data):
    root = shared_data / "coco2017_real238"
    table = coco(root)
    assert len(table) == 238 and table.text_kind == "captions"
    assert table.labels.shape == (238, 80) and table.labels.sum(0).min() >= 1  # all 80 categories occur
    categories = json.loads((root / "categories.json").read_text())
    assert table.label_names == [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    first = json.loads((root / "pairs.jsonl").read_text().splitlines()[0])
    row = int(np.flatnonzero(table.item_id == first["image_id"])[0])
    assert table.texts[row] == first["captions"]
    assert [table.label_names[j] for j in np.flatnonzero(table.labels[row])] == first["categories"]
    assert table.image[row] == str(root.resolve() / "images" / first["image"])
    assert np.all(np.diff(table.item_id) > 0)  # ordered by image id


CATEGORIES = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]


def _official(tmp_path: Path, split: str = "val2017") -> Path:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / split).mkdir()
    images = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in (30, 10, 20, 40)]
    for img in images:
        (root / split / img["file_name"]).write_bytes(b"x")
    captions = [
        {"id": 5, "image_id": 10, "caption": " second caption "},
        {"id": 2, "image_id": 10, "caption": "first caption"},
        {"id": 7, "image_id": 20, "caption": "a car"},
        {"id": 8, "image_id": 30, "caption": "nobody labelled this"},
        {"id": 9, "image_id": 40, "caption": "   "},
    ]
    instances = [
        {"id": 100, "image_id": 10, "category_id": 1},
        {"id": 101, "image_id": 10, "category_id": 18},
        {"id": 102, "image_id": 10, "category_id": 18},
        {"id": 103, "image_id": 20, "category_id": 3},
        {"id": 104, "image_id": 40, "category_id": 3},
    ]
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": captions}))
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": instances, "categories": CATEGORIES}))
    return root


def test_official_layout(tmp_path):
    table = coco(_official(tmp_path))
    assert table.label_names == ["person", "car", "dog"]  # ordered by category id
    assert table.item_id.tolist() == [10, 20]
    assert table.texts[0] == ["first caption", "second caption"]  # annotation-id order, stripped
    assert table.labels.tolist() == [[1, 0, 1], [0, 1, 0]]
    assert (30, "no category label") in table.skipped and (40, "empty text") in table.skipped
    assert table.image[1].endswith("val2017/000000000020.jpg")


def test_official_layout_keep_unlabelled(tmp_path):
    table = coco(_official(tmp_path), keep_unlabelled=True)
    assert table.item_id.tolist() == [10, 20, 30]
    assert table.labels[2].sum() == 0


def test_official_layout_missing_instances_file(tmp_path):
    root = _official(tmp_path)
    (root / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(DataError, match="instances_val2017.json"):
        coco(root)


def test_official_layout_unknown_split_and_missing_image(tmp_path):
    root = _official(tmp_path)
    with pytest.raises(DataError, match="train2017"):
        coco(root, splits="train2017")
    (root / "val2017" / "000000000020.jpg").unlink()
    table = coco(root)
    assert table.item_id.tolist() == [10] and any(s[0] == 20 and "missing" in s[1] for s in table.skipped)


def _pairs_layout(tmp_path: Path, records: list[dict]) -> Path:
    root = tmp_path / "cocopairs"
    (root / "images").mkdir(parents=True)
    (root / "categories.json").write_text(json.dumps(CATEGORIES))
    for r in records:
        (root / "images" / r["image"]).write_bytes(b"x")
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return root


def test_pairs_layout_errors(tmp_path):
    rec = {"image": "a.jpg", "image_id": 1, "captions": ["a dog"], "category_ids": [18]}
    root = _pairs_layout(tmp_path, [rec, {**rec, "image": "b.jpg"}])
    with pytest.raises(DataError, match=r"duplicate image ids \[1\]"):
        coco(root)
    (root / "pairs.jsonl").write_text(json.dumps({**rec, "category_ids": [99]}) + "\n")
    with pytest.raises(DataError, match="pairs.jsonl line 1: category id 99"):
        coco(root)
    (root / "pairs.jsonl").write_text(json.dumps(rec) + "\n")
    (root / "categories.json").unlink()
    with pytest.raises(DataError, match="categories.json"):
        coco(root)


def test_no_layout_and_missing_dir(tmp_path):
    with pytest.raises(DataError, match="no COCO layout"):
        coco(tmp_path)
    with pytest.raises(DataError, match=r"(?s)missing-coco.*DATA_DIR"):
        coco(tmp_path / "missing-coco")
