"""DSAH: Deep Semantic-Alignment Hashing (Yang, Deng, Liu, Liu, Tao, Gao; ICMR 2020).

Reference code: github.com/idejie/DSAH (``models.py``, ``train.py``, ``settings.py``).
The direct parent of CCAH and DSPRH.

What is learned: image and text hash networks, without labels, plus one linear decoder per modality
that maps a code into the other modality's feature space. The affinity is ``S = K (a S_I + (1 − a) S_T)``
from feature cosines (``S_X = 2 cos(F_X) − 1``); code similarities are aligned with S within and across
modalities, with each modality's own feature similarity, with a pushed-up diagonal for paired items,
and with a symmetric cross-modal similarity; the decoders reconstruct the other modality's features.

Loss terms (B = norm(c)):
``text_text`` L1 = MSE(B_T B_Tᵀ, S), ``image_text`` L2 = MSE(B_I B_Tᵀ, S), ``image_image`` L3 = MSE(B_I B_Iᵀ, S),
``image_alignment`` L31 = MSE(B_I B_Iᵀ, K S_I), ``text_alignment`` L32 = MSE(B_T B_Tᵀ, K S_T),
``diagonal`` L4 = MSE(diag(B_I B_Tᵀ), K·1),
``reconstruction_image`` L5 = MSE(dec_T(code_T), norm(F_I)), ``reconstruction_text`` L6 = MSE(dec_I(code_I), norm(T)),
``symmetry`` L7 = MSE(B_I B_Tᵀ, (B_I B_Tᵀ)ᵀ);
total L1 + L2 + L3 + L4 + L5 + L6 + 2 L7 + η (L31 + L32), η = 0.1.

**Deviations**
- The image side is an MLP head on cached image features (``image_hidden`` → ``Linear(·, k)`` → tanh(α·))
  instead of an end-to-end fine-tuned AlexNet; F_I (for S_I and as the L5 target) is the cached image
  feature itself (DSAH: fc7 of a frozen AlexNet), so the text decoder outputs the cached width.
  The stand-in for fc6/fc7 (``Linear`` → ReLU) has no ``Dropout(0.5)`` of AlexNet's classifier: with it,
  the reference's own training step scored lower on these features, on both tasks, at 5 epochs.
- ``decode_from``: DSAH decodes from ``sign(code)`` (the default here, reference behaviour), which has
  zero gradient, so L5/L6 train only the decoders and never shape the codes.
  ``decode_from="relaxed"`` decodes from the continuous code so the reconstruction reaches the encoders
  (CCAH's choice). ``sign(0) = +1``.
- No model selection on the query set (DSAH keeps the test-best epoch); the last epoch is kept.
- Codes from ``encode`` use α = 1 (only the sign is kept).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.ground.errors import ConfigError
from stages.train import losses
from stages.train.base import FeatureBatch, FeatureDims, HashingMethod, MethodConfig, register_method
from stages.train.layers import HashHead, mlp, tanh_slope

DECODE_FROM = ("sign", "relaxed")


@dataclass(frozen=True)
class DSAHConfig(MethodConfig):
    image_share: float = 0.9  # a: image share of S~ (settings.py ALPHA)
    similarity_scale: float = 1.5  # K: S = K·S~, and the L4 target (settings.py K)
    decode_from: str = "sign"  # "sign" (models.py: decoders read sign(code), no gradient to the encoders) | "relaxed"
    continuation: bool = True  # α = √(epoch+1) (models.py set_alpha)
    image_hidden: tuple[int, ...] = (4096,)  # [inferred] trainable stand-in for the fine-tuned fc7 (AlexNet width)
    text_hidden: int = 4096  # TxtNet fc1 Linear(d_t, 4096) → ReLU (models.py)
    lr: float = 0.005  # image and text LR (settings.py LR_IMG = LR_TXT)
    optimizer: str = "sgd"  # train.py: SGD, Nesterov
    momentum: float = 0.7  # settings.py
    nesterov: bool = True  # train.py
    weight_decay: float = 5e-4  # settings.py
    batch_size: int = 32  # settings.py
    epochs: int = 200  # settings.py NUM_EPOCH
    weights: Mapping[str, float] = field(  # train.py: L1+L2+L3+L4+L5+L6+2·L7+ETA·(L31+L32), ETA = 0.1
        default_factory=lambda: {"text_text": 1.0, "image_text": 1.0, "image_image": 1.0, "diagonal": 1.0,
                                 "reconstruction_image": 1.0, "reconstruction_text": 1.0, "symmetry": 2.0,
                                 "image_alignment": 0.1, "text_alignment": 0.1})


PRESETS: dict[str, dict[str, Any]] = {  # DSAH's settings.py has one setting for every dataset
    "mirflickr": {},
    "nuswide": {},
    "coco": {},
}


@register_method("dsah", config=DSAHConfig, dataset_presets=PRESETS)
class DSAH(HashingMethod):
    """DSAH: semantic alignment of code, feature and cross-modal similarities (Yang et al., ICMR 2020)."""

    def __init__(self, cfg: DSAHConfig, dims: FeatureDims, bits: int) -> None:
        super().__init__(cfg, dims, bits)
        if cfg.decode_from not in DECODE_FROM:
            raise ConfigError(f"dsah decode_from={cfg.decode_from!r}; use one of {', '.join(DECODE_FROM)}")
        self.image_net = mlp(dims.image, cfg.image_hidden)  # (m, d_i) -> (m, h_i)
        self.image_hash = HashHead(cfg.image_hidden[-1] if cfg.image_hidden else dims.image, bits)
        self.image_decoder = nn.Linear(bits, dims.text)  # code_I -> text features (ImgNet.decode)
        self.text_net = mlp(dims.text, (cfg.text_hidden,))  # (m, d_t) -> (m, 4096)
        self.text_hash = HashHead(cfg.text_hidden, bits)
        self.text_decoder = nn.Linear(bits, dims.image)  # code_T -> image features (TxtNet.decode)

    def _alpha(self, epoch: int) -> float:
        return tanh_slope(epoch) if self.cfg.continuation else 1.0

    def _decoder_input(self, code: Tensor) -> Tensor:
        return losses.sign_plus(code) if self.cfg.decode_from == "sign" else code

    def loss_terms(self, batch: FeatureBatch, epoch: int) -> dict[str, Tensor]:
        alpha = self._alpha(epoch)
        c_i = self.image_hash(self.image_net(batch.image), alpha)  # (m, k)
        c_t = self.text_hash(self.text_net(batch.text), alpha)  # (m, k)
        k = self.cfg.similarity_scale
        s_i = losses.feature_similarity(batch.image)  # (m, m)
        s_t = losses.feature_similarity(batch.text)  # (m, m)
        s = losses.joint_similarity(s_i, s_t, beta=self.cfg.image_share, mu=k)  # K (a S_I + (1 − a) S_T)
        text_from_image = self.image_decoder(self._decoder_input(c_i))  # (m, d_t)
        image_from_text = self.text_decoder(self._decoder_input(c_t))  # (m, d_i)
        return {
            **losses.semantic_alignment_terms(c_i, c_t, s, s_i, s_t, k),
            "reconstruction_image": F.mse_loss(image_from_text, F.normalize(batch.image, dim=1)),
            "reconstruction_text": F.mse_loss(text_from_image, F.normalize(batch.text, dim=1)),
        }

    def encode_image(self, features: FeatureBatch) -> Tensor:
        return self.image_hash(self.image_net(features.image))  # (m, k), α = 1

    def encode_text(self, features: FeatureBatch) -> Tensor:
        return self.text_hash(self.text_net(features.text))
