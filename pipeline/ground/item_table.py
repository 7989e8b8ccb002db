"""The canonical item table every dataset source produces and every stage reads.

One row per image–text pair. ``item_id`` is stable for a given source (MIRFlickr: the 0-based row in
the DCMH 20,015 files; COCO: the image id; ``pairs``: the row number of the user's file), so caches,
splits and codes join on it. Texts are a list of strings per item: the tags of a tag dataset, or the
captions of a caption dataset (``text_kind`` says which).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pipeline.ground.errors import DataError

TextKind = Literal["tags", "captions"]


@dataclass
class ItemTable:
    """Aligned columns of one dataset; row i of every field is the same pair."""

    dataset: str
    item_id: np.ndarray  # (n,) int64, unique
    image: list[str]  # image reference: a file path, or "<file.mat>#<index>" for HDF5 image stacks
    texts: list[list[str]]  # tags or captions per item
    labels: np.ndarray  # (n, L) uint8 multi-hot
    label_names: list[str]
    text_kind: TextKind
    source: str  # where it was read from (a path), for provenance
    #: Optional fixed vocabulary shipped with the dataset (MIRFlickr: the 1386 tags in DCMH YAll order).
    vocabulary: list[str] | None = None
    #: Optional precomputed BoW shipped with the dataset, (n, V) uint8, row-aligned (NUS-WIDE .mat).
    bow: np.ndarray | None = None
    #: Pairs dropped while reading (id, reason), recorded rather than silently lost.
    skipped: list[tuple[Any, str]] = field(default_factory=list)
    #: Reading choices worth keeping with the data (e.g. "hr: 730 of 20015 images use the 256-px copy").
    notes: list[str] = field(default_factory=list)
    #: Fingerprint of where the table came from (``stages.prepare.fingerprint``), set when it was read from a
    #: source; ``fingerprint()`` returns it instead of the content hash.
    origin_fingerprint: str | None = None

    def __len__(self) -> int:
        return int(self.item_id.shape[0])

    def validate(self) -> "ItemTable":
        """Raise DataError on any misalignment; returns self so sources can ``return table.validate()``."""
        n = len(self)
        if n == 0:
            raise DataError(f"dataset {self.dataset!r} from {self.source} has no items")
        for name, col in (("image", self.image), ("texts", self.texts), ("labels", self.labels)):
            if len(col) != n:
                raise DataError(f"dataset {self.dataset!r}: column {name} has {len(col)} rows, item_id has {n}")
        if self.bow is not None and self.bow.shape[0] != n:
            raise DataError(f"dataset {self.dataset!r}: bow has {self.bow.shape[0]} rows, expected {n}")
        if self.labels.ndim != 2 or self.labels.shape[1] != len(self.label_names):
            raise DataError(
                f"dataset {self.dataset!r}: labels have shape {self.labels.shape}, "
                f"expected (n, {len(self.label_names)}) to match label_names"
            )
        uniq, counts = np.unique(self.item_id, return_counts=True)
        if len(uniq) != n:
            raise DataError(f"dataset {self.dataset!r}: duplicate item ids, e.g. {uniq[counts > 1][:5].tolist()}")
        return self

    def subset(self, rows: np.ndarray) -> "ItemTable":
        rows = np.asarray(rows, dtype=np.int64)
        return ItemTable(
            dataset=self.dataset,
            item_id=self.item_id[rows],
            image=[self.image[i] for i in rows],
            texts=[self.texts[i] for i in rows],
            labels=self.labels[rows],
            label_names=list(self.label_names),
            text_kind=self.text_kind,
            source=self.source,
            vocabulary=self.vocabulary,
            bow=None if self.bow is None else self.bow[rows],
            skipped=list(self.skipped),
            notes=list(self.notes),
            origin_fingerprint=self.origin_fingerprint,
        )

    def fingerprint(self) -> str:
        """The origin fingerprint when known (files, folder, options), else ``content_fingerprint()``."""
        return self.origin_fingerprint or self.content_fingerprint()

    def content_fingerprint(self) -> str:
        """A content hash of ids, image file names, texts and labels (not pixels, not where the files are)."""
        h = hashlib.sha256()
        h.update(self.dataset.encode())
        h.update(np.ascontiguousarray(self.item_id, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.labels, dtype=np.uint8).tobytes())
        for ref, texts in zip(self.image, self.texts):
            h.update(ref.rsplit("/", 1)[-1].encode())
            h.update("\x1f".join(texts).encode())
            h.update(b"\x1e")
        return h.hexdigest()[:16]
