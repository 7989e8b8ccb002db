"""Speed-ups of the training loop must not move a single bit: each is checked here against the plain
implementation it replaces."""
from __future__ import annotations

import pytest
import torch

from stages.train import loop
from tests.train.helpers import build
from tests.train.test_method_contract import DEEP, REAL, toy


def _default_optimizer(method):
    """make_optimizer as it was: PyTorch's default (per-parameter loop on the CPU) SGD and Adam."""
    cfg = method.cfg
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(method.param_groups(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(method.param_groups(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def _trained(name, monkeypatch, default: bool):
    batch, dims = toy(n=64)
    overrides = {k: v for k, v in REAL[name].overrides.items() if k != "epochs"}
    method = build(name, dims, 16, overrides=overrides)
    with monkeypatch.context() as m:
        if default:
            m.setattr(loop, "make_optimizer", _default_optimizer)
        history = loop.fit_method(method, batch, seed=3, epochs=3)
    return method.state_dict(), history.epochs


@pytest.mark.parametrize("name", DEEP)
def test_every_method_trains_bit_identically_with_the_default_optimizer(name, monkeypatch):
    state, epochs = _trained(name, monkeypatch, default=False)
    ref_state, ref_epochs = _trained(name, monkeypatch, default=True)
    assert epochs == ref_epochs
    assert [k for k in state if not torch.equal(state[k], ref_state[k])] == []


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("nesterov", [False, True])
def test_split_fused_sgd_matches_the_default_loop(threads, nesterov):
    shapes = [(4096, 1386), (1386,), (64, 4096), (30, 7), (64,), (128, 3)]  # with and without a partial vector
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(4)]
    finals = []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for split in (True, False):
            params = [torch.nn.Parameter(t.clone()) for t in init]
            groups = [{"params": params[:3], "lr": 0.01}, {"params": params[3:], "lr": 0.05}]
            opt = torch.optim.SGD(loop._sgd_groups(groups) if split else groups, lr=0.01, momentum=0.9,
                                  nesterov=nesterov, weight_decay=5e-4)
            assert not split or any(grp["fused"] for grp in opt.param_groups)
            for step in grads:
                for p, grad in zip(params, step):
                    p.grad = grad.clone()
                opt.step()
            finals.append(params)
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(a, b) for a, b in zip(*finals))
