"""iSQRT-COV: covariance pooling with an iterative matrix square root.

Li, Xie, Wang, Gao, "Towards Faster Training of Global Covariance Pooling Networks by Iterative Matrix
Square Root Normalization", CVPR 2018; reference code jiangtaoxie/fast-MPN-COV
(src/representation/MPNCOV.py). The reference writes a manual backward for PyTorch 0.3; here every step
is plain batched matmuls, so autograd differentiates it (no custom backward). The computation is done
in float32 (or float64 when given float64) with autocast disabled, since fp16 breaks the iteration.

Steps for X of shape (B, d, h, w), M = h·w:
  1. Σ = X Ī Xᵀ with Ī = (1/M) I − (1/M²) 1 1ᵀ                     (centred, divided by M)
  2. A = Σ / tr(Σ)                                                 (pre-normalisation, step 2)
  3. Newton–Schulz: Y₀ = A, Z₀ = I; T = ½(3I − Z Y), Y ← Y T, Z ← T Z   (step 3, N iterations)
  4. C = sqrt(tr(Σ)) · Y_N ≈ Σ^{1/2}                               (post-compensation, step 4)
  5. upper triangle incl. the diagonal, row-major                 (step 5, d(d+1)/2 values)
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

#: Reference training script value (fast-MPN-COV main.py ``iterNum = 5``).
DEFAULT_ITERATIONS = 5
#: Guards tr(Σ) = 0 (a constant feature map); far below any real trace, so it changes nothing else.
TRACE_EPS = 1e-12


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def covariance_pool(x: Tensor) -> Tensor:
    """(B, d, h, w) feature maps -> (B, d, d) spatial covariance Σ = X Ī Xᵀ (step 1)."""
    b, d = x.shape[:2]
    feats = x.reshape(b, d, -1).to(_compute_dtype(x))        # (B, d, M)
    centred = feats - feats.mean(dim=2, keepdim=True)        # X Ī up to the 1/M factor
    return centred @ centred.transpose(1, 2) / feats.shape[2]  # (B, d, d)


def newton_schulz_sqrt(sigma: Tensor, iterations: int = DEFAULT_ITERATIONS) -> Tensor:
    """(B, d, d) symmetric PSD -> (B, d, d) ≈ Σ^{1/2} by trace-normalised Newton–Schulz (steps 2–4).

    Converges for any PSD input because the trace normalisation puts every eigenvalue in [0, 1];
    eigenvalues near 0 need more iterations (each step grows them by about 1.5x), which is the
    approximation iSQRT-COV accepts for speed.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    sigma = sigma.to(_compute_dtype(sigma))
    b, d, _ = sigma.shape
    eye = torch.eye(d, dtype=sigma.dtype, device=sigma.device).expand(b, d, d)
    trace = sigma.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(TRACE_EPS)  # (B,)
    a = sigma / trace.view(b, 1, 1)                                       # (B, d, d), eigenvalues in [0, 1]
    if iterations == 1:
        y = 0.5 * a @ (3.0 * eye - a)
    else:
        t = 0.5 * (3.0 * eye - a)          # first step with Z₀ = I
        y, z = a @ t, t
        for _ in range(iterations - 2):
            t = 0.5 * (3.0 * eye - z @ y)
            y, z = y @ t, t @ z
        y = 0.5 * y @ (3.0 * eye - z @ y)  # last step forms Y only
    return y * trace.sqrt().view(b, 1, 1)


def triu_vector(a: Tensor) -> Tensor:
    """(B, d, d) -> (B, d(d+1)/2): the upper triangle incl. the diagonal, row-major (step 5)."""
    d = a.shape[-1]
    rows, cols = torch.triu_indices(d, d, device=a.device)
    return a[:, rows, cols]


def isqrt_cov(x: Tensor, iterations: int = DEFAULT_ITERATIONS) -> Tensor:
    """(B, d, h, w) -> (B, d(d+1)/2) iSQRT-COV vector, float32 (float64 for float64 input)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return triu_vector(newton_schulz_sqrt(covariance_pool(x), iterations))


def isqrt_cov_dim(channels: int) -> int:
    return channels * (channels + 1) // 2


class ISqrtCov(nn.Module):
    """iSQRT-COV meta-layer, optionally with a learned 1×1 channel reduction before step 1.

    ``reduce_to=None`` has no parameters. With ``reduce_to=d_r`` it prepends
    Conv2d(d_in→d_r, 1×1, no bias) → BatchNorm2d → ReLU (kaiming-normal fan_out init, BN weight 1,
    bias 0), as fast-MPN-COV does for its from-scratch path; that variant is for end-to-end training.
    """

    def __init__(self, in_channels: int, reduce_to: int | None = None, iterations: int = DEFAULT_ITERATIONS) -> None:
        super().__init__()
        self.iterations = iterations
        self.reduce: nn.Module = nn.Identity()
        channels = in_channels
        if reduce_to is not None:
            conv = nn.Conv2d(in_channels, reduce_to, kernel_size=1, bias=False)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            bn = nn.BatchNorm2d(reduce_to)
            nn.init.ones_(bn.weight)
            nn.init.zeros_(bn.bias)
            self.reduce = nn.Sequential(conv, bn, nn.ReLU(inplace=True))
            channels = reduce_to
        self.out_dim = isqrt_cov_dim(channels)

    def forward(self, x: Tensor) -> Tensor:
        return isqrt_cov(self.reduce(x), self.iterations)  # (B, d(d+1)/2)


def orthogonal_projection(in_channels: int, out_channels: int, seed: int) -> np.ndarray:
    """A fixed (out, in) matrix with orthonormal rows, from ``seed`` (float64 QR of a Gaussian matrix).

    The sign of each row is fixed by the diagonal of R, so the result is unique for a given seed.
    """
    if not 0 < out_channels <= in_channels:
        raise ValueError(f"cannot project {in_channels} channels to {out_channels}")
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((in_channels, out_channels))   # (in, out)
    q, r = np.linalg.qr(g)                                  # q: (in, out) orthonormal columns
    q = q * np.sign(np.diag(r))[None, :]
    return q.T.copy()                                       # (out, in)


class ChannelProjection(nn.Module):
    """Fixed 1×1 channel reduction y = P x with a seeded orthogonal P (no parameters, a buffer).

    A parameter-free stand-in for that learned 1×1 reduction when nothing can be trained:
    the covariance of P x is P Σ Pᵀ, a random orthogonal sketch of the full d×d covariance.
    ``out_channels == in_channels`` is the identity (no mixing).
    """

    def __init__(self, in_channels: int, out_channels: int, seed: int) -> None:
        super().__init__()
        self.identity = out_channels == in_channels
        weight = np.eye(in_channels) if self.identity else orthogonal_projection(in_channels, out_channels, seed)
        self.register_buffer("weight", torch.from_numpy(weight.astype(np.float32)), persistent=False)  # (out, in)

    def forward(self, x: Tensor) -> Tensor:
        if self.identity:
            return x
        return torch.einsum("oc,bchw->bohw", self.weight.to(x.dtype), x)  # (B, out, h, w)
