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

from stages.train.base import FeatureBatch, MethodConfig, register_method
from stages.train.projection import ProjectionHash


@dataclass(frozen=True)
class BaselineConfig(MethodConfig):
    #: seed of the projection draws [inferred]; None: the run's seed (cmh train --seed), so seeds give a spread;
    #: an integer pins one projection across seeds
    seed: int | None = None
    epochs: int = 0  # closed form: no epochs
    weights: Mapping[str, float] = field(default_factory=dict)  # no loss terms


PRESETS: dict[str, dict] = {"mirflickr": {}, "nuswide": {}, "coco": {}}  # nothing depends on the dataset


@register_method("baseline", config=BaselineConfig, dataset_presets=PRESETS)
class RandomProjectionBaseline(ProjectionHash):
    """No-learning baseline: sign of a seeded random Gaussian projection of centred features."""

    def fit(self, train: FeatureBatch, score: Callable[[], float] | None = None) -> None:
        # nothing to choose: a random projection has no setting a validation score could pick
        # the loop seeds torch with the run's seed before fit: initial_seed() is that seed
        g = torch.Generator().manual_seed(self.cfg.seed if self.cfg.seed is not None else torch.initial_seed())
        image_projection = torch.randn(self.dims.image, self.bits, generator=g)  # image first: the draw order
        text_projection = torch.randn(self.dims.text, self.bits, generator=g)
        self.set_projection(train.image.mean(dim=0), train.text.mean(dim=0), image_projection, text_projection)
