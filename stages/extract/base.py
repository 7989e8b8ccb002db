"""The encoder interface, its registry and factory.

An encoder turns the images and/or texts of a batch of items into one or more named vector columns.
The runner (``runner.py``) owns data loading, devices, batching, shards and errors; an encoder only
says what it needs and computes features.

Names. An encoder *kind* (``clip``, ``alexnet``, ``bow``) is code: one module, one registered class
with a frozen config dataclass. A *preset* is data: an entry of the kind's preset table keyed by the
encoder id it produces (``clip-vit-b-32.openai`` -> ``{"model": "ViT-B-32", "pretrained": "openai"}``).
``create_encoder`` accepts either, so ``clip`` (the kind with its defaults) and
``clip-vit-b-32.openai`` (a preset) build the same encoder. The encoder's ``id`` (``<arch>.<tag>``)
names its cache directory, so it is path-safe.

Adding an encoder is adding a file. A sentence-transformers text encoder, for example, would be::

    @dataclass(frozen=True)
    class SentenceConfig:
        model: str = "all-MiniLM-L6-v2"   # a local folder or a hub name (downloads need internet)
        caption_mode: str = "mean"        # how several captions of one item are combined

    @register_encoder("sbert", config=SentenceConfig, variants={"sbert-minilm-l6.v2": {}})
    class SentenceEncoder(Encoder):
        inputs = frozenset({"text"})

        def __init__(self, cfg: SentenceConfig) -> None:
            from sentence_transformers import SentenceTransformer
            self.cfg, self.model = cfg, SentenceTransformer(cfg.model, device="cpu")
            dim = self.model.get_sentence_embedding_dimension()
            self.id = "sbert-" + safe_id(cfg.model)
            self.columns = {"text": ColumnSpec(dim, "float16", "text")}
            self.default_columns = {"text": ["text"]}

        def config(self) -> dict: return dataclasses.asdict(self.cfg)

        def encode(self, images, texts, item_ids):
            return {"text": self.model.encode([", ".join(t) for t in texts])}

plus one line ``from stages.extract import sbert`` in ``factory.load_encoders``; nothing else changes.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from pipeline.ground.item_table import ItemTable
from pipeline.ground.registry import Registry, check_path_safe, normalise_name
from pipeline.ground.store.features import ColumnSpec


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
        """Fit anything data-dependent (a vocabulary) on the *train* split only.

        Called by the runner before ``config()`` is read, so a fitted state can be part of the config.
        Must be deterministic: every ``--shard i/n`` worker calls it and must get the same config.
        What it found worth saying goes into ``notes`` (``(logging level, text)``), not the log: the
        extraction says them, once; a query that prepares the same encoder again stays quiet.
        """

    #: ``(logging level, text)`` pairs from the last ``prepare`` (see there).
    notes: list[tuple[int, str]] = []

    def image_transform(self) -> Callable[[Any], torch.Tensor] | None:
        """PIL image -> (3, H, W) tensor (float, or uint8 that ``encode`` normalises), run inside DataLoader
        workers; None when images are not read."""
        return None

    def to(self, device: torch.device) -> "Encoder":
        return self

    def encode(self, images: torch.Tensor | None, texts: Sequence[Sequence[str]] | None,
               item_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Features for one batch: column -> (m, dim) array, rows aligned with ``item_ids``.

        ``images`` is the stacked output of ``image_transform``, (m, 3, H, W), already on the encoder's
        device (under fp16 autocast on CUDA); a transform may return uint8 pixels and leave the float
        conversion and normalisation to ``encode``, batched on the device (cheaper for the workers);
        ``texts`` holds each item's tags or captions. Neither is passed unless named in ``inputs``.
        """
        raise NotImplementedError


_TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32, "uint8": torch.uint8}


def column_array(x: torch.Tensor, spec: ColumnSpec) -> np.ndarray:
    """A column tensor as a numpy array of the column's dtype, cast on its device before the copy
    (half the bytes to move for float16; F16C/GPU casts are faster than numpy's)."""
    return x.detach().to(dtype=_TORCH_DTYPES[spec.dtype]).cpu().numpy()


#: ``create_encoder(name, **options)`` builds an Encoder.
ENCODERS: Registry = Registry("encoder", "cmh list encoders")


def register_encoder(name: str, *, config: type, variants: Mapping[str, Mapping[str, Any]] | None = None,
                     aliases: Sequence[str] = ()) -> Callable[[type], type]:
    """Register an encoder kind. ``variants`` maps an encoder id to the options that produce it."""
    for variant_id in variants or {}:
        check_path_safe(variant_id)
    return ENCODERS.register(name, config=config, variants=variants, aliases=aliases)


def safe_id(text: str) -> str:
    """A free-form name (an open_clip model or tag) as a path-safe id part: ``ViT-B/32`` -> ``vit-b-32``."""
    out = re.sub(r"[^a-z0-9.\-]+", "-", normalise_name(text)).strip("-.")
    return check_path_safe(out or "x")
