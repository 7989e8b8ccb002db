"""Fixtures for the extraction tests: tiny synthetic image–text items and a tiny random CLIP.

The tiny CLIP is a real open_clip model (an architecture registered from a JSON config in a temp
folder, random weights saved to a file) loaded through the encoder's local-weights path, so the
code under test is the same as with real weights; only its size differs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.ground.item_table import ItemTable

TINY_CLIP = "cmh-tiny-clip"
TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
WORDS = ("sky", "sea", "dog", "cat", "tree", "night", "red", "blue", "people", "car")

ItemsFactory = Callable[..., ItemTable]


@pytest.fixture(scope="session")
def tiny_clip_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Register the tiny architecture with open_clip and save random weights; returns the weights file."""
    import open_clip

    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(folder / f"{TINY_CLIP}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP)
    path = folder / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def make_items(tmp_path: Path) -> ItemsFactory:
    """``make_items(n, corrupt=(), captions=False)``: n items with tiny JPEGs in tmp_path; the
    positions in ``corrupt`` get a .jpg of garbage bytes instead."""

    def make(n: int = 12, corrupt: Sequence[int] = (), captions: bool = False, size: int = 40,
             dataset: str = "toy") -> ItemTable:
        rng = np.random.default_rng(0)
        folder = tmp_path / "images"
        folder.mkdir(exist_ok=True)
        paths, texts = [], []
        for i in range(n):
            path = folder / f"im{i}.jpg"
            if i in corrupt:
                path.write_bytes(b"\x00garbage, not a JPEG" * 5)
            else:
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(path, quality=90)
            paths.append(str(path))
            words = list(rng.choice(WORDS, size=3, replace=False))
            texts.append([f"a photo of a {w} and a {v}" for w, v in zip(words, words[1:])] if captions else words)
        labels = rng.integers(0, 2, (n, 4)).astype(np.uint8)
        return ItemTable(dataset=dataset, item_id=np.arange(100, 100 + n, dtype=np.int64), image=paths, texts=texts,
                         labels=labels, label_names=["a", "b", "c", "d"],
                         text_kind="captions" if captions else "tags", source=str(folder)).validate()

    return make


def toy_splits(items: ItemTable, n_query: int = 4) -> dict[str, np.ndarray]:
    """query = the first n_query items, database = the rest, train = every other database item."""
    ids = items.item_id
    return {"query": ids[:n_query], "database": ids[n_query:], "train": ids[n_query::2]}
