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


def _pygat_reference(layer: DenseGraphAttention, h: torch.Tensor, adj: torch.Tensor, head: int = 0) -> torch.Tensor:
    """pyGAT GraphAttentionLayer.forward (one head, before ELU) written out with loops over nodes."""
    w, a = layer.weight[head].detach(), layer.att[head].detach()[:, 0]
    a1, a2 = a[: w.shape[1]], a[w.shape[1]:]
    wh = h @ w
    n = h.shape[0]
    out = torch.zeros(n, w.shape[1], dtype=h.dtype)
    for i in range(n):
        e = torch.stack([F.leaky_relu(wh[i] @ a1 + wh[j] @ a2, 0.2) if adj[i, j] > 0
                         else torch.tensor(-9e15, dtype=h.dtype) for j in range(n)])
        att = torch.softmax(e, dim=0)
        out[i] = att @ wh
    return out


def test_dense_graph_attention_matches_pygat():
    torch.manual_seed(1)
    layer = DenseGraphAttention(5, 3, heads=1, dropout=0.0).double().eval()
    h = torch.randn(6, 5, dtype=torch.float64)
    adj = torch.rand(6, 6) > 0.5
    adj[2] = False  # an isolated node: uniform attention, as in the reference
    torch.testing.assert_close(layer(h, adj).detach(), F.elu(_pygat_reference(layer, h, adj)))


def test_sparse_input_gives_the_dense_result_and_gradient():
    torch.manual_seed(4)
    dense = DenseGraphAttention(30, 4, heads=3, dropout=0.0).double()
    sparse = DenseGraphAttention(30, 4, heads=3, dropout=0.0, sparse_input=True).double()
    sparse.load_state_dict(dense.state_dict())
    adj = torch.rand(5, 5) > 0.3
    for h in ((torch.rand(5, 30) < 0.05).double(), torch.rand(5, 30, dtype=torch.float64)):  # few / all columns used
        outs = [layer(h, adj) for layer in (dense, sparse)]
        torch.testing.assert_close(outs[0], outs[1])
        grads = [torch.autograd.grad(o.sum(), list(layer.weight)) for o, layer in zip(outs, (dense, sparse))]
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b)


def test_heads_are_concatenated_or_averaged():
    torch.manual_seed(2)
    layer = DenseGraphAttention(5, 3, heads=4, dropout=0.0).double().eval()
    h, adj = torch.randn(6, 5, dtype=torch.float64), torch.rand(6, 6) > 0.4
    heads = [_pygat_reference(layer, h, adj, head=i) for i in range(4)]
    torch.testing.assert_close(layer(h, adj).detach(), F.elu(torch.cat(heads, dim=1)))
    layer.concat = False
    torch.testing.assert_close(layer(h, adj).detach(), torch.stack(heads).mean(dim=0))
    with pytest.raises(ValueError, match="adjacency"):
        layer(h, adj[:5])


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


def _stock_and_fast(fusion: FusionTransformer, x0: torch.Tensor, seed: int, live: torch.Tensor | None = None):
    """Output, input gradient, parameter gradients and RNG state after one training step of the stock
    ``nn.TransformerEncoder`` on m one-token sequences and of FusionTransformer's training path (which
    may compute the rows ``live`` only; the loss then reads those rows only)."""
    results = []
    rows = torch.arange(x0.shape[0]) if live is None else live
    for stock in (True, False):
        fusion.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_(True)
        torch.manual_seed(seed)
        out = fusion.encoder(x.unsqueeze(1)).squeeze(1) if stock else fusion(x, live)
        out = out[rows]
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), x.grad, {n: p.grad for n, p in fusion.named_parameters()},
                        torch.get_rng_state()))
    return results


@pytest.mark.parametrize("width,rows,dropout,dead", [(64, 33, 0.1, 0), (96, 50, 0.3, 0), (256, 40, 0.1, 0),
                                                     (64, 48, 0.1, 16), (256, 64, 0.1, 20)])
def test_fusion_transformer_training_path_is_bit_identical_to_the_stock_encoder(width, rows, dropout, dead):
    torch.manual_seed(0)
    fusion = FusionTransformer(width, nhead=4, num_layers=2, dim_feedforward=2 * width, dropout=dropout).train()
    with torch.no_grad():  # non-zero biases, as after some training
        for p in fusion.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x0 = torch.randn(rows, width)
    live = torch.randperm(rows)[dead:].sort().values if dead else None
    for seed in range(3):
        (out, x_grad, grads, rng), (out2, x_grad2, grads2, rng2) = _stock_and_fast(fusion, x0, seed, live)
        assert torch.equal(out, out2) and torch.equal(x_grad, x_grad2) and torch.equal(rng, rng2)
        assert [n for n in grads if not torch.equal(grads[n], grads2[n])] == []
    in_proj = fusion.encoder.layers[0].self_attn.in_proj_weight
    assert not in_proj.grad[:2 * width].any()  # query/key rows: exactly zero, as in the stock encoder
