"""What a cache holds, walked once: datasets (items, splits, encoders), runs (their state, size, model,
checkpoint, encodings and indexes) and report pages' thumbnails, each with the folders it occupies.

``cmh ls`` prints it and ``cmh rm`` removes parts of it; both go through this module, since only the store
spells a file name under the cache. Reading is cheap: Parquet footers for row counts, each run's small
``config.json`` and the mAP@50 rows of its report. Nothing here writes.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.ground.errors import CacheError
from pipeline.ground.store.checkpoints import CHECKPOINT_FILE, lock_state
from pipeline.ground.store.layout import CacheLayout
from pipeline.ground.store.runs import ENCODE_RECORD, ENCODED_DIR, INDEX_DIR, RunDir, report_scores_problem

#: A run's state, from the files its writer leaves in order (``runs.py``); DAMAGED: a report without the
#: config.json, model or codes it was written after (removed by hand, or a `cmh rm` killed half-way).
COMPLETE, TRAINED, PARTIAL, DAMAGED = "complete", "trained", "partial", "damaged"


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when absent); links are not followed."""
    if not path.exists():
        return 0
    if not path.is_dir():
        return path.lstat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:  # removed while walking
                pass
    return total


@dataclass
class DatasetInfo:
    name: str
    items: int | None  # None: the item table is unreadable
    splits: dict[str, int]  # split -> items
    encoders: list[str]  # with a manifest
    incomplete_encoders: list[str]  # a folder without a complete manifest (an interrupted extraction)
    paths: list[Path]  # what `cmh rm` of the dataset removes (thumbnails are listed apart)
    bytes: int
    thumbs: Path | None = None  # report thumbnails of this dataset's images
    thumb_bytes: int = 0


@dataclass
class RunInfo:
    run: RunDir
    dataset: str | None
    method: str | None
    bits: int | None
    seed: int | None
    image_features: str | None
    text_features: str | None
    epochs: int | None  # None: closed form, or the method's default schedule
    paper_epochs: int | None
    state: str  # COMPLETE | TRAINED | PARTIAL | DAMAGED
    bytes: int
    model_bytes: int
    checkpoint_bytes: int
    map50: dict[str, float] = field(default_factory=dict)  # task -> mAP@50
    encodings: list[str] = field(default_factory=list)  # datasets coded with this run (cmh encode)
    indexes: list[str] = field(default_factory=list)  # "database" and/or encoded datasets with an index/
    busy: str | None = None  # the pid writing it now (training, encoding, indexing or removing it)
    busy_doing: str = ""  # what that process does: training, encoding, indexing or removing

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def budget(self) -> bool:
        """Trained for fewer epochs than the paper's schedule (``cmh table --budget``, ``--epochs``)."""
        return self.epochs is not None and self.paper_epochs is not None and self.epochs < self.paper_epochs

    @property
    def checkpoint(self) -> Path:
        return self.run.path / CHECKPOINT_FILE


def dataset_names(layout: CacheLayout) -> list[str]:
    """Every dataset with a folder under ``datasets/`` or ``features/`` (a half-written one included)."""
    names = set()
    for top in ("datasets", "features"):
        base = layout.root / top
        if base.is_dir():
            names |= {p.name.split("=", 1)[1] for p in base.iterdir() if p.name.startswith("dataset=")}
    return sorted(names)


def dataset_info(layout: CacheLayout, name: str, reports_dir: Path) -> DatasetInfo:
    import pyarrow.parquet as pq

    from pipeline.ground.store.items import read_splits

    items: int | None = None
    try:
        items = pq.ParquetFile(layout.items_path(name)).metadata.num_rows
    except Exception:  # absent or damaged: shown as unknown, `cmh extract` says the fix when used
        items = None
    try:
        splits = {k: len(v) for k, v in read_splits(layout, name).items()}
    except (CacheError, OSError):
        splits = {}
    encoders = layout.encoders(name)
    incomplete = []
    for enc in layout.encoder_folders(name):
        try:
            manifest = json.loads(layout.manifest_path(name, enc).read_text())
            if not isinstance(manifest, dict) or not manifest.get("complete", True):
                incomplete.append(enc)
        except (OSError, ValueError):
            incomplete.append(enc)
    # not its lock file: a process waiting on it would lock a file no other writer opens any more
    paths = [p for p in (layout.dataset_dir(name), layout.root / "features" / f"dataset={name}") if p.exists()]
    thumbs = reports_dir / name / "thumbs"  # where stages.present.html.thumbnails keeps them (thumbs_dir)
    return DatasetInfo(name, items, splits, encoders, incomplete, paths, sum(tree_bytes(p) for p in paths),
                       thumbs if thumbs.is_dir() else None, tree_bytes(thumbs))


def run_folders(layout: CacheLayout) -> list[RunDir]:
    """Every folder under ``runs/``, finished or not (``Cache.runs`` gives the finished ones)."""
    return [RunDir(p) for p in layout.run_paths()]


def run_info(run: RunDir) -> RunInfo:
    config: dict[str, Any] = {}
    readable = False
    if run.config_path.exists():
        try:
            config, readable = run.read_config(), True
        except CacheError:
            config = {}
    if run.report_path.exists():
        # every use of the run (query, encode, serve, report) refuses it without these: never list it complete
        state = COMPLETE if readable and run.is_trained() else DAMAGED
    elif run.is_trained():
        state = TRAINED
    else:
        state = PARTIAL
    info = RunInfo(run, config.get("dataset") or run.dataset, config.get("method"), config.get("bits"),
                   config.get("seed"), config.get("image_features"), config.get("text_features"),
                   config.get("epochs"), config.get("paper_epochs"), state, tree_bytes(run.path),
                   tree_bytes(run.model_path), tree_bytes(run.path / CHECKPOINT_FILE))
    if state in (COMPLETE, DAMAGED):
        scores = _map50(run.report_path)
        if scores is None:  # a report of another shape: `cmh train` trains such a run again, so it is not complete
            state = info.state = DAMAGED
        info.map50 = scores or {}
    encoded = run.path / ENCODED_DIR
    if encoded.is_dir():
        info.encodings = sorted(p.name for p in encoded.iterdir() if (p / ENCODE_RECORD).exists())
        info.indexes = [d for d in info.encodings if run.index_dir(d).is_dir()]
    if (run.path / INDEX_DIR).is_dir():
        info.indexes.insert(0, "database")
    state = lock_state(run.path)
    if state:
        info.busy, info.busy_doing = state
    return info


def _map50(report: Path) -> dict[str, float] | None:
    """mAP@50 per task of one run's report; None when it cannot be read as scores (``report_scores_problem``):
    `cmh report` names the damage."""
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(report, columns=["task", "metric", "value"])
    except Exception:
        return None
    if report_scores_problem(t.schema):
        return None
    return {task: float(value) for task, metric, value in zip(*(t.column(c).to_pylist() for c in t.column_names))
            if metric == "map@50" and value is not None}

