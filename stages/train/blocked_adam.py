"""Adam whose CPU step walks each parameter in cache-sized blocks, with PyTorch's own arithmetic.

PyTorch's default CPU Adam (its per-parameter loop) runs seven element-wise passes over every
parameter-sized tensor per step and allocates two parameter-sized temporaries for the denominator.
For the fusion-transformer methods (22.5M parameters) that step was about a fifth of an epoch.
:class:`BlockedAdam` runs the same operations, in the same order, with the same Python scalars, on
blocks of :data:`BLOCK` values: a block stays in cache between its passes, and two block-sized
buffers are reused instead of allocated. Every value meets the same kernels with the same operands,
so the parameters and moments are bit for bit those of ``torch.optim.Adam``
(tests/train/test_loop_speed.py). PyTorch's fused CPU kernel is faster still but rounds the update
differently (about one value in 1,500 after a single step), so it is not used.

A block whose gradient and both moments are all +0.0 (bit for bit) is skipped: PyTorch's update leaves
such a block exactly as it is (both moments stay +0.0, and the parameter gains -0.0, which changes no
bits). Without weight decay that is every step of the query/key rows of a one-token attention
(:class:`stages.train.layers.FusionTransformer`): a fifth of UCMFH's and FJSPH's parameters.

The state (``step``, ``exp_avg``, ``exp_avg_sq``) has the layout of ``torch.optim.Adam``'s, so
checkpoints written by either load into either. Whatever the blocked step does not cover (another
device or dtype, amsgrad, maximize, decoupled weight decay, a foreach/fused/capturable/differentiable
group, a tensor learning rate, non-contiguous tensors) takes PyTorch's own step.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

#: values per block: 1 MiB of float32 per tensor, so a block's five tensors stay in the last-level cache
#: between passes (the fastest of 2^15 to 2^20 in a UCMFH epoch on the 2-core EPYC); a multiple of every
#: SIMD width, so each value takes the kernels' vector path exactly where it does in the whole tensor
BLOCK = 1 << 18

_UNCOVERED_FLAGS = ("amsgrad", "maximize", "foreach", "fused", "capturable", "differentiable",
                    "decoupled_weight_decay")


def _scalar_dtype() -> torch.dtype:
    """The dtype torch.optim.Adam gives ``state['step']`` on the default (non-fused) path."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _all_positive_zero(*tensors: Tensor) -> bool:
    """Every value +0.0, sign bit included (-0.0 is not skipped: PyTorch's update would rewrite it)."""
    return not any(t.view(torch.uint8).any() for t in tensors)  # bytes: the fastest of the any() reductions


class BlockedAdam(torch.optim.Adam):
    """``torch.optim.Adam`` with a cache-blocked CPU step that gives the same bits."""

    def __init__(self, params, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self._scratch: Tensor | None = None  # 2 × BLOCK floats, reused by every step (not optimiser state)
        self.blocks_skipped = 0  # blocks left as they were (all +0.0), over the optimiser's life

    def _covered(self) -> bool:
        for group in self.param_groups:
            if any(group.get(flag) for flag in _UNCOVERED_FLAGS) or torch.is_tensor(group["lr"]) \
                    or any(torch.is_tensor(b) for b in group["betas"]):
                return False
            for p in group["params"]:
                if p.grad is None:
                    continue
                tensors = [p, p.grad, *(self.state[p][k] for k in ("exp_avg", "exp_avg_sq") if k in self.state[p])]
                if any(t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous()
                       or t.is_sparse for t in tensors):
                    return False
        return True

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):  # type: ignore[override]
        if not self._covered():
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._scratch is None:
            self._scratch = torch.empty(2, BLOCK)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group["lr"], beta1, beta2, group["eps"], group["weight_decay"])
        return loss

    def _update(self, p: Tensor, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
        state = self.state[p]
        if not state:  # as torch.optim.Adam's lazy initialisation
            state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        # the scalars exactly as torch.optim.adam._single_tensor_adam computes them (Python floats)
        step = state["step"].item()
        step_size = lr / (1 - beta1 ** step)
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        flat = [t.view(-1) for t in (p, p.grad, state["exp_avg"], state["exp_avg_sq"])]
        denominators, decayed = self._scratch
        n = flat[0].numel()
        for start in range(0, n, BLOCK):
            stop = min(n, start + BLOCK)
            param, grad, exp_avg, exp_avg_sq = (t[start:stop] for t in flat)
            if weight_decay == 0 < eps and grad[0].item() == 0 and _all_positive_zero(grad, exp_avg, exp_avg_sq):
                self.blocks_skipped += 1
                continue
            if weight_decay != 0:
                grad = torch.add(grad, param, alpha=weight_decay, out=decayed[:stop - start])
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = torch.sqrt(exp_avg_sq, out=denominators[:stop - start]).div_(bias_correction2_sqrt).add_(eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)
