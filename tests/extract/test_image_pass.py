"""Pairs whose image fails in the encoding pass: dropped from the item table and from every reader,
including features a text encoder wrote for them before (``stages.prepare.images``)."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.ground.store.cache import Cache
from pipeline.ground.store.features import read_errors, read_split_raw
from pipeline.ground.store.items import read_splits, write_items, write_splits
from stages.extract import create_encoder
from stages.extract.runner import run_extraction
from stages.prepare.images import IMAGE_PASS, drop_failed_images, image_pass_pending
from tests.extract.conftest import TINY_CLIP, WORDS

CLIP = "clip-cmh-tiny-clip.local"


@pytest.fixture
def clip(tiny_clip_weights):
    return lambda: create_encoder("clip", model=TINY_CLIP, pretrained=str(tiny_clip_weights))


def _run(cache, items, splits, encoder):
    return run_extraction(cache, items, splits, encoder, batch_size=3, workers=0, shard_size=8, progress=False,
                          threads=1)


def test_a_failing_image_in_the_middle_of_a_shard_is_used_by_no_reader(tmp_path, make_items, clip):
    items = make_items(20, corrupt=[8])  # database shard 0 holds items 4..11: the failure sits in its middle
    bad = int(items.item_id[8])
    items.vocabulary = list(WORDS)  # bow's vocabulary then does not depend on which pairs the train split keeps
    splits = {"query": items.item_id[:4], "database": items.item_id[4:], "train": items.item_id[4::2]}
    assert bad in splits["train"]
    cache = Cache(tmp_path / "c")
    write_items(cache, items, {IMAGE_PASS: "pending"})
    write_splits(cache, items.dataset, splits, {})
    bow_first = _run(cache, items, splits, create_encoder("bow"))  # a text encoder that never reads the image
    assert bow_first.rows["database"] == 16 and bow_first.rows["train"] == 8
    assert _run(cache, items, splits, clip()).failed == 1
    failures = read_errors(cache, items.dataset, CLIP)
    assert list(failures) == [bad] and "cannot read image" in failures[bad]

    kept = drop_failed_images(cache, items, failures, complete=True)
    assert bad not in kept.item_id and len(kept) == 19 and not image_pass_pending(cache, items.dataset)
    assert any(int(i) == bad and why.startswith("image unreadable: cannot read image") for i, why in kept.skipped)
    np.testing.assert_array_equal(read_splits(cache, items.dataset)["database"], splits["database"])  # as drawn

    ds = Cache(tmp_path / "c").dataset(items.dataset)
    assert all(bad not in members for members in ds.splits.values())
    assert len(ds.splits["database"]) == 15 and len(ds.planned_splits["database"]) == 16
    assert bad in read_split_raw(cache, items.dataset, "bow", "database")["item_id"]  # still on disk ...
    for split in ("database", "train"):  # ... but no reader returns it, text alone or with the images
        text_only = ds.features(split, [], ds.feature_refs("bow", "text"))
        both = ds.features(split, ds.feature_refs(CLIP, "image"), ds.feature_refs("bow", "text"))
        for data in (text_only, both):
            assert bad not in data.item_id and bad not in data.dropped  # recorded as skipped, not a new loss
            np.testing.assert_array_equal(data.item_id, ds.splits[split])
        chunks = list(ds.chunks(split, [], ds.feature_refs("bow", "text"), chunk_rows=3))
        assert np.concatenate([c.item_id for c in chunks]).tolist() == ds.splits[split].tolist()

    # extracting bow again keeps its shards (the extra row is harmless) and gathers train without the pair
    shard = cache.shard_path(items.dataset, "bow", "database", 0)
    mtime = shard.stat().st_mtime_ns
    again = _run(cache, kept, read_splits(cache, items.dataset), create_encoder("bow"))
    assert again.shards_written == 0 and again.complete and shard.stat().st_mtime_ns == mtime
    assert bad not in pq.read_table(cache.shard_path(items.dataset, "bow", "train", 0)).column("item_id").to_pylist()


def test_a_fresh_text_encoder_never_encodes_a_dropped_pair(tmp_path, make_items):
    items = make_items(12)
    items.vocabulary = list(WORDS)
    splits = {"query": items.item_id[:4], "database": items.item_id[4:], "train": items.item_id[4::2]}
    cache = Cache(tmp_path / "c")
    write_items(cache, items, {IMAGE_PASS: "pending"})
    write_splits(cache, items.dataset, splits, {})
    gone = [int(items.item_id[1]), *map(int, items.item_id[4:12])]  # one query pair and a whole database shard
    kept = drop_failed_images(cache, items, {i: "cannot read image x: broken" for i in gone}, complete=True)
    summary = _run(cache, kept, splits, create_encoder("bow"))
    assert summary.complete and summary.rows == {"database": 0, "query": 3, "train": 0}
    assert set(gone).isdisjoint(read_split_raw(cache, items.dataset, "bow", "query")["item_id"].tolist())


def test_a_split_member_the_item_table_neither_holds_nor_dropped_is_refused(tmp_path, make_items):
    from pipeline.ground.errors import CacheError

    items = make_items(8)
    cache = Cache(tmp_path / "c")
    write_items(cache, items.subset(np.arange(7)), {})
    write_splits(cache, items.dataset, {"query": items.item_id[:2], "database": items.item_id[2:]}, {})
    with pytest.raises(CacheError, match="not in its item table"):
        Cache(tmp_path / "c").dataset(items.dataset).splits
