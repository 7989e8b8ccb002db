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


def _adam_finals(optimizer_class, init, grads, threads: int, **settings):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        params = [torch.nn.Parameter(t.clone()) for t in init]
        groups = [{"params": params[:3], "lr": 1e-4}, {"params": params[3:]}]  # two learning rates, as UCMFH's
        opt = optimizer_class(groups, lr=1e-3, **settings)
        for step in grads:
            for p, grad in zip(params, step):
                p.grad = None if grad is None else grad.clone()
            opt.step()
    finally:
        torch.set_num_threads(previous)
    return params, opt


def _adam_problem(threads=1, **settings):
    """Parameters of several blocks with a partial last block, one below a SIMD vector, a skipped gradient,
    gradients from 1e-8 to 10, a step whose gradients are all ±0.0, and a parameter whose first two blocks
    always get +0.0 (as the query/key rows of a one-token attention) and whose third gets +0.0 once:
    random enough that a rounding change would show."""
    from stages.train.blocked_adam import BLOCK

    shapes = [(3, BLOCK - 5), (1386, 512), (BLOCK + 64,), (7,), (64, 4096), (2048,), (3 * BLOCK + 3,)]
    g = torch.Generator().manual_seed(threads)
    init = [torch.randn(s, generator=g) for s in shapes]
    init[-1][:5] = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan")])  # left exactly as they are
    grads = []
    for k in range(5):
        scale = [10.0 ** torch.randint(-8, 2, (1,), generator=g).item() for _ in shapes]
        grads.append([None if (k == 1 and i == 3) else torch.randn(s, generator=g) * c * (k != 2)
                      for i, (s, c) in enumerate(zip(shapes, scale))])
        grads[-1][-1][:(3 if k == 3 else 2) * BLOCK] = 0.0
    return init, grads


def _bits(t):
    return t.detach().view(torch.int32)  # -0.0 and +0.0, and NaN payloads, told apart


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("settings", [{"betas": (0.5, 0.999)}, {"betas": (0.9, 0.999), "weight_decay": 5e-4},
                                      {"betas": (0.9, 0.99), "eps": 1e-6}])
def test_blocked_adam_matches_pytorchs_adam_bit_for_bit(threads, settings):
    from stages.train.blocked_adam import BlockedAdam

    init, grads = _adam_problem(threads, **settings)
    ours, opt = _adam_finals(BlockedAdam, init, grads, threads, **settings)
    ref, ref_opt = _adam_finals(torch.optim.Adam, init, grads, threads, **settings)
    assert opt._scratch is not None  # the blocked step ran, not the fallback
    # the first two blocks of the last parameter, at each of 5 steps (not the third: its moments are not zero
    # when its gradient is), except under weight decay
    assert opt.blocks_skipped == (0 if settings.get("weight_decay") else 2 * 5)
    assert [i for i, (a, b) in enumerate(zip(ours, ref)) if not torch.equal(_bits(a), _bits(b))] == []
    for p, q in zip(ours, ref):
        assert opt.state[p]["step"] == ref_opt.state[q]["step"]
        assert all(torch.equal(_bits(opt.state[p][k]), _bits(ref_opt.state[q][k])) for k in ("exp_avg", "exp_avg_sq"))


def test_blocked_adam_checkpoints_load_into_and_from_pytorchs_adam():
    """A checkpoint's optimiser state is interchangeable: a run resumed across the change continues exactly."""
    from stages.train.blocked_adam import BlockedAdam

    init, grads = _adam_problem()
    straight, _ = _adam_finals(torch.optim.Adam, init, grads, 1)
    for first, second in ((BlockedAdam, torch.optim.Adam), (torch.optim.Adam, BlockedAdam)):
        half, opt = _adam_finals(first, init, grads[:2], 1)
        params = [torch.nn.Parameter(p.detach().clone()) for p in half]
        resumed = second([{"params": params[:3], "lr": 1e-4}, {"params": params[3:]}], lr=1e-3)
        resumed.load_state_dict(opt.state_dict())
        for step in grads[2:]:
            for p, grad in zip(params, step):
                p.grad = None if grad is None else grad.clone()
            resumed.step()
        assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(params, straight)), (first.__name__, second.__name__)


def test_blocked_adam_leaves_what_it_does_not_cover_to_pytorch():
    from stages.train.blocked_adam import BlockedAdam

    init, grads = _adam_problem()
    ours, opt = _adam_finals(BlockedAdam, init, grads, 1, amsgrad=True)
    ref, _ = _adam_finals(torch.optim.Adam, init, grads, 1, amsgrad=True)
    assert opt._scratch is None  # PyTorch's step ran
    assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(ours, ref))


def test_blocked_adam_skips_a_zero_block_only_when_its_second_moment_is_zero_too():
    """A block whose first moment has decayed to zero (beta1 = 0.5 underflows after ~150 zero-gradient steps)
    while its second moment has not: PyTorch still decays the second moment, so the block is updated."""
    from stages.train.blocked_adam import BLOCK, BlockedAdam

    finals = []
    for cls in (BlockedAdam, torch.optim.Adam):
        p = torch.nn.Parameter(torch.ones(2 * BLOCK))
        opt = cls([p], lr=1e-3, betas=(0.5, 0.999))
        p.grad = torch.full_like(p, 0.25)
        opt.step()
        opt.state[p]["exp_avg"].zero_()  # as after the underflow
        p.grad = torch.zeros_like(p)
        opt.step()
        finals.append((_bits(p), _bits(opt.state[p]["exp_avg_sq"])))
    assert torch.equal(finals[0][0], finals[1][0]) and torch.equal(finals[0][1], finals[1][1])
