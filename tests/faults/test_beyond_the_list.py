"""The same classes of fault on other sources and options than the issue listed."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.faults.conftest import one_line_error


def _coco(root, *, bom: bool = False, latin_line: int | None = None):
    (root / "images").mkdir(parents=True)
    (root / "categories.json").write_text(json.dumps([{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}]))
    lines = []
    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        caption = "a caf\u00e9 dog" if latin_line == i + 1 else f"a dog number {i}"
        lines.append(json.dumps({"image": f"{i}.png", "image_id": i, "captions": [caption],
                                 "category_ids": [1 + i % 2]}, ensure_ascii=False))
    body = "\n".join(lines) + "\n"
    data = ("\ufeff" if bom else "").encode() + (body.encode("latin-1") if latin_line else body.encode())
    (root / "pairs.jsonl").write_bytes(data)


def test_coco_pairs_file_not_utf8_names_the_line(cli, tmp_path):
    _coco(tmp_path / "coco", latin_line=4)
    line = one_line_error(cli("extract", "--dataset", "coco", "--data-dir", tmp_path / "coco", "--cache",
                              tmp_path / "c", "--encoders", "bow"))
    assert "pairs.jsonl line 4 " in line and "UTF-8" in line


def test_coco_pairs_file_with_a_byte_order_mark_is_read(cli, tmp_path):
    _coco(tmp_path / "coco", bom=True)
    result = cli("extract", "--dataset", "coco", "--data-dir", tmp_path / "coco", "--cache", tmp_path / "c",
                 "--encoders", "bow")
    assert result.code == 0, result.err


@pytest.mark.parametrize("args, expect", [
    (["--seed", "-1"], "seed -1"),
    (["--name", "../elsewhere"], "not path-safe"),
    (["--validation", "-3"], "--validation must be >= 1"),
    (["--validation", "0"], "--validation must be >= 1"),
    (["--n-query", "0"], "--n-query must be >= 1"),
    (["-o", "dataset.text_kind=tag"], "text_kind"),
])
def test_extract_refuses_impossible_requests(cli, pairs_dir, tmp_path, args, expect):
    result = cli("extract", "--dataset", "pairs", "--data-dir", pairs_dir, "--cache", tmp_path / "c",
                 "--encoders", "bow", *args)
    assert expect in one_line_error(result)


def test_demo_option_of_the_wrong_type_is_refused(cli, tmp_path):
    result = cli("extract", "--dataset", "demo", "--data-dir", tmp_path / "demo", "--cache", tmp_path / "c",
                 "--encoders", "bow", "-o", "dataset.n_items=many")
    assert "expected a whole number" in one_line_error(result)


@pytest.mark.parametrize("args, expect", [(["--seed", "-1"], "seed -1"), (["--dataset", "../x"], "not path-safe")])
def test_train_refuses_impossible_requests(cli, built, args, expect):
    _, cache, _ = built
    result = cli("train", "--method", "baseline", "--dataset", "pairs", "--cache", cache, "--bits", "8", *args)
    assert expect in one_line_error(result)


def test_a_damaged_manifest_is_named_with_the_fix(cli, built):
    _, cache, _ = built
    (cache / "features/dataset=pairs/encoder=bow/_manifest.json").write_text("{")
    line = one_line_error(cli("train", "--method", "baseline", "--dataset", "pairs", "--cache", cache, "--bits", "8"))
    assert "_manifest.json is damaged" in line and "--overwrite" in line


def test_a_damaged_items_table_is_named_with_the_fix(cli, built):
    data, cache, _ = built
    (cache / "datasets/dataset=pairs/items.parquet").write_bytes(b"PAR1 truncated")
    result = cli("extract", "--dataset", "pairs", "--data-dir", data, "--cache", cache, "--encoders", "bow",
                 "-o", "dataset.text_kind=tags")
    line = one_line_error(result)
    assert "items.parquet" in line and "--overwrite" in line
