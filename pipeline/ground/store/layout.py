"""Where everything lives under the cache root (see cache/README.md for the picture)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.ground.registry import check_path_safe

#: Splits with physical feature shards; the others are gathered from `database` by membership.
PHYSICAL_SPLITS = ("query", "database")
SPLITS = ("train", "query", "database", "validation")
#: ``cmh rm`` renames a run folder to ``runs/.removing-<pid>-<run id>`` (hidden, and no run id starts with a dot)
#: before deleting it, so no writer can open the run's lock in a folder half deleted.
TOMBSTONE_PREFIX = ".removing-"


@dataclass(frozen=True)
class CacheLayout:
    root: Path

    def dataset_dir(self, dataset: str) -> Path:
        return self.root / "datasets" / f"dataset={check_path_safe(dataset)}"

    def items_path(self, dataset: str) -> Path:
        return self.dataset_dir(dataset) / "items.parquet"

    def splits_path(self, dataset: str) -> Path:
        return self.dataset_dir(dataset) / "splits.parquet"

    def encoder_dir(self, dataset: str, encoder: str) -> Path:
        return self.root / "features" / f"dataset={check_path_safe(dataset)}" / f"encoder={check_path_safe(encoder)}"

    def split_dir(self, dataset: str, encoder: str, split: str) -> Path:
        return self.encoder_dir(dataset, encoder) / f"split={split}"

    def shard_path(self, dataset: str, encoder: str, split: str, part: int) -> Path:
        return self.split_dir(dataset, encoder, split) / f"part-{part:05d}.parquet"

    def manifest_path(self, dataset: str, encoder: str) -> Path:
        return self.encoder_dir(dataset, encoder) / "_manifest.json"

    def errors_path(self, dataset: str, encoder: str) -> Path:
        return self.encoder_dir(dataset, encoder) / "errors.parquet"

    def lock_path(self, dataset: str) -> Path:
        """The lock file writers of one dataset take (``pipeline.ground.store.lock``)."""
        return self.root / "locks" / f"dataset={check_path_safe(dataset)}.lock"

    def errors_lock_path(self, dataset: str, encoder: str) -> Path:
        """The lock held while one encoder's ``errors.parquet`` is read, merged and replaced."""
        return self.root / "locks" / f"dataset={check_path_safe(dataset)}.encoder={check_path_safe(encoder)}.errors.lock"

    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir() / check_path_safe(run_id)

    def run_paths(self) -> list[Path]:
        """Every folder under ``runs/`` that may be a run, by name: hidden entries are not (a run id starts with a
        letter or digit), among them the tombstones of ``cmh rm``."""
        base = self.runs_dir()
        if not base.is_dir():
            return []
        return sorted(p for p in base.iterdir() if not p.name.startswith(".") and p.is_dir())

    def tombstones(self) -> list[Path]:
        """The run folders ``cmh rm`` renamed for deletion and has not deleted yet (or was killed deleting)."""
        base = self.runs_dir()
        return sorted(base.glob(f"{TOMBSTONE_PREFIX}*")) if base.is_dir() else []

    def encoders(self, dataset: str) -> list[str]:
        """Encoders with features of ``dataset``: folders holding a manifest (one without it is not a cache)."""
        return [e for e in self.encoder_folders(dataset) if self.manifest_path(dataset, e).exists()]

    def encoder_folders(self, dataset: str) -> list[str]:
        """Every ``encoder=<id>`` folder of ``dataset``, with or without its manifest."""
        base = self.root / "features" / f"dataset={dataset}"
        if not base.is_dir():
            return []
        return sorted(p.name.split("=", 1)[1] for p in base.iterdir() if p.name.startswith("encoder="))
