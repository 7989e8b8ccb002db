"""Aligned, per-split feature arrays for any set of cached encoders.

A feature spec names an encoder and optionally some of its columns: ``alexnet`` (the encoder's
default columns for that modality), ``alexnet:cov`` or ``alexnet:cov+pool`` (those columns), and
several specs joined by ``,`` (``alexnet:pool,clip``). Items missing from any requested encoder
(an image that failed to decode, say) are dropped from every modality, and the count is reported.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pipeline.ground.errors import CacheError
from pipeline.ground.store.features import read_manifest, read_split_raw
from pipeline.ground.store.items import read_items, read_splits
from pipeline.ground.store.layout import CacheLayout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureRef:
    encoder: str
    column: str

    @property
    def key(self) -> str:
        return f"{self.encoder}:{self.column}"


def parse_feature_spec(layout: CacheLayout, dataset: str, spec: str, modality: str) -> list[FeatureRef]:
    refs: list[FeatureRef] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        encoder, _, cols = part.partition(":")
        encoder = resolve_cached_encoder(layout, dataset, encoder)
        manifest = read_manifest(layout, dataset, encoder)
        available = manifest["columns"]
        if cols:
            names = cols.split("+")
        else:
            names = manifest["default_columns"].get(modality, [])
            if not names:
                raise CacheError(f"encoder {encoder!r} has no {modality} output; its columns: {', '.join(available)}")
        for name in names:
            if name not in available:
                raise CacheError(f"encoder {encoder!r} has no column {name!r}; available: {', '.join(available)}")
            if available[name]["modality"] != modality:
                raise CacheError(f"column {encoder}:{name} is a {available[name]['modality']} feature, "
                                 f"but it was asked for as the {modality} input")
            refs.append(FeatureRef(encoder, name))
    if not refs:
        raise CacheError(f"empty {modality} feature spec {spec!r}")
    return refs


def resolve_cached_encoder(layout: CacheLayout, dataset: str, name: str) -> str:
    """A short name (``alexnet``, ``clip``) stands for the one cached id it prefixes (``alexnet.imagenet``)."""
    cached = layout.encoders(dataset)
    if name in cached:
        return name
    matches = [e for e in cached if e.startswith(name + ".") or e.startswith(name + "-")]
    if len(matches) > 1:
        raise CacheError(f"{name!r} matches several cached encoders of {dataset!r}: {', '.join(matches)}; "
                         f"name one of them")
    return matches[0] if matches else name


@dataclass
class SplitFeatures:
    """Row i of every array is the same item of ``split``."""

    split: str
    item_id: np.ndarray  # (n,) int64
    image: dict[str, np.ndarray]  # "encoder:column" -> (n, d) float32
    text: dict[str, np.ndarray]
    labels: np.ndarray  # (n, L) uint8
    dropped: list[int] = field(default_factory=list)  # item ids of the split missing from some encoder

    def __len__(self) -> int:
        return int(self.item_id.shape[0])

    @property
    def image_matrix(self) -> np.ndarray:
        return np.concatenate(list(self.image.values()), axis=1)

    @property
    def text_matrix(self) -> np.ndarray:
        return np.concatenate(list(self.text.values()), axis=1)


def load_split(
    layout: CacheLayout,
    dataset: str,
    split: str,
    image: Sequence[FeatureRef],
    text: Sequence[FeatureRef],
) -> SplitFeatures:
    splits = read_splits(layout, dataset)
    if split not in splits:
        raise CacheError(f"dataset {dataset!r} has no split {split!r} (splits: {', '.join(sorted(splits))}); "
                         f"the cache predates validation splits: re-run `cmh extract --dataset {dataset} --overwrite` (or another CACHE=)")
    members = splits[split]
    items = read_items(layout, dataset)
    label_row = {int(i): r for r, i in enumerate(items.item_id)}

    by_encoder: dict[str, list[str]] = {}
    for ref in [*image, *text]:
        by_encoder.setdefault(ref.encoder, []).append(ref.column)
    raw: dict[str, dict[str, np.ndarray]] = {}
    for encoder, cols in by_encoder.items():
        manifest = read_manifest(layout, dataset, encoder)
        if not manifest.get("complete"):
            raise CacheError(f"features of encoder {encoder!r} for {dataset!r} are incomplete: "
                             f"re-run `cmh extract --dataset {dataset} --encoders {encoder}` to finish them")
        raw[encoder] = read_split_raw(layout, dataset, encoder, split, sorted(set(cols)))

    # keep split order; drop items absent from any encoder
    present = np.ones(len(members), dtype=bool)
    rows: dict[str, np.ndarray] = {}
    for encoder, data in raw.items():
        pos = {int(i): r for r, i in enumerate(data["item_id"])}
        r = np.array([pos.get(int(i), -1) for i in members], dtype=np.int64)
        present &= r >= 0
        rows[encoder] = r
    dropped = members[~present].tolist()
    if dropped:
        log.warning("split %s: %d item(s) missing from some encoder (see errors.parquet) are dropped from "
                    "every modality", split, len(dropped))
    keep = members[present]

    def gather(refs: Sequence[FeatureRef]) -> dict[str, np.ndarray]:
        return {ref.key: np.asarray(raw[ref.encoder][ref.column][rows[ref.encoder][present]], dtype=np.float32)
                for ref in refs}

    labels = items.labels[[label_row[int(i)] for i in keep]]
    return SplitFeatures(split, keep, gather(image), gather(text), labels, dropped)
