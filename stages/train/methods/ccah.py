"""CCAH: CLIP-based Cycle Alignment Hashing (Li, Li, Ge, Ma; Int. J. Intelligent Systems 2023, 7992047).

Reference code: github.com/CQYIO/CCAH (``CCAH/models.py``, ``CCAH/train.py``, ``CCAH/settings.py``,
``CCAH/pygat/layers.py``). The code is the authority (most of the paper's equations are lost); it is a
fork of DSAH.

What is learned, without labels: an image hash MLP on frozen image features, and a graph-attention
text encoder in which each text attends over the texts that share a tag with it; each code also drives
a decoder into the other modality ("cycle"), whose outputs must reproduce that modality's similarity
structure. The affinity is DSAH's ``S = K (a S_I + (1 − a) S_T)`` with ``S_X = 2 cos(F_X) − 1``; the
tanh slope α grows as √(epoch + 1).

Text graph (``train.py generate_txt_graph``): the nodes are the texts of one mini-batch of 16, with an
edge i–j iff the two texts share a tag, ``sign(T Tᵀ) > 0`` (so every tagged text links to itself). The
reference normalises A symmetrically, but the attention layer only asks ``A > 0``, so the mask is all
that is kept. A row without edges (a text without tags) attends uniformly over the batch (pyGAT's
−9e15 fill).

Loss terms (``train.py``; B = norm(c), C_X = cos(F_X)):
``text_text`` L1 = MSE(B_T B_Tᵀ, S), ``image_text`` L2 = MSE(B_I B_Tᵀ, S), ``image_image`` L3 = MSE(B_I B_Iᵀ, S),
``image_alignment`` L31 = MSE(B_I B_Iᵀ, K S_I), ``text_alignment`` L32 = MSE(B_T B_Tᵀ, K S_T),
``diagonal`` L4 = MSE(diag(B_I B_Tᵀ), K·1), ``reconstruction_image`` L5 = MSE(cos(î), C_I) with
î = sigmoid(dec_T(c_T)), ``reconstruction_text`` L6 = MSE(cos(t̂), C_T) with t̂ = sigmoid(dec_I(c_I)),
``symmetry`` L7 = MSE(B_I B_Tᵀ, (B_I B_Tᵀ)ᵀ);
total (final train.py) L1 + L2 + L3 + L4 + L5 + L6 + 2 L7 + η (L31 + L32), K = 1.5, a = 0.9, η = 0.1.
Training is the reference's in both graph modes: the graph over each shuffled mini-batch of 16
(``drop_last``), SGD with Nesterov momentum 0.7, weight decay 5e-4, learning rate 0.005. Given the
same weights and batch with dropout off, the loss terms and the weights after a few SGD steps agree
with ``train.py``'s to float precision, and ``graph="batch"`` scores as the reference code does on the
same features (the measurements: docs/method-checks.md).

**Deviations**
- Text graph at encode time (``graph``). The reference encodes in fixed-order batches of 16 with the
  graph over each batch, so a text's code depends on the 15 texts that happen to share its evaluation
  batch. Default ``graph="anchors"`` [inferred]: a fixed set of ``anchors`` training texts stands in for
  the batch mates. At encode time the graph has the anchors and the texts as nodes; anchors link to
  anchors that share a tag with them, each text links to itself and to the anchors that share a tag
  with it, and no text links to another text, so a text's code depends only on the text and the
  anchors, never on how the rows are batched. The anchors are drawn once, at the start of training,
  from the training texts with the run's seeded RNG, and are saved with the weights. ``anchors = 0``
  leaves each text alone with itself. The number of anchors is chosen on the validation split
  (validation pairs ranked against the training pairs; never the query set): ``anchors = 0`` scored
  best of 0, 15 and 63 (docs/method-checks.md has the table). ``graph = "batch"`` is not a candidate
  for the default, since a code would then depend on its batch mates. Our reading [inferred]: a fixed
  anchor set pulls every text that shares a tag with an anchor towards that anchor, the same pull for
  thousands of texts, so more anchors blur the codes, whereas the reference's batch mates are a fresh
  random draw for each batch.
  With ``anchors = 0`` a text's graph at encode time is the text alone (attention weight 1 on itself),
  so the encoder needs no stored texts; training still sees the batch graph.
  ``graph="batch"`` is the reference: encode in fixed-order batches of ``batch_size`` (16) of the rows
  handed to ``encode``, the graph over each batch.
- A text or anchor without any tag attends to itself and every anchor at encode time [inferred] (the
  reference spreads it uniformly over its batch). MIRFlickr-20,015 has no such text.
- Text graph edges for text features that are not a bag of words (``dims.text_is_bow`` false, e.g.
  CLIP text embeddings): each text links to itself and its ``neighbours`` most cosine-similar texts
  among the batch (training, ``graph="batch"``) or the anchors (``graph="anchors"``) [inferred].
- Inputs are cached image features (extracted once), not ImageNet-normalised random crops through CLIP
  at every step. F_I for S_I is that cached feature, as in the reference (FeatNet_I is the same frozen
  CLIP).
- No model selection on the query set (the reference keeps the test-best epoch); the last epoch is kept.
- Codes from ``encode`` use α = 1 (only the sign is kept).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.ground.errors import ConfigError
from stages.train import losses
from stages.train.base import FeatureBatch, FeatureDims, HashingMethod, MethodConfig, register_method
from stages.train.layers import DenseGraphAttention, HashHead, mlp, tanh_slope

GRAPHS = ("anchors", "batch")


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
    graph: str = "anchors"  # [inferred] encode-time graph: "anchors" (batch-independent) | "batch" (the reference)
    anchors: int = 0  # [inferred] training texts standing in for the batch mates; 0 chosen on validation
    neighbours: int = 8  # [inferred] links per text when the text features are not a bag of words
    lr: float = 0.005  # settings.py LR_IMG = LR_TXT (first commit: 0.01)
    optimizer: str = "sgd"  # train.py: SGD, Nesterov
    momentum: float = 0.7  # settings.py MOMENTUM
    nesterov: bool = True  # train.py
    weight_decay: float = 5e-4  # settings.py WEIGHT_DECAY
    batch_size: int = 16  # settings.py BATCH_SIZE; paper "batch 16"; also the graph size
    epochs: int = 200  # settings.py NUM_EPOCH (first commit: 100)
    weights: Mapping[str, float] = field(  # train.py: 1·L1..L6 + 2·L7 + ETA·(L31 + L32), ETA = 0.1 (1st commit: 0.2)
        default_factory=lambda: {"text_text": 1.0, "image_text": 1.0, "image_image": 1.0, "diagonal": 1.0,
                                 "reconstruction_image": 1.0, "reconstruction_text": 1.0, "symmetry": 2.0,
                                 "image_alignment": 0.1, "text_alignment": 0.1})


PRESETS: dict[str, dict[str, Any]] = {  # the reference runs MIRFlickr only (its other datasets crash)
    "mirflickr": {},
    "nuswide": {},  # [inferred] MIRFlickr's values
    "coco": {},  # [inferred] MIRFlickr's values
}


class GraphAttentionTextEncoder(nn.Module):
    """CCAH's GATNet (models.py): Dropout → 8-head GAT (d_t → 1024 each, ELU, concatenated) → Dropout →
    1-head GAT (8192 → k, no activation). Text (N, d_t) and edges (N, N) -> pre-activation h_T (N, k)."""

    def __init__(self, text_dim: int, bits: int, *, hidden: int, heads: int, dropout: float,
                 negative_slope: float, sparse_input: bool = False) -> None:
        super().__init__()
        self.dropout = dropout
        self.hidden = DenseGraphAttention(text_dim, hidden, heads=heads, dropout=dropout,
                                          negative_slope=negative_slope, concat=True, sparse_input=sparse_input)
        self.output = DenseGraphAttention(hidden * heads, bits, heads=1, dropout=dropout,
                                          negative_slope=negative_slope, concat=False)

    def forward(self, text: Tensor, adj: Tensor) -> Tensor:
        x = F.dropout(text, self.dropout, training=self.training)
        h = F.dropout(self.hidden(x, adj), self.dropout, training=self.training)  # (N, heads·hidden)
        return self.output(h, adj)  # (N, k)


@register_method("ccah", config=CCAHConfig, dataset_presets=PRESETS)
class CCAH(HashingMethod):
    """CCAH: CLIP image MLP + tag-graph attention text encoder with cycle alignment (Li et al., IJIS 2023)."""

    def __init__(self, cfg: CCAHConfig, dims: FeatureDims, bits: int) -> None:
        super().__init__(cfg, dims, bits)
        if cfg.graph not in GRAPHS:
            raise ConfigError(f"ccah graph={cfg.graph!r}; use one of {', '.join(GRAPHS)}")
        if cfg.anchors < 0:
            raise ConfigError(f"ccah anchors must be >= 0 (0: each text alone), got {cfg.anchors}")
        self.image_net = mlp(dims.image, (cfg.image_hidden,))  # (m, d_i) -> (m, 1024)
        self.image_hash = HashHead(cfg.image_hidden, bits)
        self.image_decoder = nn.Linear(bits, dims.text)  # c_I -> t̂ (ImgNet.decode, then sigmoid)
        self.text_encoder = GraphAttentionTextEncoder(
            dims.text, bits, hidden=cfg.gat_hidden, heads=cfg.gat_heads, dropout=cfg.gat_dropout,
            negative_slope=cfg.gat_negative_slope, sparse_input=dims.text_is_bow)
        self.text_decoder = nn.Linear(bits, cfg.image_decoder_width)  # c_T -> î (GATNet.decode, then sigmoid)
        # the anchors are saved with the weights so encoding after loading sees the same graph
        self.register_buffer("anchor_text", torch.zeros(cfg.anchors if cfg.graph == "anchors" else 0, dims.text))
        self.register_buffer("anchors_drawn", torch.zeros((), dtype=torch.bool))

    # -- the text graph ------------------------------------------------------------------------------

    def on_epoch_start(self, epoch: int, train: FeatureBatch) -> None:
        """Draw the anchors once, before the first epoch, from the training texts (the run's seeded RNG).

        The permutation is drawn in every mode and for every anchor count, so the encode-time graph
        never changes the random stream, and hence the training, of a run."""
        if epoch != 0:
            return
        n = train.text.shape[0]
        order = torch.randperm(n)
        if self.cfg.graph != "anchors":
            return
        if n < self.cfg.anchors:
            raise ConfigError(f"ccah anchors={self.cfg.anchors} but the training split has {n} texts; "
                              f"set anchors to at most {n} (--set anchors={n})")
        take = order[: self.cfg.anchors].to(train.text.device)
        self.anchor_text.copy_(train.text[take].to(self.anchor_text))
        self.anchors_drawn.fill_(True)

    def links(self, text: Tensor, others: Tensor) -> Tensor:
        """(m, n) bool: text i links to other j when they share a tag (bag of words), else when j is one
        of i's ``neighbours`` most cosine-similar others (ties broken by topk)."""
        if self.dims.text_is_bow:
            return ((text > 0).float() @ (others > 0).float().T) > 0  # sign(T Tᵀ) > 0
        links = torch.zeros(text.shape[0], others.shape[0], dtype=torch.bool, device=text.device)
        k = min(self.cfg.neighbours, others.shape[0])
        if k > 0:
            links.scatter_(1, losses.cosine_similarity_matrix(text, others).topk(k, dim=1).indices, True)
        return links

    def batch_graph(self, text: Tensor) -> Tensor:
        """The reference graph over m texts (m, m): shared tags (self included for a tagged text)."""
        adj = self.links(text, text)
        if not self.dims.text_is_bow:
            adj |= torch.eye(text.shape[0], dtype=torch.bool, device=text.device)
        return adj

    def anchor_graph(self, text: Tensor) -> Tensor:
        """The encode-time graph over the nodes ``[anchors; text]`` (B + m, B + m): anchor–anchor edges
        from :meth:`batch_graph`, text → itself and text → linked anchors, nothing else. A row with no
        edge to an anchor (no tag in common with any) keeps its self-edge; a row with no edge at all
        (no tags) links to itself and every anchor."""
        anchors = self.anchor_text
        b, m = anchors.shape[0], text.shape[0]
        adj = torch.zeros(b + m, b + m, dtype=torch.bool, device=text.device)
        adj[:b, :b] = self.batch_graph(anchors)
        adj[b:, :b] = self.links(text, anchors)
        adj[b:, b:] = torch.eye(m, dtype=torch.bool, device=text.device)
        if self.dims.text_is_bow:
            tagless = ~(torch.cat([anchors, text]) > 0).any(dim=1)  # (B + m,)
            adj[tagless, :b] = True
        return adj

    def _encode_text(self, text: Tensor) -> Tensor:
        """Pre-activation h_T (m, k) at encode time."""
        if self.cfg.graph == "batch":  # the reference: fixed-order batches of batch_size
            m = self.cfg.batch_size
            return torch.cat([self.text_encoder(t, self.batch_graph(t)) for t in text.split(m)]) \
                if text.shape[0] else text.new_zeros(0, self.bits)
        if not bool(self.anchors_drawn):
            raise ConfigError("ccah anchors were never drawn: train the method first (the loop draws them "
                              "before the first epoch) or load a checkpoint that holds them")
        b = self.anchor_text.shape[0]
        nodes = torch.cat([self.anchor_text, text])  # (B + m, d_t)
        return self.text_encoder(nodes, self.anchor_graph(text))[b:]

    # -- the method ----------------------------------------------------------------------------------

    def _alpha(self, epoch: int) -> float:
        return tanh_slope(epoch) if self.cfg.continuation else 1.0

    def loss_terms(self, batch: FeatureBatch, epoch: int) -> dict[str, Tensor]:
        alpha = self._alpha(epoch)
        c_i = self.image_hash(self.image_net(batch.image), alpha)  # (m, k)
        c_t = torch.tanh(alpha * self.text_encoder(batch.text, self.batch_graph(batch.text)))  # (m, k)
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

    def encode_image(self, features: FeatureBatch) -> Tensor:
        return self.image_hash(self.image_net(features.image))  # (m, k), α = 1

    def encode_text(self, features: FeatureBatch) -> Tensor:
        return torch.tanh(self._encode_text(features.text))
