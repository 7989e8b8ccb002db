"""Read a dataset source once and write its item table and split membership into the cache.

Every later stage reads these two files, so every encoder and every method sees the same items in the
same splits. No image is decoded here: the first image encoder's pass finds the pairs whose image
fails, and ``stages.prepare.images`` drops them from the item table (extraction calls it). A second extraction into the same cache re-uses them; one that asks for different data
or different splits is refused with the fix, never silently mixed.
"""
from __future__ import annotations

import difflib
import inspect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stages.prepare.datasets import get_dataset
from stages.prepare.datasets.base import ItemTable
from pipeline.ground.errors import CacheError, ConfigError, DataError
from stages.prepare.fingerprint import FINGERPRINT_KIND, origin_fingerprint
from stages.prepare.images import IMAGE_PASS
from pipeline.ground.paths import expand_home
from pipeline.ground.settings import data_root
from pipeline.ground.store.items import Splits, items_meta, read_items, read_splits, splits_meta, write_items, write_splits
from pipeline.ground.store.layout import CacheLayout
from pipeline.ground.store.lock import DatasetLock

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
    n_validation: int | None = None  # None: as many as the query split (stages.prepare.splits)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def cache_name(self) -> str:
        if self.name:
            return self.name
        return f"{self.dataset}-n{self.limit}" if self.limit else self.dataset


def resolve_data_dir(req: DatasetRequest) -> Path:
    entry = get_dataset(req.dataset)
    if req.data_dir is not None:
        path = expand_home(req.data_dir)  # make passes DATA_DIR quoted: the shell leaves "~" as it is
    else:
        default = entry.extra.get("default_dir")
        if default is None:
            raise DataError(f"dataset {entry.name!r} needs DATA_DIR=<folder> (--data-dir)")
        path = Path(default) if Path(default).is_absolute() else data_root() / default
    if entry.name != "demo" and not path.exists():
        raise DataError(f"DATA_DIR {path} does not exist: pass DATA_DIR=<folder with the {entry.name} files> "
                        f"(or set CMH_DATA_ROOT to the folder that holds the shared datasets)")
    return path


def check_request(req: DatasetRequest) -> None:
    """ConfigError for a request that cannot mean what it says, before any data is read."""
    if req.limit is not None and (isinstance(req.limit, bool) or not isinstance(req.limit, int) or req.limit < 1):
        raise ConfigError(f"LIMIT (--limit) must be a whole number of pairs >= 1, got {req.limit!r}; "
                          f"leave it out to take every pair")
    if req.seed < 0:
        raise ConfigError(f"split seed {req.seed}: give a whole number >= 0")
    for what, value, default in (("--n-query", req.n_query, "the protocol's size"),
                                 ("--n-train", req.n_train, "the protocol's size"),
                                 ("--validation", req.n_validation, "the query split's size")):
        if value is not None and value < 1:  # an empty split, validation included, scores nothing
            raise ConfigError(f"{what} must be >= 1, got {value}; leave it out for {default}")
    check_dataset_options(req.dataset, req.options)


def check_dataset_options(dataset: str, options: dict[str, Any]) -> None:
    """ConfigError naming the close match for an option the source does not take (instead of a TypeError)."""
    entry = get_dataset(dataset)
    params = inspect.signature(entry.builder).parameters
    valid = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    for key, value in options.items():
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean dataset.{close[0]}? " if close else ""
            raise ConfigError(f"dataset {entry.name!r} has no option {key!r}: {hint}its options: "
                              f"{', '.join(valid) or 'none'}")
        default = params[key].default
        # a scalar default fixes the type: "hr=maybe" must not read as true, nor "seed=1.5" as a seed
        for kind, name in ((bool, "true or false"), (int, "a whole number"), (float, "a number")):
            if isinstance(default, kind) and default is not None:
                ok = isinstance(value, bool) if kind is bool else (
                    isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool))
                if not ok:
                    raise ConfigError(f"dataset option {key}={value!r}: expected {name}, e.g. "
                                      f"-o dataset.{key}={json.dumps(default)}")
                break


def prepare_dataset(layout: CacheLayout, req: DatasetRequest, overwrite: bool = False,
                    lock: DatasetLock | None = None) -> tuple[ItemTable, Splits]:
    """The dataset's items and splits: read from the source, then checked against the cache or written to it.

    They are checked and written under the dataset's lock (``pipeline.ground.store.lock``), which is
    left held shared when ``lock`` is given, so the caller extracts features of exactly these items;
    without ``lock`` it is taken and released here."""
    from stages.prepare.splits import default_protocol

    check_request(req)
    name = req.cache_name
    entry = get_dataset(req.dataset)
    data_dir = resolve_data_dir(req)
    try:
        table = entry.builder(data_dir, **req.options)
    except TypeError as exc:  # a wrongly typed option value (the names were checked above)
        raise ConfigError(f"dataset {entry.name!r} options {req.options}: {exc}") from None
    if req.limit:
        if req.limit > len(table):
            log.warning("LIMIT=%d is more than the %d pairs of %s: taking all of them", req.limit, len(table), data_dir)
        table = table.subset(np.arange(min(req.limit, len(table))))
    table.dataset = name
    table.origin_fingerprint = origin_fingerprint(table, data_dir, entry.name, req.options)
    protocol = req.protocol or default_protocol(req.dataset)
    split_params = {"protocol": protocol, "seed": req.seed, "n_query": req.n_query, "n_train": req.n_train,
                    "n_validation": req.n_validation}
    own = lock is None
    lock = DatasetLock(layout, name) if own else lock
    try:
        lock.shared()
        cached = layout.items_path(name).exists() and not overwrite
        if not cached and not lock.exclusive():
            # another process holds the dataset: it may be writing these very items (a --shard worker started
            # at the same moment); once they are written they are checked like any cached items
            lock.shared()
            if overwrite or not layout.items_path(name).exists():
                raise lock.busy(" (or write to another --name or CACHE=)")
        if layout.items_path(name).exists() and not overwrite:  # also when another process wrote it meanwhile
            lock.shared()
            return _cached(layout, name, table, data_dir, split_params)
        written = _write(layout, req, table, data_dir, protocol, split_params)
        lock.shared()  # the conversion lets another writer in for a moment: check nobody did
        if items_meta(layout, name).get("fingerprint") != written[0].fingerprint():
            raise CacheError(f"another `cmh extract` replaced dataset {name!r} in this cache while this one wrote it; "
                             f"run this command again once it has finished (or use another --name or CACHE=)")
        return written
    finally:
        if own:
            lock.release()


def _cached(layout: CacheLayout, name: str, table: ItemTable, data_dir: Path,
            split_params: dict[str, Any]) -> tuple[ItemTable, Splits]:
    """The cached items and splits, when they are the ones requested; CacheError naming the fix otherwise."""
    cached = items_meta(layout, name)
    if cached.get("fingerprint_kind") != FINGERPRINT_KIND:
        raise CacheError(
            f"the cache {layout.dataset_dir(name)} was written by an older cmh whose fingerprint covered file "
            f"names only, so it cannot tell whether {data_dir} still holds the same images and options: pass "
            f"--overwrite to re-read the data and rebuild its features, or use another CACHE= "
            f"(training on the existing cache still works)"
        )
    if cached.get("fingerprint") != table.fingerprint():
        raise CacheError(
            f"the cache {layout.dataset_dir(name)} holds dataset {name!r} read from {cached.get('source')}, "
            f"which differs from {data_dir} (fingerprint {cached.get('fingerprint')} vs {table.fingerprint()}); "
            f"use another CACHE= or --name, or pass --overwrite to replace it (its features are then rebuilt)"
        )
    if not layout.splits_path(name).exists():
        raise CacheError(f"dataset {name!r} has its items but no {layout.splits_path(name).name} (deleted, or an "
                         f"interrupted extraction): pass --overwrite to draw the splits and extract again")
    cached_params = splits_meta(layout, name).get("params")
    if cached_params != split_params:
        raise CacheError(
            f"dataset {name!r} is cached with splits {cached_params}, but {split_params} were requested; "
            f"every method must see the same splits, so use another --name/CACHE= or --overwrite"
        )
    return read_items(layout, name), read_splits(layout, name)


def _write(layout: CacheLayout, req: DatasetRequest, table: ItemTable, data_dir: Path, protocol: str,
           split_params: dict[str, Any]) -> tuple[ItemTable, Splits]:
    """Draw the splits and write the item table and split membership (under the exclusive lock)."""
    from stages.prepare.splits import make_splits

    name = table.dataset
    result = make_splits(table, protocol=protocol, seed=req.seed, n_query=req.n_query, n_train=req.n_train,
                         n_validation=req.n_validation)
    splits, notes = (result.splits, list(getattr(result, "notes", []))) if hasattr(result, "splits") else (result, [])
    for note in notes:
        log.warning("splits: %s", note)
    if table.skipped:
        log.warning("%d pair(s) skipped while reading %s (recorded in the item table metadata)",
                    len(table.skipped), data_dir)
    write_items(layout, table, {"data_dir": str(data_dir), "limit": req.limit, "source_dataset": req.dataset,
                                "options": req.options, "fingerprint_kind": FINGERPRINT_KIND,
                                IMAGE_PASS: "pending"})
    write_splits(layout, name, splits, {"params": split_params, "notes": notes, "dataset": name})
    return table, {k: np.asarray(v, dtype=np.int64) for k, v in splits.items()}
