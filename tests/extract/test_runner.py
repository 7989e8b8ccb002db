"""run_extraction: end to end into a cache, failures, resume, --shard i/n, refusals."""
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.ground.images import load_image
from pipeline.ground.errors import CacheError, ConfigError, DataError
from pipeline.ground.store.features import ShardSpec, read_manifest, read_split_raw
from pipeline.ground.store.items import write_items, write_splits
from pipeline.ground.store.cache import Cache
from stages.extract import create_encoder
from stages.extract.runner import resolve_device, run_extraction
from tests.extract.conftest import TINY_CLIP, toy_splits

ENC = "clip-cmh-tiny-clip.local"


@pytest.fixture
def clip(tiny_clip_weights):
    return lambda **kw: create_encoder("clip", model=TINY_CLIP, pretrained=str(tiny_clip_weights), **kw)


def _run(layout, items, splits, encoder, **kw):
    kw = {"batch_size": 3, "workers": 0, "shard_size": 4, "progress": False, "threads": 1, **kw}
    return run_extraction(layout, items, splits, encoder, **kw)


def _cache(tmp_path: Path, items, splits, name="cache") -> Cache:
    layout = Cache(tmp_path / name)
    write_items(layout, items, {})
    write_splits(layout, items.dataset, splits, {})
    return layout


def test_tiny_clip_end_to_end_into_the_cache(tmp_path, make_items, clip):
    items = make_items(12)
    splits = toy_splits(items)
    layout = _cache(tmp_path, items, splits)
    enc = clip()
    summary = _run(layout, items, splits, enc)
    assert summary.encoder == ENC and summary.device == "cpu" and summary.complete
    assert summary.rows == {"database": 8, "query": 4, "train": 4}
    assert summary.failed == 0 and summary.shards_written == 3  # query 1 part, database 2 parts of 4
    assert summary.columns == {"image": 16, "text": 16} and summary.bytes_on_disk > 0 and summary.items_per_s > 0
    manifest = read_manifest(layout, items.dataset, ENC)
    assert manifest["complete"] and manifest["dataset_fingerprint"] == items.fingerprint()
    prov = manifest["provenance"]
    assert prov["weights"]["source"] == "file" and prov["weights"]["path"] and prov["packages"]["open_clip_torch"]
    assert prov["encoder_config"] == enc.config() and prov["code_version"]

    ds = layout.dataset(items.dataset)
    data = ds.features("train", ds.feature_refs(ENC, "image"), ds.feature_refs(ENC, "text"))
    assert np.array_equal(data.item_id, splits["train"])
    assert data.image[f"{ENC}:image"].shape == (4, 16) and data.text[f"{ENC}:text"].shape == (4, 16)
    # row i is item i: recompute the train items directly
    rows = [int(np.flatnonzero(items.item_id == i)[0]) for i in splits["train"]]
    transform = enc.image_transform()
    images = torch.stack([transform(load_image(items.image[r])) for r in rows])
    direct = enc.encode(images, [items.texts[r] for r in rows], splits["train"])
    np.testing.assert_allclose(data.image[f"{ENC}:image"], direct["image"], rtol=2e-3, atol=2e-3)  # stored as fp16
    np.testing.assert_allclose(data.text[f"{ENC}:text"], direct["text"], rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(data.labels, items.labels[rows])


def test_corrupt_image_is_dropped_from_every_modality(tmp_path, make_items, clip):
    items = make_items(12, corrupt=[6])
    bad = int(items.item_id[6])
    splits = toy_splits(items)  # item 6 is in database and train
    layout = _cache(tmp_path, items, splits)
    summary = _run(layout, items, splits, clip(), workers=2)  # the failure marker crosses worker processes
    assert summary.failed == 1 and summary.complete
    assert summary.rows == {"database": 7, "query": 4, "train": 3}
    errors = pq.read_table(layout.errors_path(items.dataset, ENC)).to_pydict()
    assert errors["item_id"] == [bad] and errors["reference"] == [items.image[6]]
    assert "cannot read image" in errors["reason"][0]
    db = read_split_raw(layout, items.dataset, ENC, "database")
    assert bad not in db["item_id"] and len(db["image"]) == len(db["text"]) == 7
    # bow has the item (no image read); the reader drops the pair from both modalities
    assert _run(layout, items, splits, create_encoder("bow")).rows["database"] == 8
    ds = layout.dataset(items.dataset)
    data = ds.features("database", ds.feature_refs(ENC, "image"), ds.feature_refs("bow", "text"))
    assert data.dropped.tolist() == [bad] and bad not in data.item_id and len(data) == 7
    assert data.image_matrix.shape == (7, 16) and data.text_matrix.shape[0] == 7


def test_a_shard_whose_every_image_fails_stops_the_run(tmp_path, make_items, clip):
    items = make_items(6, corrupt=[0, 1, 2, 3])
    layout = Cache(tmp_path / "cache")
    with pytest.raises(DataError, match="every item of shard query/part-00000"):
        _run(layout, items, toy_splits(items), clip())
    assert len(pq.read_table(layout.errors_path(items.dataset, ENC))) == 4


def test_resume_rewrites_only_the_missing_shard(tmp_path, make_items, clip):
    items = make_items(12)
    splits = toy_splits(items)
    layout = Cache(tmp_path / "cache")
    _run(layout, items, splits, clip())
    parts = sorted(layout.encoder_dir(items.dataset, ENC).glob("split=*/part-*.parquet"))
    physical = [p for p in parts if "split=train" not in str(p)]
    before = {p: p.stat().st_mtime_ns for p in physical}
    victim = layout.shard_path(items.dataset, ENC, "database", 1)
    expected = read_split_raw(layout, items.dataset, ENC, "database")
    victim.unlink()  # as if the run had been killed before writing it
    time.sleep(0.01)
    summary = _run(layout, items, splits, clip())
    assert summary.shards_written == 1 and summary.complete
    for p, mtime in before.items():
        assert p.exists()
        assert (p.stat().st_mtime_ns == mtime) == (p != victim), p
    got = read_split_raw(layout, items.dataset, ENC, "database")
    np.testing.assert_array_equal(got["item_id"], expected["item_id"])
    np.testing.assert_array_equal(got["image"], expected["image"])
    # nothing pending: a re-run writes nothing and leaves the gathered train split alone
    train = layout.shard_path(items.dataset, ENC, "train", 0)
    mtime = train.stat().st_mtime_ns
    assert _run(layout, items, splits, clip()).shards_written == 0
    assert train.stat().st_mtime_ns == mtime
    # a lost gathered split is gathered again without encoding anything
    train.unlink()
    summary = _run(layout, items, splits, clip())
    assert summary.shards_written == 0 and summary.complete and summary.rows["train"] == 4


def test_two_shard_workers_equal_a_single_run(tmp_path, make_items, clip):
    items = make_items(14)
    splits = toy_splits(items)
    single = Cache(tmp_path / "single")
    _run(single, items, splits, clip())
    split_run = Cache(tmp_path / "split")
    first = _run(split_run, items, splits, clip(), shard=ShardSpec.parse("0/2"))
    assert not first.complete and first.shards_pending_elsewhere == 1  # database part 1 belongs to worker 1
    assert not read_manifest(split_run, items.dataset, ENC)["complete"]
    second = _run(split_run, items, splits, clip(), shard=ShardSpec.parse("1/2"))
    assert second.complete and second.shards_written == 1
    for split in ("query", "database", "train"):
        a = read_split_raw(single, items.dataset, ENC, split)
        b = read_split_raw(split_run, items.dataset, ENC, split)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_a_changed_encoder_config_is_refused(tmp_path, make_items, clip):
    items = make_items(8)
    splits = toy_splits(items)
    layout = Cache(tmp_path / "cache")
    _run(layout, items, splits, clip())
    with pytest.raises(CacheError, match="config_hash"):
        _run(layout, items, splits, clip(normalize=True))
    summary = _run(layout, items, splits, clip(normalize=True), overwrite=True)
    assert summary.complete and summary.shards_written == 2
    db = read_split_raw(layout, items.dataset, ENC, "database")
    np.testing.assert_allclose(np.linalg.norm(db["image"].astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_unknown_split_member_and_device_are_refused(tmp_path, make_items, clip):
    items = make_items(6)
    with pytest.raises(DataError, match="not in dataset"):
        _run(Cache(tmp_path / "c"), items, {"query": np.array([999]), "database": items.item_id}, clip())
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device(None).type == "cpu"
        with pytest.raises(ConfigError, match="--device cpu"):
            resolve_device("cuda")


def test_loader_settings_pin_and_queue_deep_enough_for_a_gpu():
    from stages.extract.runner import IN_FLIGHT, loader_settings

    gpu = loader_settings(torch.device("cuda"), 15, 64)  # sizing only: no GPU needed
    assert gpu.pin_memory and gpu.workers == 15 and gpu.workers * gpu.prefetch_factor >= IN_FLIGHT["cuda"]
    cpu = loader_settings(torch.device("cpu"), 2, 64)
    assert not cpu.pin_memory and cpu.prefetch_factor == 4  # 8 batches in flight
    huge = loader_settings(torch.device("cuda"), 4, 4096)  # 4096-image batches: memory caps the queue
    assert huge.workers * huge.prefetch_factor == 8  # two per worker, the least that keeps each one busy
    assert loader_settings(torch.device("cuda"), 0, 64).prefetch_factor is None


def test_the_summary_counts_the_batches_the_model_waited_for(tmp_path, make_items, clip, monkeypatch):
    import stages.extract.runner as runner

    real = runner.decode_image

    def slow(ref, transform):
        time.sleep(0.01)  # a slow disk: every batch decoded in this process makes the model wait
        return real(ref, transform)

    monkeypatch.setattr(runner, "decode_image", slow)
    items = make_items(12)
    summary = _run(Cache(tmp_path / "c"), items, toy_splits(items), clip(), workers=0)
    # 3 + 1 query items, two database shards of 3 + 1: six batches; the first one is start-up, not a wait
    assert summary.batches == 6 and summary.waited_batches == 5
    assert summary.wait_s >= 5 * 0.01 and summary.startup_s >= 3 * 0.01
    assert "waiting for decoded images in 5 of 6 batches" in summary.describe()
    assert "start-up" in summary.describe() and "finish" in summary.describe()
