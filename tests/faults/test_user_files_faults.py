"""A user's files read as they mean, or refused in one line saying why (issue 22, class 4)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.faults.conftest import one_line_error, write_pairs


def _images(root, n):
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")


def _csv(root, lines):
    _images(root, 40)
    (root / "pairs.csv").write_text("image,text,labels\n" + "\n".join(lines) + "\n")
    return root


def _rows(n=40):
    return [f"img/{i}.png,a {'dog' if i % 2 else 'cat'} picture number {i},{'dog' if i % 2 else 'cat'}|pet"
            for i in range(n)]


def _extract(cli, data, cache, *extra):
    return cli("extract", "--dataset", "pairs", "--data-dir", data, "--cache", cache, "--encoders", "bow", *extra)


def _items(cache, name="pairs"):
    from pipeline.ground.store.cache import Cache

    return Cache(cache).dataset(name).items


def test_a_csv_quote_that_closes_rows_later_is_named_at_its_opening_line(cli, tmp_path):
    rows = _rows()
    rows[10] = 'img/10.png,"a dog that opens a quote,dog'  # file line 12; the next quote is five rows on
    rows[15] = 'img/15.png,a cat" closes it here,cat'
    line = one_line_error(_extract(cli, _csv(tmp_path / "d", rows), tmp_path / "c"))
    assert "pairs.csv line 12: the quote that opens in column 'text' closes only on line 17" in line
    assert "line 13 ('img/11.png" in line and "close the quote that opens on line 12" in line


def test_a_csv_quote_never_closed_is_named_at_its_opening_line_not_as_missing_labels(cli, tmp_path):
    rows = _rows()
    rows[38] = 'img/38.png,"a dog and a quote that never closes,dog'  # file line 40
    line = one_line_error(_extract(cli, _csv(tmp_path / "d", rows), tmp_path / "c"))
    assert "pairs.csv line 40" in line and "close the quote that opens on line 40" in line
    assert "missing" not in line


def test_a_quoted_caption_with_line_breaks_is_one_caption(cli, tmp_path):
    rows = _rows()
    rows[5] = 'img/5.png,"a dog on two lines,\nrunning on the beach",dog|pet'
    result = _extract(cli, _csv(tmp_path / "d", rows), tmp_path / "c")
    assert result.code == 0, result.err
    items = _items(tmp_path / "c")
    assert len(items) == 40 and items.item_id.tolist() == list(range(40))  # no row lost, no id shifted
    assert "running on the beach" in items.texts[5][0]


@pytest.mark.parametrize("cell, expect", [('"cat,dog"', "write 'cat|dog'"), ("cat;dog", "write 'cat|dog'")])
def test_labels_separated_by_a_comma_in_a_csv_are_refused_with_the_fix(cli, tmp_path, cell, expect):
    rows = _rows()
    rows[3] = f"img/3.png,a cat and a dog,{cell}"
    line = one_line_error(_extract(cli, _csv(tmp_path / "d", rows), tmp_path / "c"))
    assert "pairs.csv line 5: the labels cell" in line and expect in line and "label_sep" in line


def test_tags_separated_by_commas_in_a_csv_are_refused_when_texts_are_tags(cli, tmp_path):
    rows = _rows()
    rows[2] = "img/2.png,dog,beach,dog"
    rows = [r.replace(",a ", ",a|") for r in rows]
    rows[2] = 'img/2.png,"dog,beach",dog'
    line = one_line_error(_extract(cli, _csv(tmp_path / "d", rows), tmp_path / "c", "-o", "dataset.text_kind=tags"))
    assert "the text cell 'dog,beach'" in line and "write 'dog|beach'" in line and "text_sep" in line


def test_a_label_separator_option_reads_comma_separated_labels(cli, tmp_path):
    rows = [r.replace("|pet", ";pet") for r in _rows()]
    result = _extract(cli, _csv(tmp_path / "d", rows), tmp_path / "c", "-o", "dataset.label_sep=;")
    assert result.code == 0, result.err
    assert _items(tmp_path / "c").label_names == ["cat", "dog", "pet"]


@pytest.mark.parametrize("ident, expect", [
    (0.7, "id 0.7 is not an integer"),
    (True, "id True is not an integer"),
    (2**70, f"id {2**70} does not fit in 64 bits"),
    ("12a", "id '12a' is not an integer"),
])
def test_json_ids_that_are_not_64_bit_integers_are_refused(cli, tmp_path, ident, expect):
    data = tmp_path / "d"
    write_pairs(data)
    rows = [json.loads(line) for line in (data / "pairs.jsonl").read_text().splitlines()]
    rows = [{**r, "id": k} for k, r in enumerate(rows)]
    rows[1]["id"] = ident
    (data / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    line = one_line_error(_extract(cli, data, tmp_path / "c"))
    assert "pairs.jsonl line 2: " in line and expect in line


def test_whole_number_json_ids_written_as_floats_are_read(cli, tmp_path):
    data = tmp_path / "d"
    write_pairs(data)
    rows = [json.loads(line) for line in (data / "pairs.jsonl").read_text().splitlines()]
    (data / "pairs.jsonl").write_text("\n".join(json.dumps({**r, "id": float(10 + k)}) for k, r in enumerate(rows)))
    assert _extract(cli, data, tmp_path / "c").code == 0
    assert _items(tmp_path / "c").item_id.tolist() == list(range(10, 50))


def test_a_pretty_printed_json_array_says_json_lines_are_expected(cli, tmp_path):
    data = tmp_path / "d"
    write_pairs(data)
    rows = [json.loads(line) for line in (data / "pairs.jsonl").read_text().splitlines()]
    (data / "pairs.jsonl").write_text(json.dumps(rows, indent=2))
    line = one_line_error(_extract(cli, data, tmp_path / "c"))
    assert "pairs.jsonl line 1 " in line and "JSON Lines: one complete object per line" in line


def _coco(root, categories_of):
    (root / "images").mkdir(parents=True)
    (root / "categories.json").write_text(json.dumps([{"id": i, "name": f"c{i}"} for i in (1, 2, 12)]))
    rng = np.random.default_rng(0)
    lines = []
    for i in range(30):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "image_id": i, "captions": [f"a dog number {i}"],
                                 "category_ids": categories_of(i)}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("categories_of, expect", [
    (lambda i: "12" if i == 4 else [1], "category_ids should be a list of category ids, got '12'; write [12]"),
    (lambda i: [1.5] if i == 4 else [1], "category id 1.5 is not an integer"),
])
def test_coco_category_ids_are_read_as_written_or_refused(cli, tmp_path, categories_of, expect):
    data = _coco(tmp_path / "coco", categories_of)
    line = one_line_error(cli("extract", "--dataset", "coco", "--data-dir", data, "--cache", tmp_path / "c",
                              "--encoders", "bow"))
    assert "pairs.jsonl line 5" in line and expect in line


def test_coco_image_ids_that_are_not_integers_are_refused(cli, tmp_path):
    data = _coco(tmp_path / "coco", lambda i: [1])
    lines = (data / "pairs.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"image_id": 2', '"image_id": 2.5')
    (data / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    line = one_line_error(cli("extract", "--dataset", "coco", "--data-dir", data, "--cache", tmp_path / "c",
                              "--encoders", "bow"))
    assert "image_id 2.5 is not an integer" in line


# -- images in sample formats convert("RGB") gets wrong -----------------------------------------------------
def _grey_ramp() -> np.ndarray:
    return np.linspace(0, 1, 32 * 32).reshape(32, 32)


@pytest.mark.parametrize("name, pixels", [
    ("grey16.png", lambda g: (g * 65535).round().astype(np.uint16)),
    ("grey16.tif", lambda g: (g * 65535).round().astype(np.uint16)),
    ("float.tif", lambda g: g.astype(np.float32)),
])
def test_sixteen_bit_and_float_images_read_at_their_brightness(tmp_path, name, pixels):
    from pipeline.ground.images import load_image

    Image.fromarray(pixels(_grey_ramp())).save(tmp_path / name)
    expected = (_grey_ramp() * 255).round()
    got = np.asarray(load_image(str(tmp_path / name)), dtype=np.float64)
    assert got.shape == (32, 32, 3)
    assert np.abs(got[..., 0] - expected).max() <= 1  # not clipped to white, nor truncated to black


def test_a_transparent_png_reads_as_a_viewer_shows_it(tmp_path):
    from pipeline.ground.images import load_image

    rgba = np.zeros((8, 8, 4), np.uint8)  # black under full transparency
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    assert np.asarray(load_image(str(tmp_path / "clear.png"))).min() == 255


def test_images_of_unknown_scale_are_dropped_with_the_reason_and_counted(cli, tmp_path, caplog):
    data = tmp_path / "d"
    write_pairs(data)
    Image.fromarray((_grey_ramp() * 300).astype(np.float32)).save(data / "img" / "3.tif")
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 70000).astype(np.int32)).save(data / "img" / "4.tif")
    rows = [json.loads(line) for line in (data / "pairs.jsonl").read_text().splitlines()]
    rows[3]["image"], rows[4]["image"] = "img/3.tif", "img/4.tif"
    (data / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = _extract(cli, data, tmp_path / "c", "-o", "dataset.text_kind=tags")
    assert result.code == 0, result.err
    items = _items(tmp_path / "c")
    assert len(items) == 38 and {3, 4}.isdisjoint(items.item_id.tolist())
    reasons = {int(i): why for i, why in items.skipped}
    assert "floating-point samples from 0 to 300" in reasons[3]
    assert "32-bit integer samples have no known brightness scale" in reasons[4]
    assert "dropped 2 pair(s)" in caplog.text


def test_a_query_image_of_unknown_scale_is_one_line(cli, built, tmp_path):
    _, cache, run = built
    Image.fromarray((_grey_ramp() * -5).astype(np.float32)).save(tmp_path / "neg.tif")
    line = one_line_error(cli("query", "--run", run, "--cache", cache, "--image", tmp_path / "neg.tif"))
    assert "neg.tif: floating-point samples from -5 to 0" in line and "scale it to [0, 1]" in line


# -- beyond the list ------------------------------------------------------------------------------------------
def test_a_csv_separated_by_semicolons_with_capitalised_headers_is_read(cli, tmp_path):
    data = tmp_path / "d"
    _images(data, 40)
    lines = [f"img/{i}.png;a picture, number {i};{'dog' if i % 2 else 'cat'}|pet" for i in range(40)]
    (data / "pairs.csv").write_text("Image; Text; Labels\n" + "\n".join(lines) + "\n")
    result = _extract(cli, data, tmp_path / "c")
    assert result.code == 0, result.err
    items = _items(tmp_path / "c")
    assert len(items) == 40 and items.texts[3] == ["a picture, number 3"] and items.label_names == ["cat", "dog", "pet"]


def test_an_image_path_under_the_home_folder_is_read(cli, tmp_path, monkeypatch):
    data = tmp_path / "d"
    write_pairs(data)
    monkeypatch.setenv("HOME", str(data))
    rows = [json.loads(line) for line in (data / "pairs.jsonl").read_text().splitlines()]
    (data / "pairs.jsonl").write_text("\n".join(json.dumps({**r, "image": "~/" + r["image"]}) for r in rows) + "\n")
    assert _extract(cli, "~/pairs.jsonl", tmp_path / "c").code == 0
    assert len(_items(tmp_path / "c")) == 40


def test_coco_categories_listed_twice_are_refused(cli, tmp_path):
    data = _coco(tmp_path / "coco", lambda i: [1])
    (data / "categories.json").write_text(json.dumps([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]))
    line = one_line_error(cli("extract", "--dataset", "coco", "--data-dir", data, "--cache", tmp_path / "c",
                              "--encoders", "bow"))
    assert "categories.json: category id(s) [1] are listed more than once" in line


def test_the_same_picture_in_8_bit_16_bit_and_float_files_gets_the_same_features(cli, tmp_path):
    """At the level the user meets it: the cached AlexNet features of one grey picture saved three ways."""
    from pipeline.ground.store.cache import Cache

    data = tmp_path / "d"
    write_pairs(data)
    grey = (_grey_ramp() * 255).round().astype(np.uint8)
    Image.fromarray(grey).save(data / "img" / "0.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(data / "img" / "1.png")
    Image.fromarray(grey.astype(np.float32) / 255).save(data / "img" / "2.tif")
    rows = [json.loads(line) for line in (data / "pairs.jsonl").read_text().splitlines()]
    rows[2]["image"] = "img/2.tif"
    (data / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = cli("extract", "--dataset", "pairs", "--data-dir", data, "--cache", tmp_path / "c", "--encoders",
                 "alexnet", "-o", "dataset.text_kind=tags")
    assert result.code == 0, result.err
    ds = Cache(tmp_path / "c").dataset("pairs")
    refs = ds.feature_refs("alexnet:pool", "image")
    rows_of = {}
    for split in ("query", "database"):
        chunk = ds.features(split, refs, [])
        rows_of.update({int(i): chunk.image_matrix[k] for k, i in enumerate(chunk.item_id)})
    assert np.allclose(rows_of[0], rows_of[1], atol=1e-3) and np.allclose(rows_of[0], rows_of[2], atol=1e-3)
    assert not np.allclose(rows_of[0], rows_of[3], atol=1e-3)  # a different picture differs


@pytest.mark.parametrize("option", ["dataset.label_sep=", "dataset.text_sep= "])
def test_an_empty_separator_option_is_refused(cli, tmp_path, option):
    line = one_line_error(_extract(cli, _csv(tmp_path / "d", _rows()), tmp_path / "c", "-o", option))
    assert "give the character that separates the items of a cell" in line
