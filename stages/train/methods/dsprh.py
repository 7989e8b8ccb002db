"""DSPRH: Deep Semantic-Preserving Reconstruction Hashing for unsupervised cross-modal retrieval.

Cheng Shuli, Wang Liejun, Du Anyu. Entropy 22(11):1266, 2020. **No reference code exists**; the paper
builds on DJSRH and DSAH and says it "repeated" them, so DSAH's code (idejie/DSAH/{models.py,
train.py}) is the skeleton. Equations and tables are stripped from the
available text, so the loss formulas are reconstructed.

What is learned: an image hash network over a **fusion of three image branches** of one AlexNet,
``F = w1 f1 + w2 f2 + w3 f3`` with ``f1 = FC(iSQRT-COV(strip-pooled conv5))``, ``f2 = FC(iSQRT-COV(conv5))``
and ``f3`` = fc7, and a DJSRH text network. Each side is a "twin bottleneck" (DSAH structure): the
image code decodes into the text feature space and the text code into the image feature space.
Codes are ``c = tanh(α h)`` with α = √(epoch + 1).

Loss ``L = α L_A + β L_C + γ L_P`` (paper Eq. 19; α = 1, β = 0.03, γ = 1), each sub-term a named weight
(``DSPRHConfig.weights``), with ``B = norm(c)``, ``S̃ = λ S_I + (1 − λ) S_T`` (λ = 0.9), ``S = K S̃`` (K = 1.5):

- L_A = DSAH's total ``L1 + L2 + L3 + L4 + L5 + L6 + 2 L7 + u (L31 + L32)`` (u = 0.1) [inferred]:
  ``text_text`` (L1), ``image_text`` (L2), ``image_image`` (L3) = ``MSE(B_a B_bᵀ, S)``;
  ``diagonal`` (L4) = ``MSE(diag(B_I B_Tᵀ), K)``; ``reconstruction_image`` (L5) = ``MSE(dec_T(c_T), norm(F_I))``;
  ``reconstruction_text`` (L6) = ``MSE(dec_I(c_I), norm(T))``; ``symmetry`` (L7);
  ``image_alignment`` (L31) = ``MSE(B_I B_Iᵀ, K S_I)``, ``text_alignment`` (L32) = ``MSE(B_T B_Tᵀ, K S_T)``.
- ``triplet`` = L_C (Eqs. 15–17): cosine triplet both ways with margin ν = 0.001, positive = the paired
  item, negative = the in-batch item with the lowest S̃ [inferred].
- ``pairwise`` = L_P (Eq. 18): DCMH likelihood with ``Θ = ½ c_Iᵀ c_T`` and ``s_ij = 1[S̃_ij > 0]`` [inferred].

**Deviations**:

- **The AlexNet backbone is frozen at the feature cache.** The paper (most likely) fine-tunes the whole
  image network end-to-end, DSAH-style; here the three branch features are
  computed once by the ``alexnet`` encoder and only what follows is learned: the three branch FC
  layers, the fusion, the hash layers, the decoders and the text network. So the strip-pooling gate
  and the channel reduction before iSQRT-COV are not trained (the ``alexnet`` encoder uses a
  parameter-free gate and a fixed orthogonal projection), no dropout noise enters fc7, and images
  are not augmented per epoch.
- **f3 is an FC layer over the cached ``pool`` feature** (pool5 avg ⊕ max, 512-d, or pool5 flattened,
  9,216-d), standing in for the pretrained fc6/fc7 (4096-d) the cache does not hold; f1/f2 read the cached ``sp_cov``/``cov`` columns
  (iSQRT-COV over channel-reduced conv5, ~2080-d, not the paper's 32,896-d). ``branches`` names them.
- **Branch width** ``fusion_width`` is 1024, not the paper's 4096: the cached branches are ≤ 2080-d, so
  a 4096-d map would be wider than its inputs; set ``fusion_width=4096`` for the paper's width.
- **S_I comes from the frozen ``pool`` feature** (DSAH's frozen fc7 plays
  that role), and the text code decodes into that same feature space (DSAH's L5 target).
- **Decoders read the continuous code** (``decode_from="relaxed"``): DSAH decodes
  ``sign(c)``, which has no gradient, so its reconstruction terms never shape the codes (a flaw of DSAH's code).
  ``decode_from="sign"`` restores DSAH's behaviour.
- The triplet and likelihood terms are averaged over items/pairs, not summed (scale independent of m).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.ground.errors import ConfigError
from stages.train import losses
from stages.train.base import FeatureBatch, FeatureDims, HashingMethod, MethodConfig, register_method
from stages.train.layers import HashHead, mlp, tanh_slope

log = logging.getLogger(__name__)

DECODE_CHOICES = ("relaxed", "sign")
PAIRWISE_TARGETS = ("hard", "soft")


@dataclass(frozen=True)
class DSPRHConfig(MethodConfig):
    # optimisation: not stated in the paper; DSAH's values [inferred]
    epochs: int = 200  # DSAH settings.py
    batch_size: int = 32  # DSAH
    optimizer: str = "sgd"
    lr: float = 0.005  # image network LR (DSAH LR_IMG)
    momentum: float = 0.7  # DSAH
    nesterov: bool = True  # DSAH
    weight_decay: float = 5e-4  # DSAH
    text_lr: float = 0.005  # DSAH LR_TXT
    # image feature fusion F = w1 f1 + w2 f2 + w3 f3 (paper §3.2; per-dataset values in PRESETS)
    branches: tuple[str, str, str] = ("sp_cov", "cov", "pool")  # cache columns of f1, f2, f3 (alexnet encoder)
    branch_weights: tuple[float, float, float] = (0.25, 0.25, 0.5)  # paper, MIRFlickr
    fusion_width: int = 1024  # paper 4096; cached branches are <= 2080-d (see Deviations) [inferred]
    similarity_branch: str = "pool"  # S_I source and the text decoder's target: frozen "fc7"
    text_hidden: tuple[int, ...] = (4096,)  # DJSRH/DSAH TxtNet ("kept consistent with most existing works")
    decode_from: str = "relaxed"  # "relaxed" continuous code | "sign" (DSAH) [inferred]
    # affinity
    image_share: float = 0.9  # λ of S̃ = λ S_I + (1 − λ) S_T (paper Eq. 12, "based on DJSRH/DSAH")
    similarity_scale: float = 1.5  # K of S = K S̃ (DSAH) [inferred]
    margin: float = 0.001  # ν of the cosine triplet (paper: "ν = 0.001 in formulas 15 and 16")
    pairwise_target: str = "hard"  # s_ij = 1[S̃ > 0] ("hard") | (S̃ + 1)/2 ("soft") [inferred]
    # weights = α × DSAH's weights for the L_A terms (α = 1, u = 0.1), β for L_C, γ for L_P (paper Eq. 19)
    weights: Mapping[str, float] = field(default_factory=lambda: {
        "text_text": 1.0,  # DSAH L1
        "image_text": 1.0,  # DSAH L2
        "image_image": 1.0,  # DSAH L3
        "diagonal": 1.0,  # DSAH L4
        "reconstruction_image": 1.0,  # DSAH L5 (text code -> image feature)
        "reconstruction_text": 1.0,  # DSAH L6 (image code -> text feature)
        "symmetry": 2.0,  # DSAH 2·L7
        "image_alignment": 0.1,  # DSAH η·L31, the paper's u = 0.1 [inferred]
        "text_alignment": 0.1,  # DSAH η·L32
        "triplet": 0.03,  # β (paper)
        "pairwise": 1.0,  # γ (paper)
    })


PRESETS: dict[str, dict] = {
    "mirflickr": {"branch_weights": (0.25, 0.25, 0.5)},  # paper §4.3.2
    "nuswide": {"branch_weights": (0.125, 0.125, 0.75)},  # paper §4.3.2
}


def find_branches(parts: Mapping[str, object], columns: tuple[str, ...]) -> list[str]:
    """The ``encoder:column`` keys of ``parts`` whose column is each of ``columns``, in that order.

    Raises ConfigError naming the available parts when a column is missing or ambiguous.
    """
    keys = []
    for column in columns:
        hits = [k for k in parts if k.rsplit(":", 1)[-1] == column]
        if len(hits) != 1:
            found = ", ".join(parts) or "none"
            what = "is missing" if not hits else f"is ambiguous ({', '.join(hits)})"
            raise ConfigError(
                f"DSPRH needs the three AlexNet image branches {', '.join(columns)} as separate image features; "
                f"column {column!r} {what}. Image features given: {found}. Extract them with the alexnet encoder "
                f"and train with IMAGE=alexnet (cmh train --image alexnet).")
        keys.append(hits[0])
    return keys


class BranchFusion(nn.Module):
    """DSPRH visual feature fusion (paper §3.2): ``F = Σ_b w_b ReLU(W_b x_b + c_b)``.

    Each branch b: (m, d_b) -> (m, width); the output is (m, width).
    """

    def __init__(self, in_features: list[int], width: int, weights: tuple[float, ...]) -> None:
        super().__init__()
        if len(weights) != len(in_features):
            raise ConfigError(f"branch_weights has {len(weights)} values for {len(in_features)} branches")
        self.maps = nn.ModuleList(nn.Linear(d, width) for d in in_features)
        self.register_buffer("weights", torch.tensor([float(w) for w in weights]))

    def forward(self, parts: list[Tensor]) -> Tensor:
        fused = 0.0
        for w, fc, x in zip(self.weights, self.maps, parts):
            fused = fused + w * F.relu(fc(x))  # (m, width); "FC → 4096 + ReLU"
        return fused


@register_method("dsprh", config=DSPRHConfig, dataset_presets=PRESETS)
class DSPRH(HashingMethod):
    """DSPRH (Entropy 2020): three-branch AlexNet fusion + twin-bottleneck semantic-preserving reconstruction."""

    #: the three cached AlexNet branches (sp_cov, cov, pool), not the pooled feature alone
    default_image_features = "alexnet"

    def __init__(self, cfg: DSPRHConfig, dims: FeatureDims, bits: int) -> None:
        super().__init__(cfg, dims, bits)
        if cfg.decode_from not in DECODE_CHOICES:
            raise ConfigError(f"decode_from={cfg.decode_from!r}; choose one of {', '.join(DECODE_CHOICES)}")
        if cfg.pairwise_target not in PAIRWISE_TARGETS:
            raise ConfigError(f"pairwise_target={cfg.pairwise_target!r}; choose one of {', '.join(PAIRWISE_TARGETS)}")
        if len(cfg.branches) != 3:
            raise ConfigError(f"DSPRH fuses three image branches; branches={tuple(cfg.branches)}")
        if cfg.similarity_branch not in cfg.branches:
            raise ConfigError(f"similarity_branch={cfg.similarity_branch!r} is not one of "
                              f"branches={tuple(cfg.branches)}")
        self.branch_keys = find_branches(dims.image_parts, tuple(cfg.branches))
        self.similarity_key = self.branch_keys[list(cfg.branches).index(cfg.similarity_branch)]
        widths = [int(dims.image_parts[k]) for k in self.branch_keys]
        # image side: fusion -> Cod_I (hash) ; Dec_I: code -> text space
        self.fusion = BranchFusion(widths, cfg.fusion_width, tuple(cfg.branch_weights))
        self.image_hash = HashHead(cfg.fusion_width, bits)
        self.image_decoder = nn.Linear(bits, dims.text)  # DSAH ImgNet.decode: k -> d_t
        # text side: Enc_T -> Cod_T (hash) ; Dec_T: code -> image (similarity-branch) space
        if not cfg.text_hidden:
            raise ConfigError("text_hidden must name at least one layer width, e.g. (4096,)")
        self.text_encoder = mlp(dims.text, tuple(cfg.text_hidden))
        self.text_hash = HashHead(cfg.text_hidden[-1], bits)
        self.text_decoder = nn.Linear(bits, int(dims.image_parts[self.similarity_key]))  # DSAH TxtNet.decode
        log.info("DSPRH branches f1, f2, f3 = %s (widths %s); S_I from %s", self.branch_keys, widths,
                 self.similarity_key)

    def param_groups(self) -> list[dict]:
        image = [*self.fusion.parameters(), *self.image_hash.parameters(), *self.image_decoder.parameters()]
        text = [*self.text_encoder.parameters(), *self.text_hash.parameters(), *self.text_decoder.parameters()]
        return [{"params": image, "lr": self.cfg.lr}, {"params": text, "lr": self.cfg.text_lr}]

    def _parts(self, features: FeatureBatch) -> list[Tensor]:
        missing = [k for k in self.branch_keys if k not in features.image_parts]
        if missing:
            raise ConfigError(f"image features lack the branches {missing} this DSPRH model was trained on; "
                              f"given: {', '.join(features.image_parts) or 'none'}. Use the same --image spec "
                              f"as in training (IMAGE=alexnet).")
        return [features.image_parts[k] for k in self.branch_keys]  # f1, f2, f3 inputs

    def image_codes(self, features: FeatureBatch, alpha: float = 1.0) -> Tensor:
        return self.image_hash(self.fusion(self._parts(features)), alpha)  # (m, k)

    def text_codes(self, features: FeatureBatch, alpha: float = 1.0) -> Tensor:
        return self.text_hash(self.text_encoder(features.text), alpha)  # (m, k)

    def _decoder_input(self, c: Tensor) -> Tensor:
        return losses.sign_plus(c).detach() if self.cfg.decode_from == "sign" else c

    def loss_terms(self, batch: FeatureBatch, epoch: int) -> dict[str, Tensor]:
        cfg = self.cfg
        alpha = tanh_slope(epoch)
        c_i = self.image_codes(batch, alpha)  # (m, k)
        c_t = self.text_codes(batch, alpha)  # (m, k)
        f_i = batch.image_parts[self.similarity_key]  # (m, d_pool) frozen "fc7"
        with torch.no_grad():
            s_i = losses.feature_similarity(f_i)  # (m, m)
            s_t = losses.feature_similarity(batch.text)  # (m, m)
            s_tilde = cfg.image_share * s_i + (1.0 - cfg.image_share) * s_t  # (m, m), paper Eq. 12
            s = cfg.similarity_scale * s_tilde  # (m, m)
            # hardest-negative mining on S̃: the least similar in-batch item (never the item itself)
            eye = torch.eye(s_tilde.shape[0], dtype=torch.bool, device=s_tilde.device)
            negative = s_tilde.masked_fill(eye, float("inf")).argmin(dim=1)  # (m,)
            target = (s_tilde > 0).float() if cfg.pairwise_target == "hard" else 0.5 * (s_tilde + 1.0)  # (m, m)
        dec_t = self.text_decoder(self._decoder_input(c_t))  # (m, d_pool)
        dec_i = self.image_decoder(self._decoder_input(c_i))  # (m, d_t)
        triplet = (losses.cosine_triplet(c_i, c_t, c_t[negative], cfg.margin)  # I -> T
                   + losses.cosine_triplet(c_t, c_i, c_i[negative], cfg.margin))  # T -> I
        return {
            **losses.semantic_alignment_terms(c_i, c_t, s, s_i, s_t, cfg.similarity_scale),  # L_A: alignment
            "reconstruction_image": F.mse_loss(dec_t, F.normalize(f_i, dim=1)),  # L_A: twin-bottleneck decoders
            "reconstruction_text": F.mse_loss(dec_i, F.normalize(batch.text, dim=1)),
            "triplet": triplet,
            "pairwise": losses.pairwise_likelihood(c_i, c_t, target),
        }

    def encode_image(self, features: FeatureBatch) -> Tensor:
        return self.image_codes(features)

    def encode_text(self, features: FeatureBatch) -> Tensor:
        return self.text_codes(features)
