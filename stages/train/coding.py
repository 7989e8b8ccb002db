"""Features to ±1 codes with a trained method, outside the training loop (encode, query, serve)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.ground.store.codes import binarize
from pipeline.ground.store.stream import FeatureChunk
from stages.train.base import FeatureBatch
from stages.train.loop import encode_split


def encode_chunk(method: Any, chunk: FeatureChunk, paired: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(image, text) ±1 int8 codes (m, bits) of one chunk, each modality from its own features alone
    (``paired=True``: the labelled reference mode of a run trained that way)."""
    m = len(chunk)
    image_parts = {k: torch.from_numpy(chunk.image[k]) for k in method.dims.image_parts}
    text_parts = {k: torch.from_numpy(chunk.text[k]) for k in method.dims.text_parts}
    batch = FeatureBatch(image=torch.cat(list(image_parts.values()), dim=1) if m else torch.zeros(0, method.dims.image),
                         text=torch.cat(list(text_parts.values()), dim=1) if m else torch.zeros(0, method.dims.text),
                         labels=torch.zeros(m, method.dims.labels), index=torch.arange(m),
                         image_parts=image_parts, text_parts=text_parts)
    with torch.no_grad():
        return tuple(binarize(encode_split(method, batch, modality, paired=paired)) for modality in ("image", "text"))
