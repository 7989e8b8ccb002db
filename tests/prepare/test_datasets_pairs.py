"""The user `pairs` format (docs/pairs-format.md): JSONL and CSV, and every documented error."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from stages.prepare.datasets import get_dataset
from pipeline.ground.errors import ConfigError, DataError

pairs = get_dataset("pairs").builder


def _jsonl(tmp_path: Path, rows: list[dict], images=("a.jpg", "b.jpg", "c.jpg")) -> Path:
    (tmp_path / "photos").mkdir(exist_ok=True)
    for name in images:
        (tmp_path / "photos" / name).write_bytes(b"x")
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return path


ROWS = [
    {"image": "photos/a.jpg", "text": "A dog on the beach.", "labels": ["dog", "beach"]},
    {"image": "photos/b.jpg", "text": ["cat", "sofa"], "labels": ["cat"]},
    {"image": "photos/c.jpg", "text": "A cat and a dog.", "labels": ["dog", "cat"]},
]


def test_jsonl_from_folder_and_from_file(tmp_path):
    path = _jsonl(tmp_path, ROWS)
    for where in (tmp_path, path):
        table = pairs(where)
        assert table.item_id.tolist() == [0, 1, 2]
        assert table.texts == [["A dog on the beach."], ["cat", "sofa"], ["A cat and a dog."]]
        assert table.label_names == ["beach", "cat", "dog"]  # sorted names seen
        assert table.labels.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 1]]
        assert table.image[1] == str(tmp_path.resolve() / "photos" / "b.jpg")
        assert table.text_kind == "captions" and table.dataset == "pairs"


def test_label_names_option_and_ids(tmp_path):
    rows = [{**r, "id": 100 + k} for k, r in enumerate(ROWS)]
    table = pairs(_jsonl(tmp_path, rows), label_names=["dog", "cat", "beach"], text_kind="tags")
    assert table.item_id.tolist() == [100, 101, 102] and table.labels[0].tolist() == [1, 0, 1]
    assert table.text_kind == "tags"
    with pytest.raises(DataError, match="label 'beach' is not in label_names"):
        pairs(tmp_path, label_names=["dog", "cat"])


def test_csv_with_separators(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "pairs.csv").write_text(
        'id,image,text,labels\n'
        '10,a.jpg,"A dog, running.|Second caption",dog|outdoor\n'
        '11,b.jpg,sky|clouds,sky\n')
    table = pairs(tmp_path)
    assert table.item_id.tolist() == [10, 11]
    assert table.texts == [["A dog, running.", "Second caption"], ["sky", "clouds"]]
    assert table.label_names == ["dog", "outdoor", "sky"] and table.labels.tolist() == [[1, 1, 0], [0, 0, 1]]


def test_csv_extra_cells_name_the_line(tmp_path):
    (tmp_path / "pairs.csv").write_text("image,text,labels\na.jpg,a dog, running,dog\n")
    with pytest.raises(DataError, match="line 2: more cells"):
        pairs(tmp_path)


def test_missing_labels_field_is_an_error(tmp_path):
    rows = [ROWS[0], {"image": "photos/b.jpg", "text": "no labels here"}]
    with pytest.raises(DataError, match=r"pairs.jsonl line 2: missing field\(s\) \['labels'\].*required"):
        pairs(_jsonl(tmp_path, rows))


def test_dropped_rows_are_recorded(tmp_path, caplog):
    rows = [ROWS[0], {**ROWS[1], "text": ["", "  "]}, {**ROWS[2], "labels": []},
            {"image": "photos/gone.jpg", "text": "x", "labels": ["dog"]}]
    with caplog.at_level(logging.WARNING):
        table = pairs(_jsonl(tmp_path, rows))
    assert table.item_id.tolist() == [0]
    reasons = dict(table.skipped)
    assert reasons[1] == "empty text" and reasons[2] == "no labels" and reasons[3].startswith("image file missing")
    assert "empty text" in caplog.text and "no labels" in caplog.text
    assert len(pairs(tmp_path, keep_unlabelled=True)) == 2


def test_id_errors(tmp_path):
    with pytest.raises(DataError, match=r"duplicate ids \[7\]"):
        pairs(_jsonl(tmp_path, [{**r, "id": 7} for r in ROWS[:2]]))
    with pytest.raises(DataError, match="line 2: has no id"):
        pairs(_jsonl(tmp_path, [{**ROWS[0], "id": 1}, ROWS[1]]))
    with pytest.raises(DataError, match="'x' is not an integer"):
        pairs(_jsonl(tmp_path, [{**ROWS[0], "id": "x"}]))


def test_bad_values(tmp_path):
    with pytest.raises(DataError, match="line 1 is not valid JSON"):
        (tmp_path / "pairs.jsonl").write_text("{not json\n")
        pairs(tmp_path)
    with pytest.raises(DataError, match="text must be a string or a list"):
        pairs(_jsonl(tmp_path, [{**ROWS[0], "text": 5}]))
    with pytest.raises(DataError, match="labels must be a list"):
        pairs(_jsonl(tmp_path, [{**ROWS[0], "labels": "dog"}]))
    with pytest.raises(ConfigError, match="text_kind"):
        pairs(_jsonl(tmp_path, ROWS), text_kind="sentences")


def test_which_file(tmp_path):
    with pytest.raises(DataError, match="no pairs.jsonl or pairs.csv"):
        pairs(tmp_path)
    _jsonl(tmp_path, ROWS)
    (tmp_path / "pairs.csv").write_text("image,text,labels\n")
    with pytest.raises(DataError, match="both pairs.jsonl and pairs.csv"):
        pairs(tmp_path)
    assert len(pairs(tmp_path, file="pairs.jsonl")) == 3
    with pytest.raises(DataError, match="DATA_DIR"):
        pairs(tmp_path / "nothing-here")


def test_example_in_the_format_doc_parses(tmp_path):
    doc = (Path(__file__).resolve().parents[2] / "docs" / "pairs-format.md").read_text()
    jsonl = doc.split("```json\n", 1)[1].split("```", 1)[0]
    csv_text = doc.split("```csv\n", 1)[1].split("```", 1)[0]
    (tmp_path / "photos").mkdir()
    for name in ("0001.jpg", "0002.jpg", "0003.jpg"):
        (tmp_path / "photos" / name).write_bytes(b"x")
    (tmp_path / "pairs.jsonl").write_text(jsonl)
    table = pairs(tmp_path / "pairs.jsonl")
    assert len(table) == 2 and table.skipped[0][1].startswith("image file missing")  # row 3: an absolute path
    (tmp_path / "pairs.csv").write_text(csv_text)
    table = pairs(tmp_path / "pairs.csv")
    assert table.item_id.tolist() == [10, 11, 12] and table.texts[2] == ["mountain", "hiking", "people", "sky"]
