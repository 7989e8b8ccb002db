"""CCAH: CLIP-based Cycle Alignment Hashing (Li, Li, Ge, Ma; Int. J. Intelligent Systems 2023, 7992047).

Reference code: github.com/CQYIO/CCAH (``CCAH/models.py``, ``CCAH/train.py``, ``CCAH/settings.py``,
``CCAH/pygat/layers.py``); spec: methods.md §5. The code is the authority (most of the paper's
equations are lost); it is a fork of DSAH (methods.md §3).

What is learned, without labels: an image hash MLP on frozen CLIP image features, and a graph-attention
text encoder in which each text attends over texts that share a tag with it; each code also drives a
decoder into the other modality ("cycle"), whose outputs must reproduce that modality's similarity
structure. The affinity is DSAH's ``S = K (a S_I + (1 − a) S_T)`` with ``S_X = 2 cos(F_X) − 1``; α grows
as √(epoch + 1).

Loss terms (methods.md §5.3; B = norm(c), C_X = cos(F_X)):
``text_text`` L1 = MSE(B_T B_Tᵀ, S), ``image_text`` L2 = MSE(B_I B_Tᵀ, S), ``image_image`` L3 = MSE(B_I B_Iᵀ, S),
``image_alignment`` L31 = MSE(B_I B_Iᵀ, K S_I), ``text_alignment`` L32 = MSE(B_T B_Tᵀ, K S_T),
``diagonal`` L4 = MSE(diag(B_I B_Tᵀ), K·1), ``reconstruction_image`` L5 = MSE(cos(î), C_I) with
î = sigmoid(dec_T(c_T)), ``reconstruction_text`` L6 = MSE(cos(t̂), C_T) with t̂ = sigmoid(dec_I(c_I)),
``symmetry`` L7 = MSE(B_I B_Tᵀ, (B_I B_Tᵀ)ᵀ);
total (final train.py) L1 + L2 + L3 + L4 + L5 + L6 + 2 L7 + η (L31 + L32), K = 1.5, a = 0.9, η = 0.1.

**Deviations**
- Text graph at encode time (``graph``). The reference builds the graph inside every mini-batch, in
  training *and* evaluation, so a text's code depends on the 15 other texts that share its evaluation
  batch (methods.md §14 CCAH 4). Default ``graph="bank"`` [inferred]: a fixed **anchor bank** of
  ``bank_size`` training texts, redrawn at the start of every epoch (``on_epoch_start``, from the run's
  seeded RNG) and stored as a buffer with the weights (the last epoch's bank is the one used for
  encoding). In training and encoding alike, each text attends over itself plus its neighbours in the
  bank (both layers); bank texts attend over themselves plus their bank neighbours. A text's code
  therefore depends only on the text and the saved bank, never on its batch mates, and training and
  encoding use one behaviour. ``graph="batch"`` restores the reference (train and encode over the
  mini-batch graph; encode in fixed-order batches of 16 to match it).
- Text graph edges: A_ij = 1 iff texts i and j share a tag (``sign(T Tᵀ) > 0``) when the text features
  are a bag of words (``dims.text_is_bow``). For other text features (e.g. CLIP text embeddings) each text
  is linked to its ``neighbours`` most cosine-similar texts [inferred]. The reference's symmetric
  normalisation of A is omitted: it only ever serves as a mask. In bank mode a text with no tags
  attends to itself alone (the reference spreads it uniformly over the batch).
- Inputs are cached CLIP features (extracted once with CLIP's own preprocessing), not ImageNet-normalised
  random crops through CLIP at every step (methods.md §14 CCAH 3). F_I for S_I is that cached feature,
  as in the reference (FeatNet_I is the same frozen CLIP).
- No model selection on the query set (the reference keeps the test-best epoch); the last epoch is kept.
- Codes from ``encode`` use α = 1 (only the sign is kept).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.errors import ConfigError
from stages.train import losses
from stages.train.base import FeatureBatch, FeatureDims, HashingMethod, MethodConfig, Modality, register_method
from stages.train.layers import DenseGraphAttention, HashHead, mlp, tanh_slope

GRAPHS = ("bank", "batch")


@dataclass(frozen=True)
class CCAHConfig(MethodConfig):
    image_share: float = 0.9  # a: image share of S~ (settings.py ALPHA, final code; first commit and paper: 0.8)
    similarity_scale: float = 1.5  # K: S = K·S~ and the L4 target (settings.py; paper "λ = 1.5 best")
    continuation: bool = True  # α = √(epoch+1) (models.py set_alpha)
    image_hidden: int = 1024  # models.py fc_encode: Linear(512, 1024) → ReLU → Linear(1024, k)
    gat_hidden: int = 1024  # models.py GATNet nhid
    gat_heads: int = 8  # models.py GATNet nheads (concatenated, ELU)
    gat_dropout: float = 0.6  # models.py GATNet dropout: on the input, the hidden layer and the attention
    gat_negative_slope: float = 0.2  # models.py GATNet alpha (LeakyReLU of the attention logits)
    image_decoder_width: int = 1024  # models.py GATNet decode Linear(k, image_size=1024); compared only via cos()
    graph: str = "bank"  # [inferred] "bank": fixed anchor bank, batch-independent codes | "batch": the reference
    bank_size: int = 32  # [inferred] anchor texts per bank: 2 reference batches of neighbours; cost grows linearly
    neighbours: int = 8  # [inferred] links per text when the text features are not a bag of words
    lr: float = 0.005  # settings.py LR_IMG = LR_TXT (first commit: 0.01)
    optimizer: str = "sgd"  # train.py: SGD, Nesterov
    momentum: float = 0.7  # settings.py MOMENTUM
    nesterov: bool = True  # train.py
    weight_decay: float = 5e-4  # settings.py WEIGHT_DECAY
    batch_size: int = 16  # settings.py BATCH_SIZE; paper "batch 16"
    epochs: int = 200  # settings.py NUM_EPOCH (first commit: 100)
    weights: Mapping[str, float] = field(  # train.py: 1·L1..L6 + 2·L7 + ETA·(L31 + L32), ETA = 0.1 (1st commit: 0.2)
        default_factory=lambda: {"text_text": 1.0, "image_text": 1.0, "image_image": 1.0, "diagonal": 1.0,
                                 "reconstruction_image": 1.0, "reconstruction_text": 1.0, "symmetry": 2.0,
                                 "image_alignment": 0.1, "text_alignment": 0.1})


PRESETS: dict[str, dict[str, Any]] = {  # the reference runs MIRFlickr only (other datasets crash, methods.md §14)
    "mirflickr": {},
    "nuswide": {},  # [inferred] MIRFlickr's values
    "coco": {},  # [inferred] MIRFlickr's values
}


class GraphAttentionTextEncoder(nn.Module):
    """CCAH's GATNet (methods.md §5.2): Dropout → 8-head GAT (d_t → 1024 each, ELU, concatenated) →
    Dropout → 1-head GAT (8192 → k, no activation). Text (m, d_t) -> pre-activation h_T (m, k)."""

    def __init__(self, text_dim: int, bits: int, *, hidden: int, heads: int, dropout: float,
                 negative_slope: float) -> None:
        super().__init__()
        self.dropout = dropout
        self.hidden = DenseGraphAttention(text_dim, hidden, heads=heads, dropout=dropout,
                                          negative_slope=negative_slope, concat=True)
        self.output = DenseGraphAttention(hidden * heads, bits, heads=1, dropout=dropout,
                                          negative_slope=negative_slope, concat=False)

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.dropout, training=self.training)

    def over_batch(self, text: Tensor, adj: Tensor) -> Tensor:
        """The reference: nodes are the m texts, edges ``adj`` (m, m)."""
        x = self._drop(text)
        h = self._drop(self.hidden(x, x, adj))  # (m, heads·hidden)
        return self.output(h, h, adj)  # (m, k)

    def over_bank(self, text: Tensor, bank: Tensor, text_bank: Tensor, bank_bank: Tensor) -> Tensor:
        """Each text attends over itself and its bank neighbours ``text_bank`` (m, B); bank texts over
        themselves and their bank neighbours ``bank_bank`` (B, B). No text sees another text."""
        x, b = self._drop(text), self._drop(bank)
        h_b = self._drop(self.hidden(b, b, bank_bank, self_loop=True))  # (B, heads·hidden)
        h_x = self._drop(self.hidden(x, b, text_bank, self_loop=True))  # (m, heads·hidden)
        return self.output(h_x, h_b, text_bank, self_loop=True)  # (m, k)


@register_method("ccah", config=CCAHConfig, presets=PRESETS)
class CCAH(HashingMethod):
    """CCAH: CLIP image MLP + tag-graph attention text encoder with cycle alignment (Li et al., IJIS 2023)."""

    def __init__(self, cfg: CCAHConfig, dims: FeatureDims, bits: int) -> None:
        super().__init__(cfg, dims, bits)
        if cfg.graph not in GRAPHS:
            raise ConfigError(f"ccah graph={cfg.graph!r}; use one of {', '.join(GRAPHS)}")
        if cfg.graph == "bank" and cfg.bank_size < 1:
            raise ConfigError(f"ccah bank_size must be >= 1, got {cfg.bank_size}")
        self.image_net = mlp(dims.image, (cfg.image_hidden,))  # (m, d_i) -> (m, 1024)
        self.image_hash = HashHead(cfg.image_hidden, bits)
        self.image_decoder = nn.Linear(bits, dims.text)  # c_I -> t̂ (ImgNet.decode, then sigmoid)
        self.text_encoder = GraphAttentionTextEncoder(
            dims.text, bits, hidden=cfg.gat_hidden, heads=cfg.gat_heads, dropout=cfg.gat_dropout,
            negative_slope=cfg.gat_negative_slope)
        self.text_decoder = nn.Linear(bits, cfg.image_decoder_width)  # c_T -> î (GATNet.decode, then sigmoid)
        # the anchor bank is saved with the weights so encoding after loading sees the same graph
        self.register_buffer("bank_text", torch.zeros(cfg.bank_size if cfg.graph == "bank" else 0, dims.text))
        self.register_buffer("bank_valid", torch.zeros(self.bank_text.shape[0], dtype=torch.bool))

    # -- the text graph ------------------------------------------------------------------------------

    def on_epoch_start(self, epoch: int, train: FeatureBatch) -> None:
        """Redraw the anchor bank from the training texts (the run's seeded global RNG)."""
        if self.cfg.graph != "bank":
            return
        n = train.text.shape[0]
        take = torch.randperm(n)[: self.cfg.bank_size].to(train.text.device)  # (B,) with B <= bank_size
        self.bank_text.zero_()
        self.bank_text[: take.numel()] = train.text[take].to(self.bank_text)
        self.bank_valid.zero_()
        self.bank_valid[: take.numel()] = True

    def _links(self, text: Tensor, others: Tensor, *, exclude_diagonal: bool) -> Tensor:
        """(m, n) bool: text i links to other j when they share a tag (bag of words), else when j is one of
        i's ``neighbours`` most cosine-similar others."""
        if self.dims.text_is_bow:
            links = ((text > 0).float() @ (others > 0).float().T) > 0  # sign(T Tᵀ) > 0
            if exclude_diagonal:
                links.fill_diagonal_(False)
            return links
        cos = losses.cosine_similarity_matrix(text, others)  # (m, n)
        if exclude_diagonal:
            cos = cos.clone().fill_diagonal_(float("-inf"))
        k = min(self.cfg.neighbours, others.shape[0] - int(exclude_diagonal))
        links = torch.zeros_like(cos, dtype=torch.bool)
        if k > 0:
            links.scatter_(1, cos.topk(k, dim=1).indices, True)
        return links

    def _text_preactivation(self, text: Tensor) -> Tensor:
        if self.cfg.graph == "batch":
            adj = self._links(text, text, exclude_diagonal=False)
            if not self.dims.text_is_bow:
                adj |= torch.eye(text.shape[0], dtype=torch.bool, device=text.device)
            return self.text_encoder.over_batch(text, adj)  # (m, k)
        if not bool(self.bank_valid.any()):
            raise ConfigError("ccah anchor bank is empty: train the method first (the loop fills it in "
                              "on_epoch_start) or load a checkpoint that holds it")
        bank = self.bank_text[self.bank_valid]  # (B, d_t)
        return self.text_encoder.over_bank(text, bank, self._links(text, bank, exclude_diagonal=False),
                                           self._links(bank, bank, exclude_diagonal=True))

    # -- the method ----------------------------------------------------------------------------------

    def _alpha(self, epoch: int) -> float:
        return tanh_slope(epoch) if self.cfg.continuation else 1.0

    def loss_terms(self, batch: FeatureBatch, epoch: int) -> dict[str, Tensor]:
        alpha = self._alpha(epoch)
        c_i = self.image_hash(self.image_net(batch.image), alpha)  # (m, k)
        c_t = torch.tanh(alpha * self._text_preactivation(batch.text))  # (m, k)
        text_hat = torch.sigmoid(self.image_decoder(c_i))  # (m, d_t) t̂: continuous code, gradients flow
        image_hat = torch.sigmoid(self.text_decoder(c_t))  # (m, 1024) î
        k = self.cfg.similarity_scale
        c_img = losses.cosine_similarity_matrix(batch.image)  # (m, m) C_I
        c_txt = losses.cosine_similarity_matrix(batch.text)  # (m, m) C_T
        s_i, s_t = 2.0 * c_img - 1.0, 2.0 * c_txt - 1.0
        s = losses.joint_similarity(s_i, s_t, beta=self.cfg.image_share, mu=k)  # K (a S_I + (1 − a) S_T)
        return {
            **losses.semantic_alignment_terms(c_i, c_t, s, s_i, s_t, k),
            "reconstruction_image": losses.similarity_mse(image_hat, image_hat, c_img),  # L5: cycle, image side
            "reconstruction_text": losses.similarity_mse(text_hat, text_hat, c_txt),  # L6: cycle, text side
        }

    def encode(self, features: FeatureBatch, modality: Modality) -> Tensor:
        if modality == "image":
            return self.image_hash(self.image_net(features.image))  # (m, k), α = 1
        if modality == "text":
            return torch.tanh(self._text_preactivation(features.text))
        raise ValueError(f"unknown modality {modality!r}; use 'image' or 'text'")
