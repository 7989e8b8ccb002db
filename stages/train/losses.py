"""Loss functions shared by the hashing methods: pure functions of tensors.

Every function takes its sizes from its inputs (no fixed batch size), documents the shapes it
expects and cites the equation it implements. Notation: ``m`` is the batch
size, ``k`` the code length (bits), ``norm(x)`` row-wise L2 normalisation, ``cos(X) = norm(X) norm(X)ᵀ``
and ``MSE(A, B) = mean((A − B)²)`` over all entries (PyTorch's default ``mse_loss`` reduction, which
every reference implementation uses).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "cosine_similarity_matrix",
    "feature_similarity",
    "joint_similarity",
    "similarity_mse",
    "nt_xent",
    "cosine_triplet",
    "pairwise_likelihood",
    "quantization_gap",
    "diagonal_alignment",
    "symmetry",
    "sign_plus",
]

_EPS = 1e-12  # F.normalize's default: a zero row stays zero instead of becoming NaN


def sign_plus(x: Tensor) -> Tensor:
    """``sign`` with ``sign(0) = +1`` (the project's binarisation rule; ``torch.sign(0)`` is 0).

    Same shape and dtype as ``x``; carries no gradient.
    """
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def cosine_similarity_matrix(a: Tensor, b: Tensor | None = None) -> Tensor:
    """``norm(a) · norm(b)ᵀ``: all pairwise cosines (``cos(X)``).

    a: (m, d); b: (n, d), defaults to ``a``. Returns (m, n) with entries in [−1, 1]; a zero row gives 0.
    """
    a_n = F.normalize(a, dim=1, eps=_EPS)
    b_n = a_n if b is None else F.normalize(b, dim=1, eps=_EPS)
    return a_n @ b_n.T


def feature_similarity(x: Tensor) -> Tensor:
    """``S = 2·cos(X) − 1`` (DJSRH/DSAH S_I and S_T).

    x: (m, d) features. Returns (m, m). For non-negative features (fc7 after ReLU, bags of words) the
    cosine lies in [0, 1], so this maps it onto [−1, 1], the range of a code inner product.
    """
    return 2.0 * cosine_similarity_matrix(x) - 1.0


def joint_similarity(s_image: Tensor, s_text: Tensor, *, beta: float, eta: float = 0.0, mu: float = 1.0) -> Tensor:
    """DJSRH joint-semantics matrix:

    ``S̃ = β S_I + (1 − β) S_T`` and ``S = μ [ (1 − η) S̃ + η S̃ S̃ᵀ / m ]``.

    With ``eta = 0`` this is DSAH/CCAH's ``S = K · (a S_I + (1 − a) S_T)`` (``mu = K``, ``beta = a``).
    s_image, s_text: (m, m) feature similarities, e.g. from :func:`feature_similarity`. Returns (m, m).
    The second-order term divides by the actual m of the inputs (DJSRH's code divides by the
    configured batch size, which is wrong for a short last batch).
    """
    if s_image.shape != s_text.shape or s_image.ndim != 2 or s_image.shape[0] != s_image.shape[1]:
        raise ValueError(f"joint_similarity needs two square matrices of one shape, got {tuple(s_image.shape)} "
                         f"and {tuple(s_text.shape)}")
    s_tilde = beta * s_image + (1.0 - beta) * s_text  # (m, m)
    if eta == 0.0:
        return mu * s_tilde
    m = s_tilde.shape[0]
    return mu * ((1.0 - eta) * s_tilde + eta * (s_tilde @ s_tilde.T) / m)


def similarity_mse(codes_a: Tensor, codes_b: Tensor, target: Tensor) -> Tensor:
    """``MSE(norm(B_a) norm(B_b)ᵀ, S)``: code-similarity reconstruction (DJSRH's loss; DSAH/CCAH L1–L3, L31, L32).

    codes_a: (m, k) and codes_b: (n, k) relaxed codes (normalised here); target: (m, n). Scalar.
    """
    return F.mse_loss(cosine_similarity_matrix(codes_a, codes_b), target)


def nt_xent(z_a: Tensor, z_b: Tensor, temperature: float = 0.5) -> Tensor:
    """SimCLR NT-Xent over the 2m views ``[z_a; z_b]`` (UCMFH's ``ContrastiveLoss``).

    z_a, z_b: (m, d); row i of each is a positive pair. With ``Z = [norm(z_a); norm(z_b)]`` (2m, d) and
    ``C = Z Zᵀ``, each row a with partner p(a) = a ± m gives
    ``ℓ_a = −log( exp(C_{a,p(a)}/τ) / Σ_{n≠a} exp(C_{a,n}/τ) )``; the result is ``(1/2m) Σ_a ℓ_a``.
    Negatives include same-modality rows. The mask is built from the input size, so any m ≥ 1 works
    (UCMFH pre-builds it for m = 128 only).
    """
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"nt_xent needs two (m, d) tensors of one shape, got {tuple(z_a.shape)} "
                         f"and {tuple(z_b.shape)}")
    m = z_a.shape[0]
    z = F.normalize(torch.cat([z_a, z_b], dim=0), dim=1, eps=_EPS)  # (2m, d)
    logits = (z @ z.T) / temperature  # (2m, 2m)
    self_mask = torch.eye(2 * m, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # exclude n = a from the denominator
    partner = torch.arange(2 * m, device=z.device).roll(m)  # p(a) = a + m for a < m, a − m otherwise
    return F.cross_entropy(logits, partner)


def cosine_triplet(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float) -> Tensor:
    """Cosine-distance triplet hinge (DSPRH L_C, paper Eqs. 15–17).

    ``mean_i max(0, ν + d(a_i, p_i) − d(a_i, n_i))`` with ``d = 1 − cos``. anchor, positive, negative:
    (m, k), row-aligned. Scalar. The paper sums over i; the mean keeps the scale independent of m.
    """
    d_pos = 1.0 - F.cosine_similarity(anchor, positive, dim=1, eps=1e-8)  # (m,)
    d_neg = 1.0 - F.cosine_similarity(anchor, negative, dim=1, eps=1e-8)  # (m,)
    return F.relu(margin + d_pos - d_neg).mean()


def pairwise_likelihood(codes_a: Tensor, codes_b: Tensor, s: Tensor) -> Tensor:
    """DCMH pairwise negative log-likelihood (DSPRH L_P, paper Eq. 18).

    ``Θ_ij = ½ a_iᵀ b_j`` and ``L = mean_ij ( log(1 + e^{Θ_ij}) − s_ij Θ_ij )``, with the stable
    ``softplus``. codes_a: (m, k), codes_b: (n, k), s: (m, n) targets in [0, 1] (hard or soft). Scalar.
    The paper sums over pairs; the mean keeps the scale independent of m.
    """
    theta = 0.5 * (codes_a @ codes_b.T)  # (m, n)
    return (F.softplus(theta) - s * theta).mean()


def quantization_gap(relaxed: Tensor) -> Tensor:
    """``mean((h − sign(h))²)``: distance of relaxed codes from the binary ones.

    relaxed: (m, k). Scalar. ``sign(0) = +1``; the sign target carries no gradient.
    """
    return F.mse_loss(relaxed, sign_plus(relaxed).detach())


def diagonal_alignment(b_i: Tensor, b_t: Tensor, target: float) -> Tensor:
    """DSAH/CCAH L4: ``MSE(diag(B_I B_Tᵀ), target · 1)`` with ``B = norm(c)``.

    b_i, b_t: (m, k) relaxed codes of paired items (normalised here). Scalar. The references use
    ``target = K = 1.5``, which a cosine can never reach, so the term keeps pulling pairs together.
    """
    diag = F.cosine_similarity(b_i, b_t, dim=1, eps=_EPS)  # (m,) = diag(B_I B_Tᵀ)
    return F.mse_loss(diag, torch.full_like(diag, float(target)))


def symmetry(b_i: Tensor, b_t: Tensor) -> Tensor:
    """DSAH/CCAH L7: ``MSE(B_I B_Tᵀ, (B_I B_Tᵀ)ᵀ)`` with ``B = norm(c)``.

    b_i, b_t: (m, k) relaxed codes (normalised here). Scalar; zero iff the cross-modal similarity is symmetric.
    """
    cross = cosine_similarity_matrix(b_i, b_t)  # (m, m)
    return F.mse_loss(cross, cross.T)


def semantic_alignment_terms(c_i: Tensor, c_t: Tensor, s: Tensor, s_i: Tensor, s_t: Tensor,
                             scale: float) -> dict[str, Tensor]:
    """DSAH's alignment family (its L1–L4, L7, L31, L32), shared by DSAH, CCAH and DSPRH.

    c_i, c_t: (m, k) relaxed codes; s: (m, m) joint target; s_i, s_t: (m, m) feature similarities in
    [−1, 1]; scale: K (1.5), which multiplies the intra-modal targets and is the diagonal's target.
    Returns the unweighted terms keyed by name (the symmetry term is weighted 2× by the configs).
    """
    return {
        "text_text": similarity_mse(c_t, c_t, s),  # L1
        "image_text": similarity_mse(c_i, c_t, s),  # L2
        "image_image": similarity_mse(c_i, c_i, s),  # L3
        "image_alignment": similarity_mse(c_i, c_i, scale * s_i),  # L31
        "text_alignment": similarity_mse(c_t, c_t, scale * s_t),  # L32
        "diagonal": diagonal_alignment(c_i, c_t, scale),  # L4
        "symmetry": symmetry(c_i, c_t),  # L7
    }
