"""FJSPH: FLIP-based Joint Similarity Preserving Hashing for cross-modal retrieval.

计算机科学 (Computer Science) 52(6A):240400151, 2025. **No reference code and only the abstract is
available**; everything below the abstract's claims is ``[inferred]`` and follows the
design proposed here on UCMFH's backbone (UCMFH is the paper's ref. [20]).

What is learned, **with labels** (training only): a fusion transformer over each pair's concatenated
image and text features, whose output halves z_I, z_T are the modality embeddings, and one hash MLP per
modality giving relaxed codes ``h = tanh(·) ∈ (−1, 1)^k``; plus one learnable prototype per class in
code space. The abstract's "multimodal contrastive learning" is UCMFH's NT-Xent; its "sample-wise and
cluster-wise similarity preserved in Hamming space" are a label-similarity regression and a
label-distribution match against the class prototypes.

Loss ``L = λ1 L_con + λ2 L_sample + λ3 L_cluster + λ4 L_quant``, names = keys of
``FJSPHConfig.weights``, with ``B = norm(h)``, label similarity ``S_lab = cos(y_i, y_j)`` and target
``T = 2 S_lab − 1``:

- ``fusion``, ``hash`` (= L_con, split so each can be switched off): NT-Xent(z_I, z_T), NT-Xent(h_I, h_T), τ = 0.5;
- ``sample``: ``MSE(B_I B_Tᵀ, T) + MSE(B_I B_Iᵀ, T) + MSE(B_T B_Tᵀ, T)``;
- ``cluster``: ``mean_i Σ_{m∈{I,T}} KL(p_i ‖ softmax(cos(h_i^m, P) / τ_c))`` with ``p_i = y_i / Σ y_i`` and
  prototypes P (c, k); items without any label are left out of this term;
- ``quantization``: ``mean((h − sign h)²)`` over both modalities.

**Deviations / substitutions**:

- **Features: FLIP is not available.** FLIP (Li et al., CVPR 2023) weights are released as JAX checkpoints
  only and open_clip has none, so this method runs on whatever features are cached (CLIP is the closest
  stand-in); ``paper_features`` records what the paper used, and the run's feature provenance records
  what was used instead (logged at construction).
- ``project_to`` (512, the width of FLIP ViT-B/16 embeddings) puts each modality through one linear layer
  before fusion, so any cached widths (AlexNet 4,672 + BoW 1,386) give the paper-sized 1,024-d fusion;
  ``project_to=0`` feeds features as stored (UCMFH's setting; needs (d_i + d_t) divisible by the heads).
- Each modality is encoded **from its own features alone**: during training a
  random share ``mask_probability`` of the rows has, for the image half, the text input replaced by a
  learned "missing" vector, and for the text half the image input replaced; ``encode`` codes an image
  with the text missing and vice versa. ``encode_paired`` (labelled "paired" by the runner) is the
  UCMFH-reference comparison mode in which each item's code sees its paired other modality.
- One attention behaviour in training and encoding: one token per sample (layers.FusionTransformer),
  so codes do not depend on batching.
- Hash MLPs are UCMFH's (``norm → Linear(·, 4096) → ReLU → Dropout(0.3) → Linear(4096, k) → tanh``) without
  the final L2 normalisation, so L_quant sees the tanh outputs; signs are unchanged.
- Labels are read in ``loss_terms`` only; ``encode`` never touches them.
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
from stages.train.layers import FusionTransformer, mlp

log = logging.getLogger(__name__)

LABEL_SIMILARITIES = ("cosine", "binary")


@dataclass(frozen=True)
class FJSPHConfig(MethodConfig):
    #: recorded only: what the paper encoded with; this method runs on the cached features instead (see docstring)
    paper_features: str = "FLIP ViT-B/16 image + text embeddings (512-d); unavailable, cached features used"
    # backbone: UCMFH's
    project_to: int = 512  # [inferred] per-modality Linear to FLIP's width before fusion; 0 = features as stored
    fusion_layers: int = 2  # UCMFH ICMR.py num_layers
    fusion_heads: int = 4  # UCMFH ICMR.py nhead
    fusion_feedforward: int = 2048  # PyTorch TransformerEncoderLayer default, as UCMFH
    fusion_dropout: float = 0.1  # PyTorch TransformerEncoderLayer default, as UCMFH
    hash_hidden: int = 4096  # UCMFH model.py ImageMlp/TextMlp
    hash_dropout: float = 0.3  # UCMFH model.py
    mask_probability: float = 0.5  # [inferred] share of rows whose halves are fused with the other modality missing
    # loss settings [inferred]
    temperature: float = 0.5  # NT-Xent τ, UCMFH metric.py
    label_similarity: str = "cosine"  # S_lab = cos(y_i, y_j) ("cosine") | 1[y_iᵀ y_j > 0] ("binary") [inferred]
    cluster_temperature: float = 0.1  # τ_c of the prototype softmax [inferred: usual cosine-classifier value]
    # optimisation: UCMFH's (Adam(0.5, 0.999), fusion 1e-4, MLPs 1e-3, batch 128) [inferred]
    fusion_lr: float = 1e-4  # UCMFH optimizer_FuseTrans (also the input projections and missing vectors)
    lr: float = 1e-3  # UCMFH MLP LR; also the class prototypes
    optimizer: str = "adam"
    betas: tuple[float, float] = (0.5, 0.999)  # UCMFH ICMR.py
    weight_decay: float = 0.0  # UCMFH: none
    batch_size: int = 128  # UCMFH
    drop_last: bool = True  # UCMFH train loader
    epochs: int = 100  # UCMFH test-mir.sh (NUS-WIDE 150, COCO 500 in PRESETS)
    weights: Mapping[str, float] = field(default_factory=lambda: {
        "fusion": 1.0,  # λ1 (L_con = both NT-Xent terms; UCMFH's paper λ1 = 1)
        "hash": 1.0,  # λ1 (UCMFH's code weights this 0.5)
        "sample": 1.0,  # λ2 [inferred]
        "cluster": 1.0,  # λ3 [inferred]
        "quantization": 0.1,  # λ4 [inferred: an auxiliary term, small as in most deep hashing losses]
    })


PRESETS: dict[str, dict[str, Any]] = {
    "mirflickr": {},  # UCMFH test-mir.sh: 100 epochs
    "nuswide": {"epochs": 150},  # UCMFH test-nus.sh
    "coco": {"epochs": 500},  # UCMFH test-coco.sh
}


def label_similarity(labels: Tensor, kind: str) -> Tensor:
    """Sample-wise label similarity in [0, 1]: (m, c) multi-hot -> (m, m).

    ``cosine``: ``cos(y_i, y_j)`` (0 for an item without labels); ``binary``: ``1[y_iᵀ y_j > 0]``.
    """
    if kind == "cosine":
        return losses.cosine_similarity_matrix(labels)
    if kind == "binary":
        return (labels @ labels.T > 0).float()
    raise ConfigError(f"label_similarity={kind!r}; choose one of {', '.join(LABEL_SIMILARITIES)}")


def cluster_divergence(codes: Tensor, prototypes: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """``mean_i KL(p_i ‖ q_i)``, ``p_i = y_i / Σ y_i``, ``q_i = softmax(cos(h_i, P) / τ)``.

    codes (m, k), prototypes (c, k), labels (m, c) non-negative. Items with no label are skipped; a batch
    without any labelled item gives 0 (still connected to the graph). Scalar.
    """
    counts = labels.sum(dim=1)  # (m,)
    keep = counts > 0
    if not bool(keep.any()):
        return codes.sum() * 0.0
    p = labels[keep] / counts[keep, None]  # (m', c)
    log_q = F.log_softmax(losses.cosine_similarity_matrix(codes[keep], prototypes) / temperature, dim=1)  # (m', c)
    return F.kl_div(log_q, p, reduction="batchmean")  # Σ p (log p − log q), averaged over items; 0 log 0 = 0


class MaskedFusion(nn.Module):
    """UCMFH-style fusion encoder that can also fuse one modality alone.

    Inputs (m, d_i), (m, d_t) -> halves z_I (m, w_i), z_T (m, w_t) of the L2-normalised fused vector. A
    missing modality is replaced by a learned vector (zeros at start) of its width.
    """

    def __init__(self, d_image: int, d_text: int, project_to: int, *, heads: int, layers: int,
                 feedforward: int, dropout: float) -> None:
        super().__init__()
        if project_to == 0:  # features as stored (UCMFH); 0 because a None override means "unset"
            self.image_in, self.text_in = nn.Identity(), nn.Identity()
            self.widths = (d_image, d_text)
        else:
            self.image_in, self.text_in = nn.Linear(d_image, project_to), nn.Linear(d_text, project_to)
            self.widths = (project_to, project_to)
        width = sum(self.widths)
        if width % heads:
            raise ConfigError(f"fjsph fuses {self.widths[0]} + {self.widths[1]} = {width} values, not divisible by "
                              f"fusion_heads={heads}: set project_to (e.g. 512) or another fusion_heads")
        self.transformer = FusionTransformer(width, nhead=heads, num_layers=layers, dim_feedforward=feedforward,
                                             dropout=dropout)
        self.missing_image = nn.Parameter(torch.zeros(self.widths[0]))  # stands in for an absent image
        self.missing_text = nn.Parameter(torch.zeros(self.widths[1]))

    def _fuse(self, u_i: Tensor, u_t: Tensor, live: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``live``: rows whose halves are used (None: all); the others come back meaningless."""
        fused = F.normalize(self.transformer(torch.cat([u_i, u_t], dim=1), live), dim=1)  # (m, w_i + w_t)
        return fused[:, : self.widths[0]], fused[:, self.widths[0]:]

    def paired(self, x_i: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
        return self._fuse(self.image_in(x_i), self.text_in(x_t))

    def image_alone(self, x_i: Tensor) -> Tensor:
        u_i = self.image_in(x_i)  # (m, w_i)
        return self._fuse(u_i, self.missing_text.expand(u_i.shape[0], -1))[0]

    def text_alone(self, x_t: Tensor) -> Tensor:
        u_t = self.text_in(x_t)  # (m, w_t)
        return self._fuse(self.missing_image.expand(u_t.shape[0], -1), u_t)[1]

    def masked(self, x_i: Tensor, x_t: Tensor, solo: Tensor) -> tuple[Tensor, Tensor]:
        """Training halves: rows where ``solo`` (m,) is True get each half from its modality alone, the
        others from the pair. One transformer pass over the m pairs plus the solo rows twice."""
        u_i, u_t = self.image_in(x_i), self.text_in(x_t)  # (m, w_i), (m, w_t)
        rows = solo.nonzero().squeeze(1)  # (s,)
        s = rows.numel()
        inputs_i = torch.cat([u_i, u_i[rows], self.missing_image.expand(s, -1)])  # (m + 2s, w_i)
        inputs_t = torch.cat([u_t, self.missing_text.expand(s, -1), u_t[rows]])  # (m + 2s, w_t)
        m = u_i.shape[0]
        # the pair outputs of the solo rows are replaced below: the transformer may skip them (same numbers)
        live = torch.cat([(~solo).nonzero().squeeze(1), torch.arange(m, m + 2 * s, device=solo.device)])
        z_i_all, z_t_all = self._fuse(inputs_i, inputs_t, live)
        z_i = z_i_all[:m].index_copy(0, rows, z_i_all[m:m + s])  # image half: image alone on solo rows
        z_t = z_t_all[:m].index_copy(0, rows, z_t_all[m + s:])  # text half: text alone on solo rows
        return z_i, z_t


class RelaxedHashMLP(nn.Module):
    """UCMFH's hash MLP minus the final normalisation: ``norm(x) → Linear → ReLU → Dropout → Linear → tanh``.

    (m, in_features) -> (m, bits) in (−1, 1).
    """

    def __init__(self, in_features: int, bits: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = mlp(in_features, (hidden,), bits, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.net(F.normalize(x, dim=1)))


@register_method("fjsph", config=FJSPHConfig, dataset_presets=PRESETS)
class FJSPH(HashingMethod):
    """FJSPH (Computer Science 2025): supervised fusion hashing with sample- and cluster-wise label similarity."""

    supervised = True
    #: the runner may evaluate in the labelled UCMFH-reference mode through ``encode_paired``
    supports_paired = True

    def __init__(self, cfg: FJSPHConfig, dims: FeatureDims, bits: int) -> None:
        super().__init__(cfg, dims, bits)
        if not 0.0 <= cfg.mask_probability <= 1.0:
            raise ConfigError(f"fjsph mask_probability={cfg.mask_probability}: use a value in [0, 1]")
        if cfg.label_similarity not in LABEL_SIMILARITIES:
            raise ConfigError(f"fjsph label_similarity={cfg.label_similarity!r}; "
                              f"choose one of {', '.join(LABEL_SIMILARITIES)}")
        if cfg.mask_probability == 0.0:
            log.warning("fjsph mask_probability=0: only the paired evaluation mode (--eval-mode paired) can "
                        "encode this model; single-modality encoding will refuse")
        if dims.labels < 1:
            raise ConfigError("fjsph is supervised and needs training labels; the feature cache has none")
        self.fusion = MaskedFusion(dims.image, dims.text, cfg.project_to, heads=cfg.fusion_heads,
                                   layers=cfg.fusion_layers, feedforward=cfg.fusion_feedforward,
                                   dropout=cfg.fusion_dropout)
        width_i, width_t = self.fusion.widths
        self.image_mlp = RelaxedHashMLP(width_i, bits, cfg.hash_hidden, cfg.hash_dropout)
        self.text_mlp = RelaxedHashMLP(width_t, bits, cfg.hash_hidden, cfg.hash_dropout)
        self.prototypes = nn.Parameter(torch.randn(dims.labels, bits))  # (c, k) class centres in code space
        log.info("fjsph: the paper used %s; this run uses the cached features (%s / %s)", cfg.paper_features,
                 ", ".join(dims.image_parts) or f"{dims.image}-d", ", ".join(dims.text_parts) or f"{dims.text}-d")

    def param_groups(self) -> list[dict[str, Any]]:
        heads = [*self.image_mlp.parameters(), *self.text_mlp.parameters(), self.prototypes]
        return [{"params": list(self.fusion.parameters()), "lr": self.cfg.fusion_lr},
                {"params": heads, "lr": self.cfg.lr}]

    def loss_terms(self, batch: FeatureBatch, epoch: int) -> dict[str, Tensor]:
        cfg = self.cfg
        solo = torch.rand(batch.image.shape[0], device=batch.image.device) < cfg.mask_probability  # (m,)
        z_i, z_t = self.fusion.masked(batch.image, batch.text, solo)  # (m, w) each
        h_i, h_t = self.image_mlp(z_i), self.text_mlp(z_t)  # (m, k) each, in (−1, 1)
        labels = batch.labels  # (m, c): training supervision only
        target = 2.0 * label_similarity(labels, cfg.label_similarity) - 1.0  # (m, m) in [−1, 1]
        return {
            "fusion": losses.nt_xent(z_i, z_t, cfg.temperature),
            "hash": losses.nt_xent(h_i, h_t, cfg.temperature),
            "sample": (losses.similarity_mse(h_i, h_t, target) + losses.similarity_mse(h_i, h_i, target)
                       + losses.similarity_mse(h_t, h_t, target)),
            "cluster": (cluster_divergence(h_i, self.prototypes, labels, cfg.cluster_temperature)
                        + cluster_divergence(h_t, self.prototypes, labels, cfg.cluster_temperature)),
            "quantization": 0.5 * (losses.quantization_gap(h_i) + losses.quantization_gap(h_t)),
        }

    def encode(self, features: FeatureBatch, modality: Modality) -> Tensor:
        """Relaxed codes (m, k) of one modality from that modality's features alone (never the labels)."""
        if self.cfg.mask_probability == 0.0:
            raise ConfigError("this FJSPH model was trained with mask_probability=0, so it never learned to code "
                              "one modality alone: evaluate with --eval-mode paired, or retrain with "
                              "mask_probability > 0")
        return super().encode(features, modality)

    def encode_image(self, features: FeatureBatch) -> Tensor:
        return self.image_mlp(self.fusion.image_alone(features.image))

    def encode_text(self, features: FeatureBatch) -> Tensor:
        return self.text_mlp(self.fusion.text_alone(features.text))

    def paired_codes(self, features: FeatureBatch) -> tuple[Tensor, Tensor]:
        """The UCMFH-reference comparison mode (labelled "paired"): each item's code sees its paired other
        modality through the fusion encoder."""
        z_i, z_t = self.fusion.paired(features.image, features.text)
        return self.image_mlp(z_i), self.text_mlp(z_t)
