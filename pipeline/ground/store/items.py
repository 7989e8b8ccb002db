"""The dataset's item table and its split membership, written once into the cache.

Later stages read these instead of the raw dataset, so every method sees the same items and splits.

The splits are drawn before any image is decoded; a pair whose image then fails to decode is removed
from the item table (``drop_items``, recorded in its ``skipped`` list) while ``splits.parquet`` keeps
the membership as drawn, because it is the layout of every feature shard (planned positions, the
manifests' ``splits_fingerprint``). Readers see ``kept_splits``: the members the item table still holds.
"""
from __future__ import annotations

import contextlib
import json
import re
import shlex
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from pipeline.ground.versions import CACHE_SCHEMA_VERSION
from pipeline.ground.item_table import ItemTable
from pipeline.ground.errors import CacheError
from pipeline.ground.store.lock import held_alone
from pipeline.ground.store.layout import CacheLayout
from pipeline.ground.store.near import near_matches
from pipeline.ground.store.parquet import (arrow_to_vectors, check_record, id_column_problem, read_metadata, read_table,
                                           vector_column_problem, vectors_to_arrow, write_table_atomic)

#: How a damaged items/splits file is repaired.
_FIX = "re-run `cmh extract` for this dataset with --overwrite"

_LIMITED = re.compile(r"^(?P<source>.+)-n(?P<limit>[0-9]+)$")

Splits = dict[str, np.ndarray]  # split name -> item ids, in split order


def write_items(layout: CacheLayout, table: ItemTable, meta: Mapping[str, Any]) -> None:
    cols: dict[str, Any] = {
        "item_id": pa.array(table.item_id, pa.int64()),
        "image": pa.array(table.image, pa.string()),
        "texts": pa.array(table.texts, pa.list_(pa.string())),
        "labels": vectors_to_arrow(table.labels.astype(np.uint8)),
    }
    if table.bow is not None:
        cols["bow"] = vectors_to_arrow(np.asarray(table.bow, dtype=np.uint8))
    full_meta = {
        "schema_version": CACHE_SCHEMA_VERSION,
        "dataset": table.dataset,
        "label_names": table.label_names,
        "text_kind": table.text_kind,
        "source": table.source,
        "vocabulary": table.vocabulary,
        "fingerprint": table.fingerprint(),
        "skipped": [[str(i), r] for i, r in table.skipped],
        "notes": list(getattr(table, "notes", [])),
        **meta,
    }
    write_table_atomic(pa.table(cols), layout.items_path(table.dataset), metadata=full_meta,
                       vector_columns=["labels", "bow"])


def items_meta(layout: CacheLayout, dataset: str) -> dict[str, Any]:
    path = layout.items_path(dataset)
    if not path.exists():
        close = near_matches(dataset, _cached_names(layout))
        if close:  # a LIMIT= cache is another name: use it rather than extract everything again
            limited = [m for m in (_LIMITED.match(c) for c in close) if m and m["source"] == dataset]
            make = f", or LIMIT={limited[0]['limit']} with make" if limited else ""
            raise CacheError(f"no cached dataset {dataset!r} under {layout.root}; cached: {', '.join(close)}: pass "
                             f"that name (--dataset {close[0]}{make}), or extract {dataset!r} with "
                             f"`{extract_command(layout, dataset)}`")
        raise CacheError(
            f"no cached dataset {dataset!r} under {layout.root}: extract it first (`{extract_command(layout, dataset)}`"
            f", or `make extract DATASET=...`), or point CACHE= at the cache that holds it"
        )
    meta = read_metadata(path, _FIX)
    check_schema_version(meta, path)
    return check_record(meta, path, _FIX, ITEMS_META_FIELDS)


#: What every reader of the item table takes from its metadata, with the JSON types.
ITEMS_META_FIELDS: dict[str, type] = {"dataset": str, "label_names": list, "text_kind": str, "source": str}


def _cached_names(layout: CacheLayout) -> list[str]:
    base = layout.root / "datasets"
    if not base.is_dir():
        return []
    return [p.name.split("=", 1)[1] for p in base.iterdir()
            if p.name.startswith("dataset=") and (p / "items.parquet").exists()]


def check_schema_version(meta: Mapping[str, Any], path: Any) -> None:
    found = meta.get("schema_version")
    if found != CACHE_SCHEMA_VERSION:
        raise CacheError(
            f"{path} was written with cache schema version {found}, this code reads version "
            f"{CACHE_SCHEMA_VERSION}: re-run `cmh extract` into a new CACHE= directory (or delete the old one)"
        )


def read_items(layout: CacheLayout, dataset: str) -> ItemTable:
    meta = items_meta(layout, dataset)
    path = layout.items_path(dataset)
    t = read_table(path, fix=_FIX)
    problem = _items_problem(t)
    if problem:
        raise CacheError(f"{path} is not an item table cmh wrote: it {problem}; {_FIX}")
    return ItemTable(
        dataset=meta["dataset"],
        item_id=t.column("item_id").to_numpy(),
        image=t.column("image").to_pylist(),
        texts=t.column("texts").to_pylist(),
        labels=arrow_to_vectors(t.column("labels")),
        label_names=list(meta["label_names"]),
        text_kind=meta["text_kind"],
        source=meta["source"],
        vocabulary=meta.get("vocabulary"),
        bow=arrow_to_vectors(t.column("bow")) if "bow" in t.column_names else None,
        skipped=[tuple(s) for s in meta.get("skipped", [])],
        notes=list(meta.get("notes", [])),
        origin_fingerprint=meta.get("fingerprint"),
    )


def _items_problem(t: pa.Table) -> str | None:
    """Why ``t`` is not an item table as ``write_items`` writes it (columns, their types, ids once each), or None."""
    kinds = {"image": pa.types.is_string, "texts": lambda k: pa.types.is_list(k) and pa.types.is_string(k.value_type)}
    for name, is_kind in kinds.items():
        if name not in t.column_names:
            return f"has no column {name!r}"
        if not is_kind(t.schema.field(name).type):
            return f"has column {name!r} of type {t.schema.field(name).type}"
    return (id_column_problem(t) or vector_column_problem(t, "labels")
            or ("bow" in t.column_names and vector_column_problem(t, "bow")) or None)


def skipped_ids(items: ItemTable) -> set[int]:
    """Ids of the pairs the item table records as dropped (the metadata stores them as strings)."""
    out = set()
    for i, _ in items.skipped:
        with contextlib.suppress(TypeError, ValueError):
            out.add(int(i))
    return out


def kept_splits(splits: Splits, items: ItemTable) -> Splits:
    """``splits`` without the members whose pair the item table dropped after the splits were drawn.

    A member that is neither in the table nor recorded as dropped means the two files disagree: CacheError."""
    have = np.sort(np.asarray(items.item_id, dtype=np.int64))
    out: Splits = {}
    dropped: set[int] | None = None
    for name, members in splits.items():
        members = np.asarray(members, dtype=np.int64)
        at = np.minimum(np.searchsorted(have, members), max(len(have) - 1, 0))
        known = have[at] == members if len(have) else np.zeros(len(members), dtype=bool)
        if not known.all():
            dropped = skipped_ids(items) if dropped is None else dropped
            stray = [int(i) for i in members[~known] if int(i) not in dropped]
            if stray:
                raise CacheError(f"split {name!r} of {items.dataset!r} names {len(stray)} item id(s) that are not in its "
                                 f"item table, e.g. {stray[:5]}: {_FIX}")
        out[name] = members[known]
    return out


def drop_items(layout: CacheLayout, dataset: str, failures: Mapping[int, str], *,
               meta: Mapping[str, Any] | None = None) -> tuple[ItemTable, int]:
    """Remove the pairs ``failures`` names (id -> reason) from the cached item table, recording each in its
    ``skipped`` list; returns the table and how many were newly dropped.

    The fingerprint stays (it names the source the table was read from), and ``splits.parquet`` is left as
    it was drawn (see the module docstring). ``meta`` entries are merged into the table's metadata. Two
    ``--shard`` workers may drop at once: the read-modify-write is serialised by a lock of its own."""
    # held for the rewrite of one file: well under a second
    with held_alone(layout.lock_path(dataset).with_suffix(".items-lock")):
        old_meta = items_meta(layout, dataset)
        table = read_items(layout, dataset)
        new = {int(i): why for i, why in failures.items()}
        gone = np.isin(table.item_id, np.fromiter(new, dtype=np.int64, count=len(new)))
        changed = {k: v for k, v in (meta or {}).items() if old_meta.get(k) != v}
        if not gone.any() and not changed:
            return table, 0
        kept = table.subset(np.flatnonzero(~gone))
        kept.skipped = list(table.skipped) + [(int(i), new[int(i)]) for i in table.item_id[gone]]
        keep_meta = {k: v for k, v in old_meta.items()
                     if k not in {"schema_version", "dataset", "label_names", "text_kind", "source", "vocabulary",
                                  "fingerprint", "skipped", "notes"}}
        write_items(layout, kept, {**keep_meta, **(meta or {})})
        return kept, int(gone.sum())


def write_splits(layout: CacheLayout, dataset: str, splits: Splits, meta: Mapping[str, Any]) -> None:
    ids = [np.asarray(members, dtype=np.int64) for members in splits.values()]
    # Split names as dictionary indices, cast to plain strings: no Python list of one string per item
    # (10M items), and the same column as before.
    which = np.repeat(np.arange(len(ids), dtype=np.int32), [len(v) for v in ids])
    names = pa.DictionaryArray.from_arrays(pa.array(which, pa.int32()), pa.array(list(splits), pa.string()))
    table = pa.table({
        "item_id": pa.array(np.concatenate(ids) if ids else np.zeros(0, np.int64)),
        "split": names.cast(pa.string()),
        "position": pa.array(np.concatenate([np.arange(len(v), dtype=np.int64) for v in ids])
                             if ids else np.zeros(0, np.int64)),
    })
    sizes = {k: int(len(v)) for k, v in splits.items()}
    write_table_atomic(table, layout.splits_path(dataset),
                       metadata={"schema_version": CACHE_SCHEMA_VERSION, "sizes": sizes, **meta})


def extract_command(layout: CacheLayout, dataset: str, *, encoders: Sequence[str] = (),
                    overwrite: bool = False) -> str:
    """The ``cmh extract`` command that (re)writes the cached dataset ``dataset``.

    A cache name is not a source name (``mirflickr-n300`` is ``--dataset mirflickr --limit 300``), so
    the command is rebuilt from what the item table recorded: source, folder, limit, options and name.
    Without a readable item table, a ``<source>-n<N>`` name is read as a LIMIT= name."""
    try:
        meta = read_metadata(layout.items_path(dataset)) if layout.items_path(dataset).exists() else {}
    except CacheError:
        meta = {}
    source, limit = meta.get("source_dataset"), meta.get("limit")
    if source is None:
        match = _LIMITED.match(dataset)
        source, limit = (match["source"], int(match["limit"])) if match else (dataset, None)
    parts = ["cmh extract", "--dataset", str(source)]
    if meta.get("data_dir"):
        parts += ["--data-dir", str(meta["data_dir"])]
    if limit:
        parts += ["--limit", str(limit)]
    if dataset != (f"{source}-n{limit}" if limit else source):
        parts += ["--name", dataset]
    params = _split_params(layout, dataset)
    if params.get("seed") not in (None, 1):
        parts += ["--seed", str(params["seed"])]
    for key, option in (("n_query", "--n-query"), ("n_train", "--n-train"), ("n_validation", "--validation")):
        if params.get(key) is not None:
            parts += [option, str(params[key])]
    for key, value in sorted((meta.get("options") or {}).items()):
        parts += ["-o", f"dataset.{key}={value if isinstance(value, str) else json.dumps(value)}"]
    if encoders:
        parts += ["--encoders", ",".join(sorted({e.split(".")[0] for e in encoders}))]
    if overwrite:
        parts.append("--overwrite")
    return " ".join(parts[:1] + [shlex.quote(p) for p in parts[1:]])


def _split_params(layout: CacheLayout, dataset: str) -> dict[str, Any]:
    try:
        path = layout.splits_path(dataset)
        return dict((read_metadata(path).get("params") or {}) if path.exists() else {})
    except CacheError:
        return {}


def _existing_splits_path(layout: CacheLayout, dataset: str) -> Path:
    """The split table's path; a missing one is refused with the extract command that writes it again."""
    path = layout.splits_path(dataset)
    if not path.exists():
        if not layout.items_path(dataset).exists():
            items_meta(layout, dataset)  # a dataset that is not cached at all is said as such, with the near names
        raise CacheError(f"no split membership for {dataset!r} at {path} (deleted, or an interrupted extraction): "
                         f"write it again with `{extract_command(layout, dataset, overwrite=True)}`")
    return path


def read_splits(layout: CacheLayout, dataset: str) -> Splits:
    path = _existing_splits_path(layout, dataset)
    check_schema_version(read_metadata(path, _FIX), path)
    t = read_table(path, fix=_FIX)
    try:
        if t.column("item_id").null_count or t.column("position").null_count:
            raise ValueError("an item id or position is missing")
        item = t.column("item_id").to_numpy().astype(np.int64, copy=False)
        pos = t.column("position").to_numpy()
        split = t.column("split").combine_chunks().dictionary_encode()
    except (KeyError, pa.ArrowException, TypeError, ValueError) as exc:
        raise CacheError(f"{path} is not a split table ({exc}): {_FIX}") from None
    if split.null_count or pa.types.is_null(split.type.value_type):
        raise CacheError(f"{path} has rows without a split name: {_FIX}")
    which = split.indices.to_numpy()
    out: Splits = {}
    for k, name in enumerate(split.dictionary.to_pylist()):  # in order of first appearance, as written
        rows = np.flatnonzero(which == k)
        out[name] = item[rows[np.argsort(pos[rows], kind="stable")]]
    return out


def splits_meta(layout: CacheLayout, dataset: str) -> dict[str, Any]:
    return read_metadata(_existing_splits_path(layout, dataset), _FIX)

