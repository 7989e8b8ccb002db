"""The cache handle: one object that owns every artifact under a cache root.

``Cache(root)`` is what the other layers hold instead of a bare path. It hands out

* ``.dataset(name)``: a dataset's items, splits, encoder manifests and aligned features, each read
  from disk once per handle (a training request reads ``items.parquet`` once, not once per split);
* ``.run(run_id)`` / ``.find_run(id_or_path)``: a run directory (``RunDir``) and its artifacts;
* ``.runs(...)`` and ``.report_rows(...)``: the only walk over ``runs/`` and the one reader of report
  rows across runs (DuckDB's ``union_by_name``, since report schemas grow between code versions).

Nothing outside ``pipeline.ground.store`` spells a file name under the root, builds or parses a run
id, or globs the cache.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa

from pipeline.ground.errors import CacheError
from pipeline.ground.item_table import ItemTable
from pipeline.ground.store.aligned import AlignedFeatures, FeatureRef, parse_feature_spec, read_aligned
from pipeline.ground.store.features import read_manifest, splits_fingerprint
from pipeline.ground.store.items import Splits, items_meta, kept_splits, read_items, read_splits, splits_meta
from pipeline.ground.store.layout import CacheLayout
from pipeline.ground.store.near import near_matches
from pipeline.ground.store.lineage import DAMAGED_RECORD, MISSING_RECORD, data_change, stale_run_error
from pipeline.ground.store.runs import CONFIG_FILE, REPORT_FILE, RunDir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cache(CacheLayout):
    """A cache root and everything under it (see the module docstring). It is also the ``CacheLayout``
    (the path speller) that the store's readers and writers take."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def at(cls, override: str | os.PathLike | None = None) -> "Cache":
        """The cache at ``override``, else ``$CMH_CACHE``, else the default (``pipeline.ground.settings``)."""
        from pipeline.ground.settings import cache_root

        return cls(cache_root(override))

    @property
    def layout(self) -> CacheLayout:
        return self

    @property
    def reports_dir(self) -> Path:
        """Where cross-run tables, figures and pages go unless told otherwise."""
        return self.root / "reports"

    # -- datasets -------------------------------------------------------------------------------
    def dataset(self, name: str) -> "DatasetCache":
        return DatasetCache(self.layout, name)

    def datasets(self) -> list[str]:
        """Names of the datasets with an item table in this cache."""
        base = self.root / "datasets"
        if not base.is_dir():
            return []
        return sorted(p.name.split("=", 1)[1] for p in base.iterdir()
                      if p.name.startswith("dataset=") and (p / "items.parquet").exists())

    # -- runs -----------------------------------------------------------------------------------
    def run(self, run_id: str) -> RunDir:
        return RunDir.of(self.layout, run_id)

    def find_run(self, run: str) -> RunDir:
        """A run named by its id or by its folder; CacheError listing the closest runs otherwise."""
        return RunDir.find(self.layout, run)

    def data_change(self, run: RunDir) -> str | None:
        """Why ``run`` was trained on other data than its dataset holds now, or None (``lineage``)."""
        if not run.config_path.exists():
            return MISSING_RECORD
        config = run.read_config()
        return data_change(config, self.dataset(config["dataset"])) if config.get("dataset") else None

    def require_current(self, run: RunDir) -> dict[str, Any]:
        """The run's config; CacheError naming the retrain command when its data changed since it was trained."""
        config = run.read_config()
        reason = data_change(config, self.dataset(config["dataset"])) if config.get("dataset") else None
        if reason:
            raise stale_run_error(run.run_id, config, reason)
        return config

    def split_current(self, runs: Sequence[RunDir]) -> tuple[list[RunDir], list[tuple[RunDir, str]]]:
        """``runs`` as (current, [(stale run, why), ...]); a run's dataset handle is shared by its siblings."""
        handles: dict[str, DatasetCache] = {}
        current, stale = [], []
        for run in runs:
            if not run.config_path.exists():
                stale.append((run, MISSING_RECORD))
                continue
            try:
                config = run.read_config()
            except CacheError:
                stale.append((run, DAMAGED_RECORD))
                continue
            name = config.get("dataset")
            reason = data_change(config, handles.setdefault(name, self.dataset(name))) if name else None
            (stale.append((run, reason)) if reason else current.append(run))
        return current, stale

    def runs(self, dataset: str | None = None, *, complete: bool = True) -> list[RunDir]:
        """Run folders (with a report when ``complete``), of ``dataset`` only when given, by id."""
        out = []
        for path in self.layout.run_paths():  # not the tombstones of a `cmh rm` under way
            marker = path / (REPORT_FILE if complete else CONFIG_FILE)
            if not marker.exists():
                continue
            run = RunDir(path)
            if _copied(run):
                continue
            if dataset is not None and run.dataset != dataset:  # not by name: mirflickr-n2000-... starts alike
                continue
            out.append(run)
        return out

    def report_rows(self, dataset: str | None = None, run_ids: Sequence[str] | None = None) -> pa.Table:
        """Every report row of the complete runs (of ``dataset``; of ``run_ids`` only when given)."""
        runs = self.runs(dataset)
        if run_ids is not None:
            wanted = set(run_ids)
            runs = [r for r in runs if r.run_id in wanted]
        if not runs:
            where = f" of {dataset!r}" if dataset else ""
            raise CacheError(f"no run reports{where} under {self.layout.runs_dir()}; train a run first "
                             f"(`cmh train`, `make train`){_cached_hint(self, dataset)}")
        return read_report_rows([r.report_path for r in runs])


def _copied(run: RunDir) -> bool:
    """Whether ``run`` is a folder whose name is not the run id its config.json records (a backup copy such as
    ``<run>.bak``, or a renamed run), said once per process. Its report rows carry the recorded id, so a table
    would count that run twice, as two seeds of one cell."""
    try:
        recorded = run.read_config().get("run_id") if run.config_path.exists() else None
    except CacheError:
        return False  # damaged: the readers name it
    if not isinstance(recorded, str) or recorded == run.run_id:
        return False
    if run.path not in _COPIES_SAID:  # a report walks runs/ more than once
        _COPIES_SAID.add(run.path)
        log.warning("left out: %s holds run %s under another name (a copy?); rename it back or move it out of %s",
                    run.path, recorded, run.path.parent)
    return True


_COPIES_SAID: set[Path] = set()


def _cached_hint(cache: Cache, dataset: str | None) -> str:
    """``; runs are cached for: ...`` naming the datasets that do have runs (a LIMIT= run is another name)."""
    have = sorted({r.dataset for r in cache.runs()} - {None})
    if not have:
        return ""
    close = near_matches(dataset, have) if dataset else []
    return f"; runs are cached for: {', '.join(close or have)}"


def read_report_rows(files: Sequence[Path]) -> pa.Table:
    """Report rows of several runs (``report.parquet`` files, or their copies under ``results/``) as one
    table with the union of their columns, plus ``report_file``; CacheError naming a damaged file."""
    import duckdb

    from pipeline.ground.store.parquet import read_metadata

    if not files:
        raise CacheError("no report files to read; train a run first (`cmh train`)")
    for path in files:
        read_metadata(path, "train that run again with `cmh train ... --force`, or delete its folder")
    con = duckdb.connect()
    try:
        table = con.sql("SELECT * FROM read_parquet($files, union_by_name = true, filename = true)",
                        params={"files": [str(f) for f in files]}).to_arrow_table()
        return table.rename_columns(["report_file" if n == "filename" else n for n in table.column_names])
    except duckdb.Error as exc:
        raise CacheError(f"cannot read the run reports ({str(exc).splitlines()[0]}): train the damaged runs again "
                         f"with `cmh train ... --force`") from None
    finally:
        con.close()


@dataclass
class DatasetCache:
    """One cached dataset; each file is read at most once per handle."""

    layout: CacheLayout
    name: str
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    def _once(self, key: str, read: Any) -> Any:
        if key not in self._memo:
            self._memo[key] = read()
        return self._memo[key]

    @property
    def items(self) -> ItemTable:
        return self._once("items", lambda: read_items(self.layout, self.name))

    @property
    def items_meta(self) -> dict[str, Any]:
        return self._once("items_meta", lambda: items_meta(self.layout, self.name))

    @property
    def splits(self) -> Splits:
        """Split membership of the pairs still in the item table (see ``planned_splits``)."""
        return self._once("splits", lambda: kept_splits(self.planned_splits, self.items))

    @property
    def planned_splits(self) -> Splits:
        """The splits as drawn, before any image was decoded: the layout of every feature shard. Pairs whose
        image then failed are still members here, and nowhere else."""
        return self._once("planned_splits", lambda: read_splits(self.layout, self.name))

    @property
    def splits_meta(self) -> dict[str, Any]:
        return self._once("splits_meta", lambda: splits_meta(self.layout, self.name))

    @property
    def splits_fingerprint(self) -> str:
        """The hash of the split membership, as feature manifests record it (``splits_fingerprint``)."""
        return self._once("splits_fingerprint", lambda: splits_fingerprint(self.planned_splits))

    def manifest(self, encoder: str) -> dict[str, Any]:
        return self._once(f"manifest:{encoder}", lambda: read_manifest(self.layout, self.name, encoder))

    def encoders(self) -> list[str]:
        return self.layout.encoders(self.name)

    def exists(self) -> bool:
        return self.layout.items_path(self.name).exists()

    # -- features -------------------------------------------------------------------------------
    def feature_refs(self, spec: str, modality: str) -> list[FeatureRef]:
        """The columns a feature spec (``alexnet:pool``, ``bow``, ``clip``) names for ``modality``."""
        return parse_feature_spec(self, spec, modality)

    def features(self, split: str, image: Sequence[FeatureRef], text: Sequence[FeatureRef]) -> AlignedFeatures:
        """A whole split as one chunk; items missing from some encoder are dropped (and said once)."""
        (whole,) = read_aligned(self, split, image, text)
        if len(whole.dropped):
            log.warning("split %s: %d item(s) missing from some encoder (see errors.parquet) are dropped from "
                        "every modality", split, len(whole.dropped))
        return whole

    def chunks(self, split: str, image: Sequence[FeatureRef], text: Sequence[FeatureRef], *,
               chunk_rows: int, start: int = 0) -> Iterator[AlignedFeatures]:
        """``split`` in chunks of ``chunk_rows`` planned items from planned position ``start`` on."""
        return read_aligned(self, split, image, text, chunk_rows=chunk_rows, start=start)
