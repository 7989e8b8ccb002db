"""DJSRH: Deep Joint-Semantics Reconstructing Hashing (Su, Zhong, Zhang; ICCV 2019).

Reference code: github.com/zzs1994/DJSRH (``models.py``, ``train.py``, ``settings.py``).

What is learned: an image hash network and a text hash network, without labels. Within each mini-batch
a joint-semantics affinity S is built from the image-feature and text-feature cosine similarities
(``S̃ = β S_I + (1 − β) S_T``, sharpened by the second-order term ``η S̃ S̃ᵀ / m`` and scaled by μ),
and the cosine similarities of the relaxed codes ``tanh(α h)`` are regressed onto S, both within and
across modalities. α grows as √(epoch + 1) so the codes approach ±1.

Loss terms: ``image_image`` = MSE(B_I B_Iᵀ, S) (λ1 = 0.1), ``image_text`` =
MSE(B_I B_Tᵀ, S) (1), ``text_text`` = MSE(B_T B_Tᵀ, S) (λ2 = 0.1), with B = norm(c).

**Deviations**
- The image side is an MLP head on cached image features (``image_hidden`` → ``Linear(·, k)`` →
  tanh(α·)) instead of an end-to-end fine-tuned AlexNet (fc6/fc7 + fc_encode) on raw pixels: this
  project trains on cached features only. ``image_hidden=()`` gives a single linear hash layer (JDSH's
  frozen-trunk head). No data augmentation (features are cached once, centre crop).
- The image head has no ``Dropout(0.5)`` (AlexNet's classifier puts one before fc6 and one before fc7):
  on a randomly initialised fc6/fc7 those layers cost text→image mAP in the reference's own training
  step (docs/method-checks.md); the reference fine-tunes pretrained fc6/fc7 instead.
- F_I for S_I is the cached image feature itself (DJSRH: fc7 of a second, frozen pretrained AlexNet).
  With AlexNet fc7 features cached this is the reference S_I; the default ``alexnet:pool`` (pooled
  conv5, 512-d) stands in for fc7, which the offline ImageNet weights do not include.
- The second-order term divides by the actual batch size (DJSRH's code divides by the configured one,
  wrong for a short last batch; with ``drop_last`` they agree).
- Codes from ``encode`` use α = 1 (the sign is all that is kept, so α does not matter there).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from torch import Tensor

from stages.train import losses
from stages.train.base import FeatureBatch, FeatureDims, HashingMethod, MethodConfig, register_method
from stages.train.layers import HashHead, mlp, tanh_slope


@dataclass(frozen=True)
class DJSRHConfig(MethodConfig):
    beta: float = 0.9  # image share of S~ (settings.py, MIRFlickr; NUS-WIDE preset 0.6)
    eta: float = 0.4  # weight of the second-order term S~S~ᵀ/m (settings.py)
    mu: float = 1.5  # scale of S (settings.py)
    continuation: bool = True  # α = √(epoch+1) (models.py set_alpha); False gives α = 1 (README Table 1 "− α")
    image_hidden: tuple[int, ...] = (4096,)  # [inferred] trainable stand-in for the fine-tuned fc7 (AlexNet width)
    text_hidden: int = 4096  # TxtNet Linear(d_t, 4096) → ReLU (models.py)
    lr: float = 0.001  # image network LR (settings.py LR_IMG)
    text_lr: float = 0.01  # text network LR (settings.py LR_TXT)
    optimizer: str = "sgd"  # train.py: SGD
    momentum: float = 0.9  # settings.py
    nesterov: bool = False  # train.py: plain momentum
    weight_decay: float = 5e-4  # settings.py
    batch_size: int = 32  # settings.py
    epochs: int = 80  # settings.py NUM_EPOCH
    weights: Mapping[str, float] = field(  # λ1, 1, λ2 (settings.py LAMBDA1/LAMBDA2 = 0.1)
        default_factory=lambda: {"image_image": 0.1, "image_text": 1.0, "text_text": 0.1})


PRESETS: dict[str, dict[str, Any]] = {
    "mirflickr": {},  # the defaults are settings.py's MIRFlickr values
    "nuswide": {"beta": 0.6},  # settings.py, NUS-WIDE
    "coco": {"beta": 0.6},  # [inferred] DJSRH has no COCO setting; NUS-WIDE's (the other large set) is used
}


@register_method("djsrh", config=DJSRHConfig, dataset_presets=PRESETS)
class DJSRH(HashingMethod):
    """DJSRH: joint-semantics affinity reconstructed by code similarities (Su et al., ICCV 2019)."""

    def __init__(self, cfg: DJSRHConfig, dims: FeatureDims, bits: int) -> None:
        super().__init__(cfg, dims, bits)
        self.image_net = mlp(dims.image, cfg.image_hidden)  # (m, d_i) -> (m, h_i)
        self.image_hash = HashHead(cfg.image_hidden[-1] if cfg.image_hidden else dims.image, bits)
        self.text_net = mlp(dims.text, (cfg.text_hidden,))  # (m, d_t) -> (m, 4096)
        self.text_hash = HashHead(cfg.text_hidden, bits)

    def param_groups(self) -> list[dict[str, Any]]:
        image = [*self.image_net.parameters(), *self.image_hash.parameters()]
        text = [*self.text_net.parameters(), *self.text_hash.parameters()]
        return [{"params": image, "lr": self.cfg.lr}, {"params": text, "lr": self.cfg.text_lr}]

    def _alpha(self, epoch: int) -> float:
        return tanh_slope(epoch) if self.cfg.continuation else 1.0

    def relaxed_codes(self, batch: FeatureBatch, epoch: int) -> tuple[Tensor, Tensor]:
        alpha = self._alpha(epoch)
        c_i = self.image_hash(self.image_net(batch.image), alpha)  # (m, k)
        c_t = self.text_hash(self.text_net(batch.text), alpha)  # (m, k)
        return c_i, c_t

    def loss_terms(self, batch: FeatureBatch, epoch: int) -> dict[str, Tensor]:
        c_i, c_t = self.relaxed_codes(batch, epoch)
        s = losses.joint_similarity(losses.feature_similarity(batch.image), losses.feature_similarity(batch.text),
                                    beta=self.cfg.beta, eta=self.cfg.eta, mu=self.cfg.mu)  # (m, m)
        return {
            "image_image": losses.similarity_mse(c_i, c_i, s),
            "image_text": losses.similarity_mse(c_i, c_t, s),
            "text_text": losses.similarity_mse(c_t, c_t, s),
        }

    def encode_image(self, features: FeatureBatch) -> Tensor:
        return self.image_hash(self.image_net(features.image))  # (m, k), α = 1

    def encode_text(self, features: FeatureBatch) -> Tensor:
        return self.text_hash(self.text_net(features.text))
