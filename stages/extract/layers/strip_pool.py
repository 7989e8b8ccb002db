"""Strip pooling (SPNet, Hou, Zhang, Cheng, Feng, CVPR 2020; code Andrew-Qibin/SPNet models/resnet.py
``SPBlock``), in two forms:

* ``StripPoolingGate``: the learnable Strip Pooling Module (SPM) for end-to-end use (DSPRH):
  horizontal strip mean (C×H×1) → Conv(3,1) → BN, vertical strip mean (C×1×W) → Conv(1,3) → BN,
  both broadcast to C×H×W, G = sigmoid(Conv1×1(ReLU(x₁ + x₂))), output X ⊙ G.
* ``FixedStripPoolingGate``: a parameter-free stand-in for frozen feature caches, where nothing can
  be trained [inferred]: S = h ⊕ v (the horizontal and vertical strip means of each channel,
  broadcast to H×W), standardised per channel over the H×W grid (the role BN plays in SPM), and
  G = sigmoid(S_std); output X ⊙ G. Without the standardisation, non-negative conv5 activations make
  h + v ≥ 0 large and the gate saturates near 1, so X ⊙ G ≈ X and the branch would copy plain COV.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

#: Variance floor of the per-channel standardisation (a channel constant over the grid gets S_std = 0, G = ½).
GATE_EPS = 1e-5


def strip_means(x: Tensor) -> tuple[Tensor, Tensor]:
    """(B, C, H, W) -> horizontal strips (B, C, H, 1) and vertical strips (B, C, 1, W)."""
    return x.mean(dim=3, keepdim=True), x.mean(dim=2, keepdim=True)


def fixed_strip_gate(x: Tensor, eps: float = GATE_EPS) -> Tensor:
    """(B, C, H, W) -> gate G in (0, 1) of the same shape (parameter-free, see the module docstring)."""
    h, v = strip_means(x)
    s = h + v                                                    # (B, C, H, W) by broadcasting
    mean = s.mean(dim=(2, 3), keepdim=True)
    var = s.var(dim=(2, 3), keepdim=True, unbiased=False)
    return torch.sigmoid((s - mean) / torch.sqrt(var + eps))


class FixedStripPoolingGate(nn.Module):
    """X ⊙ G with the parameter-free gate; keeps the shape (B, C, H, W)."""

    def __init__(self, eps: float = GATE_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x * fixed_strip_gate(x, self.eps)


class StripPoolingGate(nn.Module):
    """Learnable SPM (``SPBlock(C, C)``, mid = C): X ⊙ sigmoid(Conv1×1(ReLU(BN(Conv₃ₓ₁ h) + BN(Conv₁ₓ₃ v))))
    with h, v the horizontal and vertical strip means, broadcast back to H×W."""

    def __init__(self, channels: int, mid_channels: int | None = None) -> None:
        super().__init__()
        mid = mid_channels or channels
        self.horizontal = nn.Sequential(nn.Conv2d(channels, mid, (3, 1), padding=(1, 0), bias=False),
                                        nn.BatchNorm2d(mid))
        self.vertical = nn.Sequential(nn.Conv2d(channels, mid, (1, 3), padding=(0, 1), bias=False),
                                      nn.BatchNorm2d(mid))
        self.fuse = nn.Conv2d(mid, channels, kernel_size=1, bias=True)

    def gate(self, x: Tensor) -> Tensor:
        h, v = strip_means(x)
        _, _, height, width = x.shape
        x1 = self.horizontal(h).expand(-1, -1, height, width)   # (B, mid, H, W)
        x2 = self.vertical(v).expand(-1, -1, height, width)     # (B, mid, H, W)
        return torch.sigmoid(self.fuse(torch.relu(x1 + x2)))    # (B, C, H, W)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)
