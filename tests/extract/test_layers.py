"""iSQRT-COV and strip pooling layers."""
import pytest
import torch

from stages.extract.layers import (
    ChannelProjection,
    FixedStripPoolingGate,
    ISqrtCov,
    StripPoolingGate,
    covariance_pool,
    fixed_strip_gate,
    isqrt_cov,
    newton_schulz_sqrt,
    orthogonal_projection,
    triu_vector,
)


def _spd(b: int, d: int, cond: float, seed: int = 0):
    """Random SPD matrices with eigenvalues in [1, cond], and their exact square roots (float64)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(b, d, d, generator=g, dtype=torch.float64))
    ev = 1 + (cond - 1) * torch.rand(b, d, generator=g, dtype=torch.float64)
    return q @ torch.diag_embed(ev) @ q.transpose(1, 2), q @ torch.diag_embed(ev.sqrt()) @ q.transpose(1, 2)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_newton_schulz_matches_eigendecomposition_sqrt():
    sigma, root = _spd(3, 16, cond=2.0)
    errors = [_rel(newton_schulz_sqrt(sigma, n), root) for n in (3, 5, 8, 10)]
    assert errors == sorted(errors, reverse=True), errors  # more iterations, closer
    assert errors[-1] < 1e-10  # N = 10 converges to float64 precision for d = 16, cond 2
    assert errors[1] < 5e-2  # the reference N = 5 is already a close approximation


def test_newton_schulz_float32_is_accurate_enough():
    sigma, root = _spd(2, 8, cond=3.0, seed=1)
    y = newton_schulz_sqrt(sigma.float(), 12)
    assert y.dtype == torch.float32
    assert _rel(y.double(), root) < 1e-5


def test_isqrt_cov_is_the_triu_of_the_covariance_square_root():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 6, 7, generator=g, dtype=torch.float64)  # M = 42 > d: full-rank covariance
    sigma = covariance_pool(x)
    # covariance with the centring matrix Ī = I/M − 11ᵀ/M² (step 1 of iSQRT-COV)
    feats = x.reshape(2, 5, -1)
    m = feats.shape[2]
    i_bar = torch.eye(m, dtype=torch.float64) / m - torch.full((m, m), 1.0 / m**2, dtype=torch.float64)
    torch.testing.assert_close(sigma, feats @ i_bar @ feats.transpose(1, 2))
    ev, vec = torch.linalg.eigh(sigma)
    root = vec @ torch.diag_embed(ev.clamp_min(0).sqrt()) @ vec.transpose(1, 2)
    out = isqrt_cov(x, iterations=25)
    assert out.shape == (2, 15)
    torch.testing.assert_close(out, triu_vector(root), rtol=1e-6, atol=1e-8)


def test_triu_vector_is_row_major_upper_triangle():
    a = torch.arange(9.0).reshape(1, 3, 3)
    assert triu_vector(a).tolist() == [[0.0, 1.0, 2.0, 4.0, 5.0, 8.0]]


def test_isqrt_cov_gradcheck():
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: isqrt_cov(t, iterations=3), (x,))


def test_isqrt_cov_stays_float32_under_autocast_and_backpropagates():
    layer = ISqrtCov(8, reduce_to=4, iterations=5)
    x = torch.rand(3, 8, 5, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.shape == (3, layer.out_dim) == (3, 10) and out.dtype == torch.float32
    out.square().sum().backward()
    grads = [x.grad, *(p.grad for p in layer.parameters())]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_zero_feature_map_gives_zero_not_nan():
    assert torch.equal(isqrt_cov(torch.zeros(1, 4, 3, 3)), torch.zeros(1, 10))


def test_fixed_strip_gate_keeps_shape_and_is_a_gate():
    x = torch.rand(2, 6, 13, 13) * 5
    out = FixedStripPoolingGate()(x)
    g = fixed_strip_gate(x)
    assert out.shape == g.shape == x.shape
    assert ((g > 0) & (g < 1)).all() and g.std() > 0.1  # standardised, so not saturated near 1
    torch.testing.assert_close(out, x * g)
    # the gate only depends on row/column means: a map constant over space gets G = 1/2
    const = torch.full((1, 2, 4, 5), 3.0)
    torch.testing.assert_close(fixed_strip_gate(const), torch.full_like(const, 0.5))


def test_fixed_strip_gate_follows_the_strips():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, :] = 1.0  # one bright row
    g = fixed_strip_gate(x)[0, 0]
    assert g[2].min() > g[0].max()  # positions on the bright row are gated higher


def test_learnable_strip_pooling_keeps_shape_and_trains():
    spm = StripPoolingGate(8)
    x = torch.rand(2, 8, 13, 11)
    out = spm(x)
    assert out.shape == x.shape
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in spm.parameters())


def test_channel_projection_is_seeded_and_orthonormal():
    p = torch.from_numpy(orthogonal_projection(256, 64, seed=0))
    torch.testing.assert_close(p @ p.T, torch.eye(64, dtype=torch.float64))
    assert torch.equal(p, torch.from_numpy(orthogonal_projection(256, 64, seed=0)))
    assert not torch.allclose(p, torch.from_numpy(orthogonal_projection(256, 64, seed=1)))
    proj = ChannelProjection(256, 64, seed=0)
    assert proj(torch.rand(2, 256, 3, 3)).shape == (2, 64, 3, 3)
    x = torch.rand(1, 16, 2, 2)
    assert torch.equal(ChannelProjection(16, 16, seed=0)(x), x)
    with pytest.raises(ValueError):
        orthogonal_projection(8, 9, seed=0)
