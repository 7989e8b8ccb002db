"""The one path from features to codes: aligned features -> a batch -> a trained method -> ±1 codes.

Training (query and database codes), ``cmh encode`` (local and on Ray), ``cmh query`` and the search
service all call :func:`codes`, so a code means the same thing wherever it was made.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from pipeline.ground.store.aligned import AlignedFeatures
from pipeline.ground.store.codes import binarize
from stages.train.base import FeatureBatch, HashingMethod
from stages.train.loop import encode_split

MODALITIES = ("image", "text")


def codes(method: HashingMethod, features: AlignedFeatures, modalities: Sequence[str] = MODALITIES, *,
          paired: bool = False) -> dict[str, np.ndarray]:
    """``{modality: (n, bits) int8 ±1}`` of every item of ``features``, each modality coded from its own
    features alone (``paired=True``: the labelled reference mode of a run trained that way, which reads
    both). ``features`` may hold only the modalities asked for (a typed query)."""
    batch = FeatureBatch.from_features(features, method.dims)
    with torch.no_grad():
        return {m: binarize(encode_split(method, batch, m, paired=paired)) for m in modalities}
