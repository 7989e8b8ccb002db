"""Building blocks shared by the hashing methods (no registry, no method imports).

- :func:`tanh_slope`: the "continuation" slope α = √(epoch + 1) of DJSRH/DSAH/JDSH/CCAH.
- :class:`HashHead`: ``Linear → tanh(α·h)``, the hash layer of the DJSRH family.
- :func:`mlp`: a plain ``Linear → ReLU (→ Dropout)`` stack.
- :class:`NormalisedHashMLP`: UCMFH's ImageMlp/TextMlp, one class for both modalities.
- :class:`DenseGraphAttention`: the dense pyGAT layer CCAH uses.
- :class:`FusionTransformer`: UCMFH's fusion encoder over ``concat[f_image, f_text]``,
  one token per sample in training and encoding alike.
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
    """α = √(epoch + 1) for a 0-indexed epoch (DJSRH ``set_alpha``)."""
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
    """UCMFH hash MLP (ImageMlp = TextMlp):
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
    """Dense graph attention (Veličković et al. 2018): pyGAT's ``GraphAttentionLayer`` as CCAH uses it,
    ``heads`` heads in one module.

    For node features ``h`` (N, in) and a mask ``adj`` (N, N) with True where node i attends to node j,
    each head computes ``Wh = h W`` and ``e_ij = LeakyReLU_{0.2}(a₁ᵀ Wh_i + a₂ᵀ Wh_j)``, masked entries
    set to −9e15 (so a row with no edge becomes a uniform softmax over all N nodes, as in the reference),
    ``att = Dropout(softmax_j(e))`` and ``h'_i = Σ_j att_ij Wh_j``. ``concat=True`` returns ELU of the
    heads concatenated, (N, heads·out); ``concat=False`` the mean of the heads without activation,
    (N, out) (pyGAT's output layer, one head). ``sparse_input=True`` gives the same result for inputs
    that are mostly zero (a bag of words) at a lower cost on the CPU.

    Each head keeps its own (in, out) weight and is one ``mm``, as in pyGAT. CCAH's first layer is
    1386 × 8 × 1024 weights applied to 16 rows, so a step is bound by memory traffic over the weights
    (forward, gradient, weight decay, momentum). CPU time per training step of CCAH's text encoder
    (16 texts, SGD, one thread, shared machine): pyGAT 57–70 ms; this layer 58–76 ms, and 32–44 ms with
    ``sparse_input``; ``torch_geometric``'s ``DenseGATConv`` (same computation, one (in, heads·out)
    matrix) 154 ms and ``GATConv`` (sparse edges) 158–172 ms; an einsum over a (heads, in, out) tensor
    290–416 ms. So the hand-written layer is kept.
    Initialisation is pyGAT's: xavier-uniform with gain 1.414 per head.
    """

    def __init__(self, in_features: int, out_features: int, *, heads: int = 1, dropout: float = 0.6,
                 negative_slope: float = 0.2, concat: bool = True, sparse_input: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.heads = in_features, out_features, heads
        self.sparse_input = sparse_input  # inputs mostly zero (a bag of words): multiply only the used rows of W
        self.dropout, self.negative_slope, self.concat = dropout, negative_slope, concat
        self.weight = nn.ParameterList(nn.Parameter(torch.empty(in_features, out_features)) for _ in range(heads))
        self.att = nn.ParameterList(nn.Parameter(torch.empty(2 * out_features, 1)) for _ in range(heads))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w, a in zip(self.weight, self.att):  # pyGAT: W (in, out) and a (2·out, 1), gain 1.414
            nn.init.xavier_uniform_(w, gain=1.414)
            nn.init.xavier_uniform_(a, gain=1.414)

    def forward(self, h: Tensor, adj: Tensor) -> Tensor:
        n = h.shape[0]
        if adj.shape != (n, n):
            raise ValueError(f"adjacency mask must be (N, N) = ({n}, {n}), got {tuple(adj.shape)}")
        masked = ~adj.bool()
        # Rows of W whose input column is zero for every node contribute nothing. For a bag of words
        # (16 texts use a few dozen of 1,386 tags) multiplying by the used rows only skips reading W in
        # the forward pass and a dense product in the backward pass: a CCAH step measured ~40% cheaper.
        # CPU only: finding the used rows (nonzero) would be a host synchronisation per step on a GPU.
        gather = self.sparse_input and h.device.type == "cpu"
        used = (h != 0).any(dim=0).nonzero().squeeze(1) if gather else None
        if used is not None and used.numel() > h.shape[1] // 2:
            used = None  # dense enough that the plain product is cheaper
        if used is not None:
            h = h.index_select(1, used)
        outs = []
        for w, a in zip(self.weight, self.att):
            wh = h @ (w if used is None else w.index_select(0, used))  # (N, out)
            scores = wh @ a.view(2, self.out_features).T  # (N, 2): a₁ᵀ Wh_i, a₂ᵀ Wh_j
            e = F.leaky_relu(scores[:, :1] + scores[:, 1:].T, self.negative_slope)  # (N, N)
            att = torch.softmax(e.masked_fill(masked, _MASKED_LOGIT), dim=1)
            outs.append(F.dropout(att, self.dropout, training=self.training) @ wh)  # (N, out)
        if self.concat:
            return F.elu(torch.cat(outs, dim=1))  # (N, heads·out)
        return outs[0] if len(outs) == 1 else torch.stack(outs).mean(dim=0)  # (N, out)


class _LiveRowsLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` computed for the rows ``live`` only (the others are returned as
    zeros), for inputs whose other rows are discarded downstream, so their output gradient is exactly
    zero. Bit for bit the same as the full product on the live rows, in the outputs and in every gradient:
    each output row and each input-gradient row is computed independently of the other rows, while the
    weight and bias gradients are sums over the rows, so they are taken over all rows (the dead ones add
    exact zeros) to keep the grouping of the sums, and their rounding, unchanged.

    With ``value_of_packed=True``, ``weight`` (3E, E) and ``bias`` (3E,) are ``nn.MultiheadAttention``'s
    packed query/key/value projection and only its value third is computed: the gradients are those of
    the packed projection when the query and key gradients are exactly zero (attention over one token),
    i.e. zero query/key rows, and the input gradient is the packed product with zero query/key columns (a
    product over E instead of 3E terms would group the sums differently and round differently).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, live: Tensor | None,
                value_of_packed: bool) -> Tensor:
        ctx.save_for_backward(x, weight, live)
        ctx.value_of_packed = value_of_packed
        w, b = (weight[2 * x.shape[1]:], bias[2 * x.shape[1]:]) if value_of_packed else (weight, bias)
        if live is None:
            return F.linear(x, w, b)
        out = x.new_zeros(x.shape[0], w.shape[0])
        return out.index_copy_(0, live, F.linear(x.index_select(0, live), w, b))

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, live = ctx.saved_tensors
        e = x.shape[1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            rows = grad if live is None else grad.index_select(0, live)
            if ctx.value_of_packed:
                rows = torch.cat([rows.new_zeros(rows.shape[0], 2 * e), rows], dim=1)  # (·, 3E)
            rows = rows.mm(weight)  # as AddmmBackward: grad @ W
            grad_x = rows if live is None else torch.zeros_like(x).index_copy_(0, live, rows)
        if ctx.needs_input_grad[1]:
            grad_w = grad.t().mm(x)  # as AddmmBackward: gradᵀ @ x, over all rows
            if ctx.value_of_packed:
                grad_w = torch.cat([grad_w.new_zeros(2 * e, e), grad_w])
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
            if ctx.value_of_packed:
                grad_b = torch.cat([grad_b.new_zeros(2 * e), grad_b])
        return grad_x, grad_w, grad_b, None, None


def _one_token_layer(layer: nn.TransformerEncoderLayer, x: Tensor, live: Tensor | None = None) -> Tensor:
    """``layer`` (post-norm, ReLU, batch_first, training mode) on m sequences of one token x (m, E):
    the same numbers and random draws as ``layer(x.unsqueeze(1)).squeeze(1)``, without the work whose
    result is known. Over a single key the attention softmax is exactly 1, so the attention output is
    the value projection with each head kept or zeroed (and rescaled) by the attention dropout, and the
    query/key projections get exactly zero gradient: they are not computed. The attention dropout
    still draws its (m, heads, 1, 1) mask from the RNG, in the same place in the sequence of draws.

    ``live`` (row indices, or None for all): the products are computed for these rows only; the other
    rows of the result are meaningless and must not reach the loss (see :class:`_LiveRowsLinear`).
    The element-wise steps (dropout, norms) still run on every row, so the random draws are unchanged.
    """
    attn = layer.self_attn
    m, e = x.shape
    heads = attn.num_heads

    def linear(inputs: Tensor, module: nn.Linear) -> Tensor:
        return _LiveRowsLinear.apply(inputs, module.weight, module.bias, live, False)

    v = _LiveRowsLinear.apply(x, attn.in_proj_weight, attn.in_proj_bias, live, True)  # (m, E)
    keep = F.dropout(x.new_ones(m, heads, 1, 1), attn.dropout, training=True)  # (m, heads, 1, 1): 0 or 1/(1-p)
    mixed = (v.view(m, heads, e // heads) * keep.view(m, heads, 1)).view(m, e)  # attention weights @ v
    x = layer.norm1(x + layer.dropout1(linear(mixed, attn.out_proj)))
    return layer.norm2(x + layer.dropout2(linear(layer.dropout(layer.activation(linear(x, layer.linear1))),
                                                 layer.linear2)))


class FusionTransformer(nn.Module):
    """UCMFH's fusion encoder: ``num_layers`` post-norm ``TransformerEncoderLayer``s
    (ReLU feed-forward) applied to each sample's fused vector as a **sequence of one token**.

    (m, d_model) -> (m, d_model), not normalised (the caller normalises and splits). With one token
    per sample, attention is over the sample itself, so no sample sees another and the output does
    not depend on how rows are batched. This is what UCMFH's training does; its evaluation instead
    attends across the 128 items of a batch, which is not reproduced.

    In training on the CPU (with dropout > 0, the default) the layers run through :func:`_one_token_layer`, which
    skips the query/key projections (their output cannot change a softmax over one key) and gives
    bit-identical outputs, gradients and random draws (tests/train/test_layers.py); about 17% less time
    per training step of this encoder. In evaluation the stock modules run (PyTorch's fused inference path).
    """

    def __init__(self, d_model: int, *, nhead: int = 4, num_layers: int = 2, dim_feedforward: int = 2048,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"fusion width {d_model} is not divisible by {nhead} heads")
        layer = nn.TransformerEncoderLayer(d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward,
                                           dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)

    def forward(self, x: Tensor, live: Tensor | None = None) -> Tensor:
        """x (m, d_model) -> (m, d_model). ``live`` (indices of rows, training only): the rows whose output
        is used; the other rows of the output are then meaningless and must be discarded by the caller (in
        evaluation every row is computed)."""
        # CPU only: on a GPU the attention kernels draw their dropout masks differently. With attention
        # dropout 0, PyTorch takes another attention kernel whose gradients differ in the last bits.
        if self.training and x.device.type == "cpu" and self.encoder.layers[0].self_attn.dropout > 0:
            for layer in self.encoder.layers:
                x = _one_token_layer(layer, x, live)
            return x
        return self.encoder(x.unsqueeze(1)).squeeze(1)  # (m, 1, d_model): m sequences of one token
