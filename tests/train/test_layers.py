"""Shared blocks in stages/train/layers.py."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stages.train.layers import DenseGraphAttention, FusionTransformer, HashHead, NormalisedHashMLP, mlp, tanh_slope


def test_tanh_slope_is_sqrt_epoch_plus_one():
    assert [tanh_slope(e) for e in (0, 3, 8)] == [1.0, 2.0, 3.0]


def test_hash_head_applies_the_slope_inside_tanh():
    torch.manual_seed(0)
    head = HashHead(3, 4)
    x = torch.randn(5, 3)
    torch.testing.assert_close(head(x, alpha=2.5), torch.tanh(2.5 * head.linear(x)))
    assert head(x, alpha=100.0).abs().min() > head(x).abs().min()


def test_mlp_shapes_and_identity():
    x = torch.randn(4, 6)
    assert torch.equal(mlp(6, ())(x), x)
    assert mlp(6, (8, 5), 3)(x).shape == (4, 3)
    assert mlp(6, (8,))(x).shape == (4, 8) and (mlp(6, (8,))(x) >= 0).all()  # ends in ReLU without an output layer


def test_normalised_hash_mlp_rows_have_unit_length():
    out = NormalisedHashMLP(6, 8, hidden=16).eval()(torch.randn(5, 6))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))


def _pygat_reference(layer: DenseGraphAttention, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """pyGAT GraphAttentionLayer.forward (one head) written out with loops over nodes."""
    w, a1, a2 = layer.weight[0].detach(), layer.att_query[0].detach(), layer.att_key[0].detach()
    wh = h @ w
    n = h.shape[0]
    out = torch.zeros(n, w.shape[1], dtype=h.dtype)
    for i in range(n):
        e = torch.stack([F.leaky_relu(wh[i] @ a1 + wh[j] @ a2, 0.2) if adj[i, j] > 0
                         else torch.tensor(-9e15, dtype=h.dtype) for j in range(n)])
        att = torch.softmax(e, dim=0)
        out[i] = att @ wh
    return F.elu(out)


def test_dense_graph_attention_matches_pygat():
    torch.manual_seed(1)
    layer = DenseGraphAttention(5, 3, heads=1, dropout=0.0).double().eval()
    h = torch.randn(6, 5, dtype=torch.float64)
    adj = torch.rand(6, 6) > 0.5
    adj[2] = False  # an isolated node: uniform attention, as in the reference
    torch.testing.assert_close(layer(h, h, adj).detach(), _pygat_reference(layer, h, adj))


def test_self_loop_equals_attending_over_self_plus_keys():
    torch.manual_seed(2)
    layer = DenseGraphAttention(5, 3, heads=4, dropout=0.0, concat=False).double().eval()
    queries, bank = torch.randn(3, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    mask = torch.rand(3, 7) > 0.5
    out = layer(queries, bank, mask, self_loop=True)
    for i in range(3):
        keys = torch.cat([queries[i:i + 1], bank])
        row_mask = torch.cat([torch.tensor([True]), mask[i]])[None]
        torch.testing.assert_close(out[i:i + 1], layer(queries[i:i + 1], keys, row_mask))


def test_heads_are_concatenated_or_averaged():
    layer = DenseGraphAttention(5, 3, heads=4, dropout=0.0)
    h, adj = torch.randn(6, 5), torch.ones(6, 6, dtype=torch.bool)
    assert layer(h, h, adj).shape == (6, 12)
    layer.concat = False
    assert layer(h, h, adj).shape == (6, 3)
    with pytest.raises(ValueError, match="mask"):
        layer(h, h, adj[:5])


def test_fusion_transformer_rows_never_interact():
    torch.manual_seed(3)
    fusion = FusionTransformer(16, nhead=4, num_layers=2, dim_feedforward=32).eval()
    x = torch.randn(9, 16)
    with torch.no_grad():
        whole = fusion(x)
        one_by_one = torch.cat([fusion(x[i:i + 1]) for i in range(9)])
    torch.testing.assert_close(whole, one_by_one, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="divisible"):
        FusionTransformer(10, nhead=4)
    assert math.isfinite(float(whole.sum()))
