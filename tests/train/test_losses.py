"""Hand-computed values for every function in stages/train/losses.py."""
from __future__ import annotations

import math

import pytest
import torch

from stages.train import losses


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_cosine_similarity_matrix_by_hand():
    x = t([[3.0, 4.0], [1.0, 0.0]])  # norms 5 and 1 -> rows (.6, .8) and (1, 0)
    torch.testing.assert_close(losses.cosine_similarity_matrix(x), t([[1.0, 0.6], [0.6, 1.0]]))
    y = t([[0.0, 2.0]])
    torch.testing.assert_close(losses.cosine_similarity_matrix(x, y), t([[0.8], [0.0]]))


def test_cosine_similarity_matrix_zero_row_is_zero_not_nan():
    out = losses.cosine_similarity_matrix(t([[0.0, 0.0], [1.0, 0.0]]))
    assert torch.isfinite(out).all()
    assert out[0, 0] == 0.0


def test_feature_similarity_by_hand():
    torch.testing.assert_close(losses.feature_similarity(t([[3.0, 4.0], [1.0, 0.0]])), t([[1.0, 0.2], [0.2, 1.0]]))


def test_joint_similarity_by_hand():
    s_i = t([[1.0, 0.2], [0.2, 1.0]])
    s_t = t([[1.0, -1.0], [-1.0, 1.0]])
    # S~ = .5 s_i + .5 s_t = [[1, -.4], [-.4, 1]]; S~S~/2 = [[.58, -.4], [-.4, .58]]
    # S = 2 * (.5 S~ + .5 S~S~/2) = 2 * [[.79, -.4], [-.4, .79]]
    out = losses.joint_similarity(s_i, s_t, beta=0.5, eta=0.5, mu=2.0)
    torch.testing.assert_close(out, t([[1.58, -0.8], [-0.8, 1.58]]))
    # eta = 0 is DSAH's K * S~
    torch.testing.assert_close(losses.joint_similarity(s_i, s_t, beta=0.9, mu=1.5), 1.5 * (0.9 * s_i + 0.1 * s_t))


def test_joint_similarity_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="square"):
        losses.joint_similarity(torch.eye(2), torch.eye(3), beta=0.5)


def test_similarity_mse_by_hand():
    a = t([[1.0, 0.0], [0.0, 2.0]])
    b = t([[1.0, 1.0], [0.0, -1.0]])
    # norm(a) norm(b)^T = [[.7071, 0], [.7071, -1]] -> mean of squares = (.5 + 0 + .5 + 1) / 4
    assert losses.similarity_mse(a, b, torch.zeros(2, 2, dtype=torch.float64)).item() == pytest.approx(0.5)


def test_nt_xent_by_hand():
    z = t([[1.0, 0.0], [0.0, 1.0]])
    # every row: positive cosine 1, two negatives with cosine 0; tau = .5
    expected = math.log(math.exp(2.0) + 2.0) - 2.0
    assert losses.nt_xent(z, z.clone(), temperature=0.5).item() == pytest.approx(expected)


def _nt_xent_loop(z_a: torch.Tensor, z_b: torch.Tensor, tau: float) -> float:
    z = torch.nn.functional.normalize(torch.cat([z_a, z_b]), dim=1)
    n = z.shape[0]
    m = n // 2
    total = 0.0
    for a in range(n):
        p = (a + m) % n
        denom = sum(math.exp(float(z[a] @ z[j]) / tau) for j in range(n) if j != a)
        total += -math.log(math.exp(float(z[a] @ z[p]) / tau) / denom)
    return total / n


@pytest.mark.parametrize("m", [1, 3, 7])
def test_nt_xent_matches_a_plain_loop_for_any_batch_size(m):
    g = torch.Generator().manual_seed(m)
    z_a, z_b = torch.randn(m, 5, generator=g, dtype=torch.float64), torch.randn(m, 5, generator=g, dtype=torch.float64)
    assert losses.nt_xent(z_a, z_b, 0.3).item() == pytest.approx(_nt_xent_loop(z_a, z_b, 0.3), rel=1e-9)


def test_cosine_triplet_by_hand():
    anchor = t([[1.0, 0.0], [1.0, 0.0]])
    positive = t([[1.0, 1.0], [-1.0, 0.0]])  # d = 1 - .7071 and d = 2
    negative = t([[0.0, 1.0], [1.0, 0.0]])  # d = 1 and d = 0
    # row 0: max(0, .001 + .2929 - 1) = 0; row 1: .001 + 2 - 0 = 2.001
    assert losses.cosine_triplet(anchor, positive, negative, margin=0.001).item() == pytest.approx(2.001 / 2)


def test_pairwise_likelihood_by_hand():
    a = t([[2.0, 0.0]])
    b = t([[1.0, 0.0], [-1.0, 0.0]])  # Theta = [[1, -1]]
    s = t([[1.0, 0.0]])
    # log(1 + e) - 1 = log(1 + e^-1) for both entries
    expected = math.log1p(math.exp(-1.0))
    assert losses.pairwise_likelihood(a, b, s).item() == pytest.approx(expected)


def test_pairwise_likelihood_is_stable_for_large_codes():
    a = t([[1000.0, 0.0]])
    out = losses.pairwise_likelihood(a, a, t([[0.0]]))
    assert math.isfinite(out.item()) and out.item() == pytest.approx(500_000.0)


def test_quantization_gap_by_hand_with_sign_zero_plus_one():
    # gaps .5, .75 and 1 (sign(0) = +1) -> (.25 + .5625 + 1) / 3
    assert losses.quantization_gap(t([[0.5, -0.25, 0.0]])).item() == pytest.approx((0.25 + 0.5625 + 1.0) / 3)


def test_diagonal_alignment_by_hand():
    b_i = t([[1.0, 0.0], [0.0, 3.0]])
    b_t = t([[2.0, 0.0], [1.0, 0.0]])  # paired cosines 1 and 0; target 1.5
    assert losses.diagonal_alignment(b_i, b_t, 1.5).item() == pytest.approx((0.25 + 2.25) / 2)


def test_symmetry_by_hand():
    b_i = t([[1.0, 0.0], [0.0, 1.0]])
    b_t = t([[1.0, 0.0], [1.0, 0.0]])  # cross = [[1, 1], [0, 0]]; minus its transpose: [[0, 1], [-1, 0]]
    assert losses.symmetry(b_i, b_t).item() == pytest.approx(0.5)
    assert losses.symmetry(b_i, b_i).item() == 0.0


def test_sign_plus_maps_zero_to_one():
    torch.testing.assert_close(losses.sign_plus(t([-0.1, 0.0, 2.0])), t([-1.0, 1.0, 1.0]))


def test_semantic_alignment_terms_compose_the_dsah_family():
    g = torch.Generator().manual_seed(0)
    c_i, c_t = torch.tanh(torch.randn(6, 8, generator=g)), torch.tanh(torch.randn(6, 8, generator=g))
    s_i = losses.feature_similarity(torch.rand(6, 5, generator=g))
    s_t = losses.feature_similarity(torch.rand(6, 4, generator=g))
    s = losses.joint_similarity(s_i, s_t, beta=0.9, mu=1.5)
    terms = losses.semantic_alignment_terms(c_i, c_t, s, s_i, s_t, 1.5)
    assert set(terms) == {"text_text", "image_text", "image_image", "image_alignment", "text_alignment",
                          "diagonal", "symmetry"}
    assert torch.allclose(terms["image_alignment"], losses.similarity_mse(c_i, c_i, 1.5 * s_i))
    assert torch.allclose(terms["diagonal"], losses.diagonal_alignment(c_i, c_t, 1.5))
    # hand value: identical codes in both modalities make the cross similarity symmetric
    assert losses.semantic_alignment_terms(c_i, c_i, s, s_i, s_t, 1.5)["symmetry"].item() == 0.0
