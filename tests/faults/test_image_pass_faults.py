"""Every class of image fault is caught once, in the encoding pass, and the pair leaves every modality.

No image is decoded before the splits are drawn; the image encoder's pass finds the failures
(``errors.parquet``) and ``stages.prepare.images`` drops those pairs from the item table before the
text encoder runs (``README: Extraction``)."""
from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.ground.store.cache import Cache
from tests.faults.conftest import cli_subprocess, write_pairs

ALEX = "alexnet.imagenet"


def _bomb_png(path: Path, side: int = 20_000) -> None:
    """A PNG whose header claims side x side pixels (over twice PIL's bomb limit); the data is one pixel."""
    Image.new("RGB", (1, 1)).save(path)
    raw = bytearray(path.read_bytes())
    raw[16:24] = struct.pack(">II", side, side)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))


def _ids(cache: Path, encoder: str, split: str) -> list[int]:
    base = cache / "features/dataset=pairs" / f"encoder={encoder}" / f"split={split}"
    return [i for f in sorted(base.glob("*.parquet")) for i in pq.read_table(f).column("item_id").to_pylist()]


@pytest.fixture
def faulty(tmp_path) -> tuple[Path, dict[int, str]]:
    """A pairs folder whose images 2..9 each fail in another way (id -> a word of the expected reason), and
    whose image 10 is a 16-bit PNG, which is read (scaled), not dropped."""
    data = tmp_path / "d"
    write_pairs(data)
    img = data / "img"
    (img / "2.png").write_bytes(b"")
    good = (img / "3.png").read_bytes()
    (img / "3.png").write_bytes(good[: len(good) // 2])
    (img / "4.png").write_bytes(b"plain text, not a picture\n" * 4)
    (img / "5.png").unlink()
    os.mkfifo(img / "5.png")
    (img / "6.png").unlink()
    (img / "6.png").mkdir()
    _bomb_png(img / "7.png")
    Image.fromarray((np.linspace(0, 300, 32 * 32).reshape(32, 32)).astype(np.float32)).save(img / "8.tif")
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 70_000).astype(np.int32)).save(img / "9.tif")
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)).save(img / "10.png")
    rows = [json.loads(line) for line in (data / "pairs.jsonl").read_text().splitlines()]
    rows[8]["image"], rows[9]["image"] = "img/8.tif", "img/9.tif"
    (data / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    expected = {2: "cannot identify", 3: "truncated", 4: "cannot identify", 5: "not a regular file", 6: "folder",
                7: "DecompressionBomb", 8: "floating-point samples", 9: "32-bit integer samples"}
    return data, expected


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_each_image_fault_is_caught_once_while_encoding_and_leaves_every_modality(faulty, tmp_path):
    data, expected = faulty
    cache = tmp_path / "c"
    result = cli_subprocess("extract", "--dataset", "pairs", "--data-dir", data, "--cache", cache,
                            "--encoders", "bow,alexnet", "-o", "dataset.text_kind=tags", "--workers", "2", timeout=300)
    assert result.code == 0, result.err
    assert "checking images" not in result.err + result.out  # no pass that decodes before the encoder's
    assert f"dropped {len(expected)} pair(s) whose image does not decode" in result.err  # one warning, counted
    errors = pq.read_table(Cache(cache).errors_path("pairs", ALEX)).to_pydict()
    assert sorted(errors["item_id"]) == sorted(expected)  # each failure found once, by the encoder
    reasons = dict(zip(errors["item_id"], errors["reason"]))
    ds = Cache(cache).dataset("pairs")
    skipped = {int(i): why for i, why in ds.items.skipped}
    for item, word in expected.items():
        assert word in reasons[item] and word in skipped[item] and skipped[item].startswith("image unreadable")
    assert set(expected).isdisjoint(ds.items.item_id.tolist())
    assert all(set(expected).isdisjoint(members.tolist()) for members in ds.splits.values())
    for encoder in ("bow", ALEX):
        stored = _ids(cache, encoder, "query") + _ids(cache, encoder, "database")
        assert set(expected).isdisjoint(stored) and 10 in stored and len(stored) == 40 - len(expected)
    assert ds.manifest(ALEX)["failed_items"] == len(expected) and ds.manifest("bow")["dropped_pairs"] == len(expected)
    train = ds.features("train", ds.feature_refs("alexnet", "image"), ds.feature_refs("bow", "text"))
    assert set(expected).isdisjoint(train.item_id.tolist()) and len(train.dropped) == 0


def test_a_file_gone_after_the_items_were_read_is_caught_by_the_encoder(cli, pairs_dir, tmp_path, monkeypatch):
    import stages.prepare as prepare

    real = prepare.prepare_dataset

    def then_delete(*args, **kwargs):
        out = real(*args, **kwargs)
        (pairs_dir / "img" / "6.png").unlink()  # removed between reading the folder and decoding
        return out

    monkeypatch.setattr(prepare, "prepare_dataset", then_delete)
    cache = tmp_path / "c"
    result = cli("extract", "--dataset", "pairs", "--data-dir", pairs_dir, "--cache", cache,
                 "--encoders", "alexnet,bow", "-o", "dataset.text_kind=tags", "--workers", "0")
    assert result.code == 0, result.err
    ds = Cache(cache).dataset("pairs")
    assert "No such file" in dict((int(i), w) for i, w in ds.items.skipped)[6]
    assert 6 not in _ids(cache, "bow", "query") + _ids(cache, "bow", "database")


def test_a_text_only_extraction_decodes_each_image_once_and_drops_the_same_pairs(faulty, tmp_path):
    data, expected = faulty
    (data / "img" / "5.png").unlink()  # no FIFO here: the check runs in threads of this process
    (data / "img" / "5.png").write_bytes(b"")
    cache = tmp_path / "c"
    result = cli_subprocess("extract", "--dataset", "pairs", "--data-dir", data, "--cache", cache,
                            "--encoders", "bow", "-o", "dataset.text_kind=tags", timeout=300)
    assert result.code == 0, result.err
    ds = Cache(cache).dataset("pairs")
    assert set(expected).isdisjoint(ds.items.item_id.tolist()) and len(ds.items) == 40 - len(expected)
    assert set(expected).isdisjoint(_ids(cache, "bow", "query") + _ids(cache, "bow", "database"))
    again = cli_subprocess("extract", "--dataset", "pairs", "--data-dir", data, "--cache", cache,
                           "--encoders", "bow", "-o", "dataset.text_kind=tags", timeout=300)
    assert again.code == 0 and "checking images" not in again.err + again.out  # checked once per dataset
