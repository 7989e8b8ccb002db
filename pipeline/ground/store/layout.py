"""Where everything lives under the cache root (see cache/README.md for the picture)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.ground.registry import check_path_safe

#: Splits with physical feature shards; the others are gathered from `database` by membership.
PHYSICAL_SPLITS = ("query", "database")
SPLITS = ("train", "query", "database", "validation")


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

    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir() / check_path_safe(run_id)

    def encoders(self, dataset: str) -> list[str]:
        base = self.root / "features" / f"dataset={dataset}"
        if not base.exists():
            return []
        return sorted(p.name.split("=", 1)[1] for p in base.iterdir() if p.name.startswith("encoder="))
