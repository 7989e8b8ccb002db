"""Building blocks shared by the hashing methods (no registry, no method imports).

- :func:`tanh_slope`: the "continuation" slope α = √(epoch + 1) of DJSRH/DSAH/JDSH/CCAH (methods.md §0).
- :class:`HashHead`: ``Linear → tanh(α·h)``, the hash layer of the DJSRH family.
- :func:`mlp`: a plain ``Linear → ReLU (→ Dropout)`` stack.
- :class:`NormalisedHashMLP`: UCMFH's ImageMlp/TextMlp (methods.md §6.2), one class for both modalities.
- :class:`DenseGraphAttention`: the dense pyGAT layer CCAH uses (methods.md §5.2), with queries and keys
  allowed to differ so a node can attend over a fixed bank of other nodes.
- :class:`FusionTransformer`: UCMFH's fusion encoder over ``concat[f_image, f_text]`` (methods.md §6.2),
  one token per sample in training and encoding alike.

Why a dense attention layer rather than ``torch_geometric.nn.GATConv``: CCAH's graphs are small and
dense (one mini-batch or a few hundred bank nodes, most pairs of tag sets overlap), where the dense
layer was measured 6× faster on the CPU (ecosystem.md §6: 3.6 ms vs 18.7 ms forward+backward for a
128-node batch graph); it needs no extra dependency, and it reproduces the reference's masking
(``-9e15`` logits) and initialisation exactly.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["tanh_slope", "HashHead", "mlp", "NormalisedHashMLP", "DenseGraphAttention", "FusionTransformer"]

_MASKED_LOGIT = -9e15  # pyGAT's fill value: an all-masked row becomes a uniform softmax, as in the reference


def tanh_slope(epoch: int) -> float:
    """α = √(epoch + 1) for a 0-indexed epoch (DJSRH ``set_alpha``; methods.md §0)."""
    return math.sqrt(epoch + 1.0)


class HashHead(nn.Module):
    """``c = tanh(α · (W x + b))``: (m, in_features) -> relaxed codes (m, bits) in (−1, 1)."""

    def __init__(self, in_features: int, bits: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, bits)

    def forward(self, x: Tensor, alpha: float = 1.0) -> Tensor:
        return torch.tanh(alpha * self.linear(x))


def mlp(in_features: int, hidden: Sequence[int], out_features: int | None = None, *,
        dropout: float = 0.0) -> nn.Sequential:
    """``[Linear → ReLU (→ Dropout)] × len(hidden)`` then an optional output ``Linear`` (no activation).

    With ``hidden = ()`` and ``out_features = None`` this is the identity. Input (m, in_features); output
    (m, out_features or hidden[-1] or in_features).
    """
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    if out_features is not None:
        layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class NormalisedHashMLP(nn.Module):
    """UCMFH hash MLP (ImageMlp = TextMlp, methods.md §6.2):
    ``norm(x) → Linear(in, hidden) → ReLU → Dropout(p) → Linear(hidden, bits) → tanh → norm``.

    (m, in_features) -> (m, bits), rows of unit length; the signs are the hash bits.
    """

    def __init__(self, in_features: int, bits: int, *, hidden: int = 4096, dropout: float = 0.3) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, hidden)
        self.dropout = nn.Dropout(dropout)
        self.to_hash = nn.Linear(hidden, bits)

    def forward(self, x: Tensor) -> Tensor:
        hid = F.relu(self.fc(F.normalize(x, dim=1)))  # (m, hidden)
        return F.normalize(torch.tanh(self.to_hash(self.dropout(hid))), dim=1)  # (m, bits)


class DenseGraphAttention(nn.Module):
    """Dense graph attention (Veličković et al. 2018; pyGAT ``GraphAttentionLayer`` as used by CCAH,
    methods.md §5.2), with ``heads`` independent heads computed in one matmul.

    For queries ``h_q`` (m, in), keys ``h_k`` (n, in) and a mask (m, n) with True where query i may
    attend to key j, each head computes ``Wh = h W`` and
    ``e_ij = LeakyReLU_{0.2}(a₁ᵀ Wh_q,i + a₂ᵀ Wh_k,j)``, masked entries set to −9e15,
    ``att = Dropout(softmax_j(e))`` and ``h'_i = Σ_j att_ij Wh_k,j``.
    ``concat=True`` returns ELU of the heads concatenated, (m, heads·out); ``concat=False`` returns the
    mean of the heads without activation, (m, out) (pyGAT's output layer, one head).
    A graph layer in the usual sense is ``layer(h, h, adj)``. With ``self_loop=True`` every query also
    attends to itself as one extra, never-masked key (``e_ii = LeakyReLU(a₁ᵀ Wh_q,i + a₂ᵀ Wh_q,i)``): a
    node attending over "itself plus its neighbours in a fixed bank", whose output depends on no other query.
    """

    def __init__(self, in_features: int, out_features: int, *, heads: int = 1, dropout: float = 0.6,
                 negative_slope: float = 0.2, concat: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.heads = in_features, out_features, heads
        self.dropout, self.negative_slope, self.concat = dropout, negative_slope, concat
        self.weight = nn.Parameter(torch.empty(heads, in_features, out_features))
        self.att_query = nn.Parameter(torch.empty(heads, out_features))
        self.att_key = nn.Parameter(torch.empty(heads, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # pyGAT: W (in, out) and a (2·out, 1) xavier-uniform with gain 1.414, per head
        for h in range(self.heads):
            nn.init.xavier_uniform_(self.weight.data[h], gain=1.414)
            a = torch.empty(2 * self.out_features, 1)
            nn.init.xavier_uniform_(a, gain=1.414)
            self.att_query.data[h] = a[: self.out_features, 0]
            self.att_key.data[h] = a[self.out_features:, 0]

    def forward(self, h_query: Tensor, h_keys: Tensor, mask: Tensor, *, self_loop: bool = False) -> Tensor:
        if mask.shape != (h_query.shape[0], h_keys.shape[0]):
            raise ValueError(f"attention mask must be (m, n) = ({h_query.shape[0]}, {h_keys.shape[0]}), "
                             f"got {tuple(mask.shape)}")
        wh_q = torch.einsum("mi,hio->hmo", h_query, self.weight)  # (heads, m, out)
        wh_k = torch.einsum("ni,hio->hno", h_keys, self.weight)  # (heads, n, out)
        score_q = (wh_q * self.att_query[:, None, :]).sum(-1)  # (heads, m): a₁ᵀ Wh_q
        score_k = (wh_k * self.att_key[:, None, :]).sum(-1)  # (heads, n): a₂ᵀ Wh_k
        e = F.leaky_relu(score_q[:, :, None] + score_k[:, None, :], self.negative_slope)  # (heads, m, n)
        e = e.masked_fill(~mask[None].bool(), _MASKED_LOGIT)
        if self_loop:
            score_self = (wh_q * self.att_key[:, None, :]).sum(-1)  # (heads, m): a₂ᵀ Wh_q
            e_self = F.leaky_relu(score_q + score_self, self.negative_slope)[:, :, None]  # (heads, m, 1)
            att = F.dropout(torch.softmax(torch.cat([e_self, e], dim=-1), dim=-1), self.dropout,
                            training=self.training)  # (heads, m, 1 + n)
            out = att[..., :1] * wh_q + att[..., 1:] @ wh_k  # (heads, m, out)
        else:
            att = F.dropout(torch.softmax(e, dim=-1), self.dropout, training=self.training)  # (heads, m, n)
            out = att @ wh_k  # (heads, m, out)
        if self.concat:
            return F.elu(out.permute(1, 0, 2).reshape(h_query.shape[0], self.heads * self.out_features))
        return out.mean(dim=0)  # (m, out)


class FusionTransformer(nn.Module):
    """UCMFH's fusion encoder (methods.md §6.2): ``num_layers`` post-norm ``TransformerEncoderLayer``s
    (ReLU feed-forward) applied to each sample's fused vector as a **sequence of one token**.

    (m, d_model) -> (m, d_model), not normalised (the caller normalises and splits). With one token
    per sample, attention is over the sample itself, so no sample sees another and the output does
    not depend on how rows are batched. This is what UCMFH's training does; its evaluation instead
    attends across the 128 items of a batch (methods.md §14 UCMFH 1), which is not reproduced.
    """

    def __init__(self, d_model: int, *, nhead: int = 4, num_layers: int = 2, dim_feedforward: int = 2048,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"fusion width {d_model} is not divisible by {nhead} heads")
        layer = nn.TransformerEncoderLayer(d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward,
                                           dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x.unsqueeze(1)).squeeze(1)  # (m, 1, d_model): m sequences of one token
