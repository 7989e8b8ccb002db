"""UCMFH: Unsupervised Contrastive Multi-modal Fusion Hashing ("When CLIP meets cross-modal hashing
retrieval: A new strong baseline"; Xia, Dong, Peng, Ye, Yu; Information Fusion 2023).

Reference code: github.com/XinyuXia97/UCMFH (``ICMR.py``, ``model.py``, ``metric.py``).

What is learned, without labels: a transformer encoder that fuses each pair's concatenated image and
text features (CLIP, 512 + 512 in the paper) into one vector whose two halves are the image and text
embeddings, and one hash MLP per modality on its half. Both the fused halves and the hash outputs are
trained with a symmetric cross-modal NT-Xent (SimCLR) contrast: a pair's two halves are positives, every
other item of the batch in either modality a negative.

Loss terms: ``fusion`` = NT-Xent(z_I, z_T) on the fused halves, ``hash`` =
NT-Xent(h_I, h_T) on the hash outputs, τ = 0.5; total ``fusion + 0.5·hash`` (ICMR.py; the paper's
Eq. 8 gives λ1 = 1, λ2 = 0.1).

**Deviations**
- Encoding each modality alone (``eval_mode="single"``, default) [inferred]. The
  reference encodes every query and database item from its *pair* (image and text through the fusion
  transformer together), so an image query carries its own text. Here training presents each sample,
  with probability ``mask_probability``, as two single-modality inputs (image with the text half replaced
  by a missing token, and text with the image half replaced), the rest as pairs; ``encode`` then codes an
  image from the image alone and a text from the text alone. The missing token is learned
  (``missing_token="learned"``) or zeros. ``eval_mode="paired"`` trains exactly as the reference (no
  masking) and encodes with both halves through ``encode_paired`` (``supports_paired = True``; ``encode``
  then refuses, since a single modality was never trained); the runner must label such numbers "paired".
- One attention behaviour for training and encoding: every sample is a sequence of one token, so no
  sample attends to another (the reference's training behaviour). The reference's evaluation instead
  attends across the 128 items of each evaluation batch, making codes depend on
  batching; that is not reproduced.
- Any input widths: ``project_to`` adds one linear layer per modality to a common width before fusion
  [inferred]; the default (None) feeds the features as stored, as the reference does, which needs
  ``d_i == d_t`` (the fusion NT-Xent compares the halves) and ``2 d_i % fusion_heads == 0`` (CLIP 512 + 512).
- No learning-rate schedule: the reference's per-iteration MultiStepLR with gamma 1.2 *raises* the MLP
  LR to 1.44e-3 by epoch 3; the shared loop has no schedule.
- No 4,992-row truncation and no fixed batch of 128 for the loss (NT-Xent takes m from its input);
  evaluation never drops rows (the reference's ``drop_last`` drops 80 queries).
- No model selection: the last epoch is kept (as the reference does).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.ground.errors import ConfigError
from stages.train import losses
from stages.train.base import FeatureBatch, FeatureDims, HashingMethod, MethodConfig, Modality, register_method
from stages.train.layers import FusionTransformer, NormalisedHashMLP

log = logging.getLogger(__name__)

EVAL_MODES = ("single", "paired")
MISSING_TOKENS = ("learned", "zeros")


@dataclass(frozen=True)
class UCMFHConfig(MethodConfig):
    eval_mode: str = "single"  # [inferred] "single": each modality coded alone | "paired": the reference's
    mask_probability: float = 0.5  # [inferred] share of training samples shown as two single-modality inputs
    missing_token: str = "learned"  # [inferred] stand-in for the absent half: "learned" vector | "zeros"
    # [inferred] per-modality Linear to this width before fusion; 0 = features as stored (the reference's CLIP
    # 512/512); "auto" = as stored when the widths are equal, else 512 (CLIP's width) so any cached features work
    project_to: int | str = "auto"
    fusion_layers: int = 2  # ICMR.py num_layers
    fusion_heads: int = 4  # ICMR.py nhead
    fusion_feedforward: int = 2048  # PyTorch TransformerEncoderLayer default (model.py sets none)
    fusion_dropout: float = 0.1  # PyTorch TransformerEncoderLayer default (model.py sets none)
    hash_hidden: int = 4096  # model.py ImageMlp/TextMlp fc1: Linear(512, 4096)
    hash_dropout: float = 0.3  # model.py nn.Dropout(0.3) (its dropout=0.1 argument is unused)
    temperature: float = 0.5  # metric.py ContrastiveLoss temperature
    fusion_lr: float = 1e-4  # ICMR.py optimizer_FuseTrans
    lr: float = 1e-3  # ICMR.py optimizer_ImageMlp / optimizer_TextMlp; paper "ADAM, lr 0.001"
    optimizer: str = "adam"  # ICMR.py
    betas: tuple[float, float] = (0.5, 0.999)  # ICMR.py
    weight_decay: float = 0.0  # ICMR.py: Adam without weight decay
    batch_size: int = 128  # ICMR.py
    drop_last: bool = True  # load_dataset.py: train loader drop_last=True
    epochs: int = 100  # test-mir.sh (NUS-WIDE 150, COCO 500: PRESETS)
    weights: Mapping[str, float] = field(  # ICMR.py: loss1 + loss2*0.5 (paper Eq. 8: λ1 = 1.0, λ2 = 0.1)
        default_factory=lambda: {"fusion": 1.0, "hash": 0.5})


PRESETS: dict[str, dict[str, Any]] = {
    "mirflickr": {},  # test-mir.sh: 100 epochs
    "nuswide": {"epochs": 150},  # test-nus.sh
    "coco": {"epochs": 500},  # test-coco.sh
}


@register_method("ucmfh", config=UCMFHConfig, dataset_presets=PRESETS)
class UCMFH(HashingMethod):
    """UCMFH: fusion transformer + per-modality hash MLPs, contrastive (Xia et al., Information Fusion 2023)."""

    #: the runner may evaluate this method in the labelled reference mode through ``encode_paired``
    supports_paired = True

    def __init__(self, cfg: UCMFHConfig, dims: FeatureDims, bits: int) -> None:
        super().__init__(cfg, dims, bits)
        if cfg.eval_mode not in EVAL_MODES:
            raise ConfigError(f"ucmfh eval_mode={cfg.eval_mode!r}; use one of {', '.join(EVAL_MODES)}")
        if cfg.missing_token not in MISSING_TOKENS:
            raise ConfigError(f"ucmfh missing_token={cfg.missing_token!r}; use one of {', '.join(MISSING_TOKENS)}")
        if not 0.0 <= cfg.mask_probability <= 1.0 or (cfg.eval_mode == "single" and cfg.mask_probability == 0.0):
            raise ConfigError(f"ucmfh mask_probability={cfg.mask_probability}: use a value in (0, 1] with "
                              "eval_mode='single' (0 would never train the single-modality path)")
        project_to = cfg.project_to
        if project_to == "auto":
            project_to = 0 if dims.image == dims.text else 512
            if project_to:
                log.info("ucmfh: features are %d-d and %d-d; each is projected to %d before fusion (project_to=auto)",
                         dims.image, dims.text, project_to)
        if not project_to:
            if dims.image != dims.text:
                raise ConfigError(f"ucmfh contrasts the fused image and text halves, which needs equal widths; the "
                                  f"features are {dims.image}-d and {dims.text}-d: set project_to (e.g. 512)")
            self.image_in, self.text_in = nn.Identity(), nn.Identity()
            width_i, width_t = dims.image, dims.text
        else:
            self.image_in, self.text_in = nn.Linear(dims.image, project_to), nn.Linear(dims.text, project_to)
            width_i = width_t = project_to
        if (width_i + width_t) % cfg.fusion_heads:
            raise ConfigError(f"ucmfh fuses {width_i} + {width_t} = {width_i + width_t} values, not divisible by "
                              f"fusion_heads={cfg.fusion_heads}: set project_to (e.g. 512) or another fusion_heads")
        self.widths = (width_i, width_t)
        self.fusion = FusionTransformer(width_i + width_t, nhead=cfg.fusion_heads, num_layers=cfg.fusion_layers,
                                        dim_feedforward=cfg.fusion_feedforward, dropout=cfg.fusion_dropout)
        if cfg.missing_token == "learned" and cfg.eval_mode == "single":
            self.missing_image = nn.Parameter(torch.zeros(width_i))  # stands in for an absent image half
            self.missing_text = nn.Parameter(torch.zeros(width_t))
        else:
            self.register_buffer("missing_image", torch.zeros(width_i))
            self.register_buffer("missing_text", torch.zeros(width_t))
        self.image_mlp = NormalisedHashMLP(width_i, bits, hidden=cfg.hash_hidden, dropout=cfg.hash_dropout)
        self.text_mlp = NormalisedHashMLP(width_t, bits, hidden=cfg.hash_hidden, dropout=cfg.hash_dropout)

    def param_groups(self) -> list[dict[str, Any]]:
        mlps = [*self.image_mlp.parameters(), *self.text_mlp.parameters()]
        mlp_ids = {id(p) for p in mlps}
        fusion = [p for p in self.parameters() if p.requires_grad and id(p) not in mlp_ids]  # + projections, tokens
        return [{"params": fusion, "lr": self.cfg.fusion_lr}, {"params": mlps, "lr": self.cfg.lr}]

    # -- fusion ---------------------------------------------------------------------------------------

    def _fuse(self, x_i: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
        """(m, w_i), (m, w_t) -> fused halves z_I (m, w_i), z_T (m, w_t); the whole output L2-normalised
        before the split, as in model.py FuseTransEncoder."""
        fused = F.normalize(self.fusion(torch.cat([x_i, x_t], dim=1)), dim=1)  # (m, w_i + w_t)
        return fused[:, : self.widths[0]], fused[:, self.widths[0]:]

    def _image_alone(self, x_i: Tensor) -> Tensor:
        return self._fuse(x_i, self.missing_text.expand(x_i.shape[0], -1))[0]  # (m, w_i)

    def _text_alone(self, x_t: Tensor) -> Tensor:
        return self._fuse(self.missing_image.expand(x_t.shape[0], -1), x_t)[1]  # (m, w_t)

    def _training_halves(self, x_i: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
        """z_I, z_T (m, ·) for the contrastive terms; in single mode a random share of the rows is fused
        as two single-modality inputs (one pass over 1 + p times the rows: the rows never interact)."""
        if self.cfg.eval_mode == "paired":
            return self._fuse(x_i, x_t)
        m = x_i.shape[0]
        solo = torch.rand(m, device=x_i.device) < self.cfg.mask_probability  # (m,) shown one modality at a time
        pair_rows, solo_rows = (~solo).nonzero().squeeze(1), solo.nonzero().squeeze(1)
        n_pair, n_solo = pair_rows.numel(), solo_rows.numel()
        miss_i = self.missing_image.expand(n_solo, -1)
        miss_t = self.missing_text.expand(n_solo, -1)
        inputs_i = torch.cat([x_i[pair_rows], x_i[solo_rows], miss_i])  # (n_pair + 2 n_solo, w_i)
        inputs_t = torch.cat([x_t[pair_rows], miss_t, x_t[solo_rows]])
        z_i_all, z_t_all = self._fuse(inputs_i, inputs_t)
        order = torch.cat([pair_rows, solo_rows])  # row of the batch that each of the first m outputs belongs to
        z_i = torch.cat([z_i_all[:n_pair], z_i_all[n_pair:n_pair + n_solo]])  # image half: pair or image alone
        z_t = torch.cat([z_t_all[:n_pair], z_t_all[n_pair + n_solo:]])  # text half: pair or text alone
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(m, device=order.device)
        return z_i[inverse], z_t[inverse]  # back in batch order

    # -- the method -----------------------------------------------------------------------------------

    def loss_terms(self, batch: FeatureBatch, epoch: int) -> dict[str, Tensor]:
        z_i, z_t = self._training_halves(self.image_in(batch.image), self.text_in(batch.text))  # (m, w) each
        h_i, h_t = self.image_mlp(z_i), self.text_mlp(z_t)  # (m, k) each
        return {
            "fusion": losses.nt_xent(z_i, z_t, self.cfg.temperature),
            "hash": losses.nt_xent(h_i, h_t, self.cfg.temperature),
        }

    def encode(self, features: FeatureBatch, modality: Modality) -> Tensor:
        """Relaxed codes (m, k) of one modality from that modality's features alone."""
        if self.cfg.eval_mode == "paired":
            raise ConfigError("this UCMFH model was trained with eval_mode='paired' (the reference) and cannot "
                              "encode one modality alone: evaluate with --eval-mode paired, or retrain with "
                              "eval_mode='single'")
        return super().encode(features, modality)

    def encode_image(self, features: FeatureBatch) -> Tensor:
        return self.image_mlp(self._image_alone(self.image_in(features.image)))

    def encode_text(self, features: FeatureBatch) -> Tensor:
        return self.text_mlp(self._text_alone(self.text_in(features.text)))

    def paired_codes(self, features: FeatureBatch) -> tuple[Tensor, Tensor]:
        """The reference's evaluation (labelled "paired"): both halves of each item go through the fusion
        encoder and each half is hashed, so an image's code depends on its paired text."""
        z_i, z_t = self._fuse(self.image_in(features.image), self.text_in(features.text))
        return self.image_mlp(z_i), self.text_mlp(z_t)
