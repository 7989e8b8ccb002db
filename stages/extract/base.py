"""The encoder interface and registry.

An encoder turns the images and/or texts of a batch of items into one or more named vector columns.
The runner (``runner.py``) owns data loading, devices, batching, shards and errors; an encoder only
says what it needs and computes features.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from pipeline.datasets.base import ItemTable
from pipeline.registry import Registry
from pipeline.store.features import ColumnSpec


class Encoder:
    """Subclasses set the attributes in ``__init__`` and implement ``encode``."""

    #: Canonical cache id, path-safe (``clip-vit-b-32.openai``, ``alexnet.imagenet``, ``bow``).
    id: str
    #: Output columns: name -> (dim, dtype, modality).
    columns: Mapping[str, ColumnSpec]
    #: Columns a bare ``IMAGE=<id>`` / ``TEXT=<id>`` selects, per modality.
    default_columns: Mapping[str, Sequence[str]]
    #: Which inputs ``encode`` reads: a subset of {"image", "text"}.
    inputs: frozenset[str]

    def config(self) -> dict[str, Any]:
        """Everything that changes the output; hashed into the cache manifest."""
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        """Weights source, preprocessing, versions: stored in every shard's metadata."""
        return {}

    def prepare(self, items: ItemTable, splits: Mapping[str, np.ndarray]) -> None:
        """Fit anything data-dependent (a vocabulary) on the *train* split only."""

    def image_transform(self) -> Callable[[Any], torch.Tensor] | None:
        """PIL image -> tensor, run inside DataLoader workers; None when images are not read."""
        return None

    def to(self, device: torch.device) -> "Encoder":
        return self

    def encode(self, images: torch.Tensor | None, texts: Sequence[Sequence[str]] | None,
               item_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Features for one batch: column -> (m, dim) array, rows aligned with ``item_ids``."""
        raise NotImplementedError


#: ``create_encoder(name, **options)`` builds an Encoder.
ENCODERS: Registry = Registry("encoder", "cmh list encoders")
register_encoder = ENCODERS.register


def create_encoder(name: str, **options: Any) -> Encoder:
    entry = ENCODERS.get(name)
    return entry.builder(**{k: v for k, v in options.items() if v is not None})
