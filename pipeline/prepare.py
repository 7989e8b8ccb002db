"""Read a dataset source once and write its item table and split membership into the cache.

Every later stage reads these two files, so every encoder and every method sees the same items in the
same splits. A second extraction into the same cache re-uses them; one that asks for different data
or different splits is refused with the fix, never silently mixed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets import get_dataset
from pipeline.datasets.base import ItemTable
from pipeline.errors import CacheError, DataError
from pipeline.settings import data_root
from pipeline.store.items import Splits, items_meta, read_items, read_splits, splits_meta, write_items, write_splits
from pipeline.store.layout import CacheLayout

log = logging.getLogger(__name__)


@dataclass
class DatasetRequest:
    dataset: str  # source name (mirflickr, nuswide, coco, pairs, demo)
    data_dir: Path | None = None
    limit: int | None = None  # first N pairs, for quick runs
    name: str | None = None  # cache key; default <dataset>[-n<limit>]
    protocol: str | None = None  # split protocol; default per dataset
    seed: int = 1
    n_query: int | None = None
    n_train: int | None = None
    n_validation: int | None = None  # None: as many as the query split (pipeline.splits)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def cache_name(self) -> str:
        if self.name:
            return self.name
        return f"{self.dataset}-n{self.limit}" if self.limit else self.dataset


def resolve_data_dir(req: DatasetRequest) -> Path:
    entry = get_dataset(req.dataset)
    if req.data_dir is not None:
        path = Path(req.data_dir)
    else:
        default = entry.extra.get("default_dir")
        if default is None:
            raise DataError(f"dataset {entry.name!r} needs DATA_DIR=<folder> (--data-dir)")
        path = Path(default) if Path(default).is_absolute() else data_root() / default
    if entry.name != "demo" and not path.exists():
        raise DataError(f"DATA_DIR {path} does not exist: pass DATA_DIR=<folder with the {entry.name} files> "
                        f"(or set CMH_DATA_ROOT to the folder that holds the shared datasets)")
    return path


def prepare_dataset(layout: CacheLayout, req: DatasetRequest, overwrite: bool = False) -> tuple[ItemTable, Splits]:
    from pipeline.splits import default_protocol, make_splits

    name = req.cache_name
    entry = get_dataset(req.dataset)
    data_dir = resolve_data_dir(req)
    table = entry.builder(data_dir, **req.options)
    if req.limit:
        if req.limit > len(table):
            log.warning("LIMIT=%d is more than the %d pairs of %s: taking all of them", req.limit, len(table), data_dir)
        table = table.subset(np.arange(min(req.limit, len(table))))
    table.dataset = name
    protocol = req.protocol or default_protocol(req.dataset)
    split_params = {"protocol": protocol, "seed": req.seed, "n_query": req.n_query, "n_train": req.n_train,
                    "n_validation": req.n_validation}

    if layout.items_path(name).exists() and not overwrite:
        cached = items_meta(layout, name)
        if cached.get("fingerprint") != table.fingerprint():
            raise CacheError(
                f"the cache {layout.dataset_dir(name)} holds dataset {name!r} read from {cached.get('source')}, "
                f"which differs from {data_dir} (fingerprint {cached.get('fingerprint')} vs {table.fingerprint()}); "
                f"use another CACHE= or --name, or pass --overwrite to replace it (its features are then rebuilt)"
            )
        cached_params = splits_meta(layout, name).get("params")
        if cached_params != split_params:
            raise CacheError(
                f"dataset {name!r} is cached with splits {cached_params}, but {split_params} were requested; "
                f"every method must see the same splits, so use another --name/CACHE= or --overwrite"
            )
        return read_items(layout, name), read_splits(layout, name)

    result = make_splits(table, protocol=protocol, seed=req.seed, n_query=req.n_query, n_train=req.n_train,
                         n_validation=req.n_validation)
    splits, notes = (result.splits, list(getattr(result, "notes", []))) if hasattr(result, "splits") else (result, [])
    for note in notes:
        log.warning("splits: %s", note)
    if table.skipped:
        log.warning("%d pair(s) skipped while reading %s (recorded in the item table metadata)",
                    len(table.skipped), data_dir)
    write_items(layout, table, {"data_dir": str(data_dir), "limit": req.limit, "source_dataset": req.dataset})
    write_splits(layout, name, splits, {"params": split_params, "notes": notes, "dataset": name})
    return table, {k: np.asarray(v, dtype=np.int64) for k, v in splits.items()}
