"""No-learning baseline: signs of a seeded random Gaussian projection of each modality.

Not a paper method; it is the floor every learned number must be read against (MIRFlickr's dense
labels give random codes about 0.47–0.5 mAP@50, shared/data README). Each modality's features are
centred on the training mean and multiplied by its own random Gaussian matrix (d, k); the codes are
the signs. The image and text projections are drawn independently, so the two modalities share no
learned space: cross-modal retrieval is at chance level up to label frequencies.

Loss terms: none (closed form; ``fit`` only stores the training means and draws the projections).

**Deviations**: none (no reference). ``[inferred]`` Gaussian entries N(0, 1); the scale does not
matter for the sign.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import Tensor

from pipeline.errors import ConfigError
from stages.train.base import FeatureBatch, FeatureDims, HashingMethod, MethodConfig, Modality, register_method


@dataclass(frozen=True)
class BaselineConfig(MethodConfig):
    #: seed of the projection draws [inferred]; None: the run's seed (cmh train --seed), so seeds give a spread;
    #: an integer pins one projection across seeds
    seed: int | None = None
    epochs: int = 0  # closed form: no epochs
    weights: Mapping[str, float] = field(default_factory=dict)  # no loss terms


PRESETS: dict[str, dict] = {"mirflickr": {}, "nuswide": {}, "coco": {}}  # nothing depends on the dataset


@register_method("baseline", config=BaselineConfig, presets=PRESETS)
class RandomProjectionBaseline(HashingMethod):
    """No-learning baseline: sign of a seeded random Gaussian projection of centred features."""

    closed_form = True

    def __init__(self, cfg: BaselineConfig, dims: FeatureDims, bits: int) -> None:
        super().__init__(cfg, dims, bits)
        # buffers, so a saved state_dict restores the exact projection
        self.register_buffer("image_mean", torch.zeros(dims.image))  # (d_i,)
        self.register_buffer("text_mean", torch.zeros(dims.text))  # (d_t,)
        self.register_buffer("image_projection", torch.zeros(dims.image, bits))  # (d_i, k)
        self.register_buffer("text_projection", torch.zeros(dims.text, bits))  # (d_t, k)
        self.register_buffer("fitted", torch.tensor(False))

    def fit(self, train: FeatureBatch, score: Callable[[], float] | None = None) -> None:
        # nothing to choose: a random projection has no setting a validation score could pick
        # the loop seeds torch with the run's seed before fit: initial_seed() is that seed
        g = torch.Generator().manual_seed(self.cfg.seed if self.cfg.seed is not None else torch.initial_seed())
        device = self.image_mean.device
        self.image_mean.copy_(train.image.mean(dim=0))
        self.text_mean.copy_(train.text.mean(dim=0))
        self.image_projection.copy_(torch.randn(self.dims.image, self.bits, generator=g).to(device))
        self.text_projection.copy_(torch.randn(self.dims.text, self.bits, generator=g).to(device))
        self.fitted.fill_(True)

    def encode(self, features: FeatureBatch, modality: Modality) -> Tensor:
        if not bool(self.fitted):
            raise ConfigError("baseline encode() called before fit(): train the method first (cmh train ...)")
        # features may arrive on the CPU while the buffers sit on the training device (no parameters to follow)
        if modality == "image":
            return (features.image.to(self.image_mean.device) - self.image_mean) @ self.image_projection  # (m, k)
        if modality == "text":
            return (features.text.to(self.text_mean.device) - self.text_mean) @ self.text_projection  # (m, k)
        raise ValueError(f"unknown modality {modality!r}; use 'image' or 'text'")
