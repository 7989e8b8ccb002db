"""Projection hashing: codes are sign((x - mean) W), one centred linear map per modality.

The closed-form methods (the random baseline, CCA-ITQ) differ only in how ``fit`` chooses the means
and the (d, bits) projections; storing, moving and applying them is this one class.
"""
from __future__ import annotations

import torch
from torch import Tensor

from pipeline.ground.errors import ConfigError
from stages.train.base import FeatureBatch, FeatureDims, HashingMethod


class ProjectionHash(HashingMethod):
    """A closed-form method whose ``fit`` ends with :meth:`set_projection`."""

    closed_form = True

    def __init__(self, cfg, dims: FeatureDims, bits: int) -> None:
        super().__init__(cfg, dims, bits)
        # buffers with their final shapes, so a saved state_dict restores the exact projection
        self.register_buffer("image_mean", torch.zeros(dims.image))  # (d_i,)
        self.register_buffer("text_mean", torch.zeros(dims.text))  # (d_t,)
        self.register_buffer("image_projection", torch.zeros(dims.image, bits))  # (d_i, k)
        self.register_buffer("text_projection", torch.zeros(dims.text, bits))  # (d_t, k)
        self.register_buffer("fitted", torch.tensor(False))

    def set_projection(self, image_mean: Tensor, text_mean: Tensor, image_projection: Tensor,
                       text_projection: Tensor) -> None:
        """Store what ``fit`` chose (on the buffers' device, as float32) and mark the method fitted."""
        device = self.image_mean.device
        self.image_mean.copy_(image_mean.float().to(device))
        self.text_mean.copy_(text_mean.float().to(device))
        self.image_projection.copy_(image_projection.float().to(device))
        self.text_projection.copy_(text_projection.float().to(device))
        self.fitted.fill_(True)

    def _project(self, x: Tensor, mean: Tensor, projection: Tensor) -> Tensor:
        if not bool(self.fitted):
            raise ConfigError(f"{self.name} encode() called before fit(): train the method first (cmh train ...)")
        # features may arrive on the CPU while the buffers sit on the training device (no parameters to follow)
        return (x.to(mean.device) - mean) @ projection  # (m, k)

    def encode_image(self, features: FeatureBatch) -> Tensor:
        return self._project(features.image, self.image_mean, self.image_projection)

    def encode_text(self, features: FeatureBatch) -> Tensor:
        return self._project(features.text, self.text_mean, self.text_projection)
