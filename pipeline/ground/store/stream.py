"""Aligned feature chunks of one split, read shard by shard so a large collection never sits in memory whole.

:func:`pipeline.ground.store.reader.load_split` reads a whole split; this reads the same rows in the split's
order, ``chunk_rows`` planned items at a time. Shard ``p`` of an encoder holds the split's planned
items ``[p * shard_size, (p + 1) * shard_size)`` minus those that failed, so a chunk needs only the
shards covering its positions, for each encoder. Items missing from any requested encoder are
dropped from the chunk (and counted), as ``load_split`` does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from pipeline.ground.errors import CacheError
from pipeline.ground.store.features import read_manifest
from pipeline.ground.store.layout import CacheLayout
from pipeline.ground.store.parquet import arrow_to_vectors, read_table
from pipeline.ground.store.reader import FeatureRef

log = logging.getLogger(__name__)


@dataclass
class FeatureChunk:
    """Row i of every array is the same item; ``dropped`` counts planned items missing from some encoder."""

    split: str
    item_id: np.ndarray  # (m,) int64
    image: dict[str, np.ndarray]  # "encoder:column" -> (m, d) float32
    text: dict[str, np.ndarray]
    dropped: int = 0

    def __len__(self) -> int:
        return int(self.item_id.shape[0])


class _ShardCursor:
    """Reads one encoder's shards of a split in order, keeping only the shards the current chunk needs."""

    def __init__(self, layout: CacheLayout, dataset: str, encoder: str, split: str, columns: Sequence[str]) -> None:
        manifest = read_manifest(layout, dataset, encoder)
        if not manifest.get("complete"):
            raise CacheError(f"features of encoder {encoder!r} for {dataset!r} are incomplete: re-run "
                             f"`cmh extract --dataset {dataset} --encoders {encoder.split('.')[0]}` to finish them")
        self.layout, self.dataset, self.encoder, self.split = layout, dataset, encoder, split
        self.columns = sorted(set(columns))
        self.shard_size = int(manifest["shard_size"])
        self.n_parts = int(manifest["parts"].get(split, 0))
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def _part(self, p: int) -> dict[str, np.ndarray]:
        if p not in self._cache:
            path = self.layout.shard_path(self.dataset, self.encoder, self.split, p)
            if not path.exists():
                raise CacheError(f"feature shard {path} is missing: re-run `cmh extract --dataset {self.dataset} "
                                 f"--encoders {self.encoder.split('.')[0]}`, which rebuilds it")
            table = read_table(path, ["item_id", *self.columns],
                               f"re-run `cmh extract --dataset {self.dataset}`, which rebuilds damaged shards")
            self._cache[p] = {"item_id": table.column("item_id").to_numpy(),
                              **{c: arrow_to_vectors(table.column(c)) for c in self.columns}}
        return self._cache[p]

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Every stored row whose planned position lies in ``[start, stop)`` (possibly a few more)."""
        first, last = start // self.shard_size, (stop - 1) // self.shard_size
        for p in [p for p in self._cache if p < first]:
            del self._cache[p]  # chunks move forward only
        parts = [self._part(p) for p in range(first, min(last, self.n_parts - 1) + 1)]
        if not parts:
            return {"item_id": np.zeros(0, np.int64)}
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


def _locate(stored: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row in ``stored`` of each wanted id, whether it is there); rows of absent ids are 0 (masked by callers)."""
    if len(stored) == 0:
        return np.zeros(len(wanted), np.int64), np.zeros(len(wanted), dtype=bool)
    order = np.argsort(stored, kind="stable")
    at = np.minimum(np.searchsorted(stored[order], wanted), len(stored) - 1)
    return order[at], stored[order[at]] == wanted


def iter_split_chunks(layout: CacheLayout, dataset: str, split: str, members: np.ndarray,
                      image: Sequence[FeatureRef], text: Sequence[FeatureRef],
                      chunk_rows: int = 1024, start: int = 0) -> Iterator[FeatureChunk]:
    """Chunks of ``members`` (the split's item ids in split order), ``chunk_rows`` planned items each,
    from planned position ``start`` on (a resumed job skips the chunks it wrote)."""
    if chunk_rows < 1:
        raise CacheError(f"chunk size {chunk_rows}: give 1 or more rows")
    by_encoder: dict[str, list[str]] = {}
    for ref in [*image, *text]:
        by_encoder.setdefault(ref.encoder, []).append(ref.column)
    cursors = {e: _ShardCursor(layout, dataset, e, split, cols) for e, cols in by_encoder.items()}
    for start in range(start, len(members), chunk_rows):
        planned = members[start:start + chunk_rows]
        stop = start + len(planned)
        present = np.ones(len(planned), dtype=bool)
        picks: dict[str, tuple[dict[str, np.ndarray], np.ndarray]] = {}
        for encoder, cursor in cursors.items():
            data = cursor.rows(start, stop)
            rows, found = _locate(data["item_id"], planned)
            present &= found
            picks[encoder] = (data, rows)
        keep = planned[present]

        def gather(refs: Sequence[FeatureRef]) -> dict[str, np.ndarray]:
            out = {}
            for ref in refs:
                data, rows = picks[ref.encoder]
                out[ref.key] = np.asarray(data[ref.column][rows[present]], dtype=np.float32)
            return out

        yield FeatureChunk(split, keep, gather(image), gather(text), int((~present).sum()))
