"""Blocks shared by the AlexNet encoder and by end-to-end methods (DSPRH): no registry, no weights."""
from stages.extract.layers.isqrt_cov import (
    ChannelProjection,
    ISqrtCov,
    covariance_pool,
    isqrt_cov,
    isqrt_cov_dim,
    newton_schulz_sqrt,
    orthogonal_projection,
    triu_vector,
)
from stages.extract.layers.strip_pool import FixedStripPoolingGate, StripPoolingGate, fixed_strip_gate, strip_means

__all__ = [
    "ChannelProjection", "ISqrtCov", "covariance_pool", "isqrt_cov", "isqrt_cov_dim", "newton_schulz_sqrt",
    "orthogonal_projection", "triu_vector",
    "FixedStripPoolingGate", "StripPoolingGate", "fixed_strip_gate", "strip_means",
]
