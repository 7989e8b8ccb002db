"""The Parquet feature store: atomic shards, resume, alignment across encoders, refusals."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.ground.versions import CACHE_SCHEMA_VERSION
from pipeline.ground.item_table import ItemTable
from pipeline.ground.errors import CacheError, DataError
from pipeline.ground.store.features import ColumnSpec, FeatureWriter, ShardSpec, read_split_raw
from pipeline.ground.store.items import read_items, read_splits, write_items, write_splits
from pipeline.ground.store.cache import Cache
from pipeline.ground.store.parquet import read_metadata, write_table_atomic


def _table(n=10, name="toy"):
    rng = np.random.default_rng(0)
    return ItemTable(dataset=name, item_id=np.arange(100, 100 + n), image=[f"/x/{i}.jpg" for i in range(n)],
                     texts=[[f"t{i}", "common"] for i in range(n)], labels=rng.integers(0, 2, (n, 3)).astype(np.uint8),
                     label_names=["a", "b", "c"], text_kind="tags", source="/x")


def _splits(t):
    ids = t.item_id
    return {"query": ids[:3], "database": ids[3:], "train": ids[[5, 3, 8]]}


def _writer(layout, t, splits, encoder="enc", cfg=None, shard_size=3, columns=None):
    columns = columns or {"v": ColumnSpec(4, "float16", "image")}
    return FeatureWriter(layout, t.dataset, encoder, encoder_config=cfg or {"k": 1}, columns=columns,
                         default_columns={"image": list(columns)}, dataset_fingerprint=t.fingerprint(),
                         splits=splits, shard_size=shard_size, code_version="test")


def _fill(writer, fail=(), fn=lambda ids: np.stack([ids, ids, ids, ids], 1).astype(np.float32)):
    for shard in writer.pending():
        ok = np.array([i for i in shard.item_ids if i not in fail], dtype=np.int64)
        # as the extraction runner does: a failed item is listed in errors.parquet, and left out of its shard
        writer.write_errors([(int(i), f"/x/{i}.jpg", "decode failed") for i in shard.item_ids if i in fail])
        writer.write_shard(shard, ok, {c: fn(ok) for c in writer.columns})
    return writer.finalize()


def test_items_and_splits_round_trip(tmp_path):
    layout = Cache(tmp_path)
    t = _table()
    write_items(layout, t, {})
    write_splits(layout, t.dataset, _splits(t), {"params": {}})
    back = read_items(layout, "toy")
    assert back.item_id.tolist() == t.item_id.tolist()
    assert back.texts == t.texts and np.array_equal(back.labels, t.labels)
    assert back.fingerprint() == t.fingerprint()
    sp = read_splits(layout, "toy")
    assert sp["train"].tolist() == [105, 103, 108]  # order kept


def test_splits_keep_positions_when_rows_are_shuffled_and_refuse_a_damaged_table(tmp_path):
    import pyarrow as pa
    layout = Cache(tmp_path)
    t = _table()
    write_items(layout, t, {})
    write_splits(layout, t.dataset, {**_splits(t), "empty": np.zeros(0, np.int64)}, {"params": {}})
    path = layout.splits_path("toy")
    table = pq.read_table(path)
    meta = read_metadata(path, "fix")
    assert table.column("split").type == pa.string()  # plain strings on disk, one per row
    shuffled = table.take(pa.array(np.random.default_rng(3).permutation(table.num_rows)))
    write_table_atomic(shuffled, path, metadata=meta)
    sp = read_splits(layout, "toy")
    assert sp["train"].tolist() == [105, 103, 108] and sp["query"].tolist() == [100, 101, 102]
    assert sp["database"].tolist() == list(range(103, 110)) and sp["train"].dtype == np.int64
    with_null = table.set_column(1, "split", pa.array([None] + table.column("split").to_pylist()[1:], pa.string()))
    write_table_atomic(with_null, path, metadata=meta)
    with pytest.raises(CacheError, match="without a split name.*--overwrite"):
        read_splits(layout, "toy")
    no_pos = table.set_column(2, "position", pa.array([None] + table.column("position").to_pylist()[1:], pa.int64()))
    write_table_atomic(no_pos, path, metadata=meta)
    with pytest.raises(CacheError, match="missing.*--overwrite"):
        read_splits(layout, "toy")
    write_table_atomic(table.drop_columns(["position"]), path, metadata=meta)
    with pytest.raises(CacheError, match="not a split table.*--overwrite"):
        read_splits(layout, "toy")


def test_feature_shards_resume_and_gather_train(tmp_path):
    layout = Cache(tmp_path)
    t = _table()
    splits = _splits(t)
    write_items(layout, t, {})
    write_splits(layout, t.dataset, splits, {})
    w = _writer(layout, t, splits)
    w.check_or_create_manifest()
    assert len(w.pending()) == 1 + 3  # query 3 rows -> 1 part, database 7 rows -> 3 parts
    first = w.pending()[0]
    w.write_shard(first, first.item_ids, {"v": np.zeros((len(first.item_ids), 4))})
    assert not w.finalize()  # incomplete: train not gathered yet
    assert len(w.pending()) == 3  # resume skips the written part
    assert _fill(w)
    train = read_split_raw(layout, "toy", "enc", "train")
    assert train["item_id"].tolist() == [105, 103, 108]
    assert train["v"][:, 0].tolist() == [105, 103, 108]
    assert not list((tmp_path).rglob("*.partial"))


def test_shard_spec_splits_work():
    assert ShardSpec.parse("1/3") == ShardSpec(1, 3)
    with pytest.raises(CacheError):
        ShardSpec.parse("3/3")


def test_two_workers_cover_all_parts(tmp_path):
    layout = Cache(tmp_path)
    t = _table()
    splits = _splits(t)
    w = _writer(layout, t, splits)
    a, b = w.pending(ShardSpec(0, 2)), w.pending(ShardSpec(1, 2))
    assert {(s.split, s.part) for s in a}.isdisjoint({(s.split, s.part) for s in b})
    assert len(a) + len(b) == len(w.pending())


def test_manifest_mismatch_is_refused(tmp_path):
    layout = Cache(tmp_path)
    t = _table()
    splits = _splits(t)
    _writer(layout, t, splits).check_or_create_manifest()
    with pytest.raises(CacheError, match="--overwrite"):
        _writer(layout, t, splits, cfg={"k": 2}).check_or_create_manifest()
    manifest = layout.manifest_path("toy", "enc")
    data = json.loads(manifest.read_text())
    data["schema_version"] = CACHE_SCHEMA_VERSION + 1
    manifest.write_text(json.dumps(data))
    with pytest.raises(CacheError, match="schema version"):
        _writer(layout, t, splits).check_or_create_manifest()


def test_reader_aligns_encoders_and_drops_failed_pairs(tmp_path):
    layout = Cache(tmp_path)
    t = _table()
    splits = _splits(t)
    write_items(layout, t, {})
    write_splits(layout, t.dataset, splits, {})
    img = _writer(layout, t, splits, "img")
    img.check_or_create_manifest()
    _fill(img, fail={104})  # 104's image failed to decode
    txt = _writer(layout, t, splits, "txt", columns={"bow": ColumnSpec(2, "uint8", "text")}, shard_size=5)
    txt.check_or_create_manifest()
    _fill(txt, fn=lambda ids: np.stack([ids % 7, ids % 5], 1))
    image_refs = layout.dataset("toy").feature_refs("img", "image")
    text_refs = layout.dataset("toy").feature_refs("txt:bow", "text")
    db = layout.dataset("toy").features("database", image_refs, text_refs)
    assert 104 not in db.item_id.tolist() and db.dropped.tolist() == [104]
    assert db.image["img:v"][:, 0].tolist() == db.item_id.tolist()  # image rows aligned
    assert db.text["txt:bow"][:, 0].tolist() == (db.item_id % 7).tolist()  # text rows aligned
    row = {int(i): r for r, i in enumerate(t.item_id)}
    assert np.array_equal(db.labels, t.labels[[row[int(i)] for i in db.item_id]])
    with pytest.raises(CacheError, match="text feature|image feature"):
        layout.dataset("toy").feature_refs("txt", "image")
    with pytest.raises(CacheError, match="extract them with `cmh extract --dataset toy --encoders clip`"):
        layout.dataset("toy").feature_refs("clip", "image")
    with pytest.raises(CacheError, match="no split 'validation'"):
        layout.dataset("toy").features("validation", image_refs, text_refs)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    import pyarrow as pa

    import pipeline.ground.store.parquet as pqmod

    path = tmp_path / "a.parquet"
    write_table_atomic(pa.table({"x": [1, 2]}), path, metadata={"v": 1})

    def half_written(table, where, **kw):  # a killed or failing writer leaves half a file behind
        open(where, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(pqmod.pq, "write_table", half_written)
    with pytest.raises(OSError, match="disk full"):
        write_table_atomic(pa.table({"x": [9]}), path)
    monkeypatch.undo()
    assert pq.read_table(path).column("x").to_pylist() == [1, 2]
    assert read_metadata(path) == {"v": 1}
    assert not list(tmp_path.glob("*.partial"))


def test_validate_catches_misalignment():
    t = _table()
    t.labels = t.labels[:-1]
    with pytest.raises(DataError, match="labels"):
        t.validate()
    t = _table()
    t.item_id[1] = t.item_id[0]
    with pytest.raises(DataError, match="duplicate"):
        t.validate()


@pytest.mark.parametrize("reader", ["splits", "metadata", "json"])
def test_a_fifo_in_place_of_a_cache_file_is_refused_without_opening_it(tmp_path, reader):
    import os
    import signal

    from pipeline.ground.store.parquet import read_json

    layout = Cache(tmp_path)
    t = _table()
    write_items(layout, t, {})
    path = layout.splits_path("toy")
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    read = {"splits": lambda: read_splits(layout, "toy"), "metadata": lambda: read_metadata(path),
            "json": lambda: read_json(path)}[reader]
    def hung(*_):
        raise TimeoutError("the reader opened the FIFO and blocked")

    previous = signal.signal(signal.SIGALRM, hung)  # a blocked open fails the test instead of hanging the suite
    signal.alarm(20)
    try:
        with pytest.raises(CacheError, match="not a regular file"):
            read()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
