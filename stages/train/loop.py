"""The one training loop every deep method runs through.

It owns the optimiser, the weighted sum of a method's named loss terms, per-term logging, the
non-finite guard and the validation curve; methods only compute terms. Model selection never looks at
the query set: the model after the last epoch is the one that is kept.

A run can be stopped and resumed: at epoch boundaries the loop hands its whole state (model, optimiser,
every RNG state, the epoch order's generator, the history so far) to a checkpoint store, and on start
it continues from the saved state, so a resumed run ends bit-identical to one never interrupted. The
store decides where and when (``Checkpoints``); the loop decides what a state holds.

On a GPU the loop never waits for the device inside an epoch: the training split is moved to the
device once, per-term sums are accumulated there, and both the logged values and the non-finite
guard are read once at the end of the epoch (a NaN or inf in any step makes its term's sum
non-finite, so the guard still names the term and the epoch).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import numpy as np

import torch
from torch import Tensor

from pipeline.ground.errors import ConfigError
from stages.train.base import FeatureBatch, HashingMethod
from stages.train.blocked_adam import BlockedAdam
from stages.train.checks import OPTIMIZER_SETTINGS
from stages.train.validation import Validator

log = logging.getLogger(__name__)


@dataclass
class TrainHistory:
    epochs: list[dict[str, float]] = field(default_factory=list)  # per epoch: mean of each weighted term, "total"
    seconds: float = 0.0
    #: validation points {"epoch" (1-based), "i2t", "t2i", "mean"} (mAP@50, validation vs train)
    validation: list[dict[str, float]] = field(default_factory=list)
    #: settings chosen on validation by a closed-form method: {"grid": [...], "chosen": {...}}
    selection: dict = field(default_factory=dict)
    validation_s: float = 0.0  # seconds spent scoring validation (inside ``seconds``)
    resumed_from: int | None = None  # the epoch (0-based: epochs done) a checkpoint was resumed at
    checkpoints: int = 0  # checkpoints written
    checkpoint_s: float = 0.0  # seconds spent writing them (inside ``seconds``)

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(1, len(self.epochs))


class NonFiniteLoss(ConfigError):
    """A loss term became NaN or inf: the settings (a learning rate too large, say) cannot train this method."""


class TrainingPaused(Exception):
    """Training stopped at an epoch boundary after its deadline; a checkpoint holds the state."""

    def __init__(self, epochs_done: int, epochs: int) -> None:
        super().__init__(f"paused after epoch {epochs_done} of {epochs}; the next run resumes there")
        self.epochs_done, self.epochs = epochs_done, epochs


class Checkpoints(Protocol):
    """Where a training state is kept between processes (``pipeline.ground.store.checkpoints``)."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: Mapping[str, Any]) -> None: ...

    def due(self, epochs_done: int, epochs: int) -> bool: ...


def _slice(batch: FeatureBatch, idx: Tensor) -> FeatureBatch:
    return FeatureBatch(
        image=batch.image[idx], text=batch.text[idx], labels=batch.labels[idx], index=batch.index[idx],
        image_parts={k: v[idx] for k, v in batch.image_parts.items()},
        text_parts={k: v[idx] for k, v in batch.text_parts.items()},
    )


#: PyTorch's fused CPU SGD kernel updates each whole SIMD vector exactly as the default per-parameter loop
#: does, but computes the elements after a tensor's last full vector in scalar code that rounds differently.
#: A parameter whose size is a multiple of this (of every float vector width) has no such elements.
_FUSED_SGD_MULTIPLE = 64


def _sgd_groups(groups: list[dict]) -> list[dict]:
    """Split each group so that the CPU parameters without a partial last vector run through the fused
    SGD kernel (one pass per tensor instead of four; a CFRH epoch measured ~15% faster) and the others
    through the default loop: bit-identical updates either way (tests/train/test_loop_speed.py)."""
    out = []
    for group in groups:
        params = [group["params"]] if isinstance(group["params"], Tensor) else list(group["params"])
        exact = [p.device.type == "cpu" and p.numel() % _FUSED_SGD_MULTIPLE == 0 for p in params]
        fused = [p for p, ok in zip(params, exact) if ok]
        rest = [p for p, ok in zip(params, exact) if not ok]
        out += [dict(group, params=ps, fused=flag) for ps, flag in ((fused, True), (rest, None)) if ps]
    return out


def make_optimizer(method: HashingMethod) -> torch.optim.Optimizer:
    cfg = method.cfg
    groups = method.param_groups()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(_sgd_groups(groups), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        # bit-identical to torch.optim.Adam, with a cache-blocked CPU step (tests/train/test_loop_speed.py)
        return BlockedAdam(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; use {' or '.join(OPTIMIZER_SETTINGS)}")


def fit_method(
    method: HashingMethod,
    train: FeatureBatch,
    *,
    seed: int,
    device: str | torch.device = "cpu",
    epochs: int | None = None,
    progress: bool = False,
    validator: Validator | None = None,
    checkpoints: Checkpoints | None = None,
    stop_at: float | None = None,
) -> TrainHistory:
    """Train ``method`` on the whole training split ``train`` (all rows, on the CPU or ``device``).

    With a ``validator``, a deep method is scored on the validation split every ``validator.every``
    epochs and after the last (``history.validation``), and a closed-form method may choose the
    settings its paper leaves open on it (``history.selection``). With ``checkpoints``, a deep method
    resumes from the saved state and saves its state when they say so; past ``stop_at`` (a
    ``time.time()``), it saves and raises ``TrainingPaused`` at the next epoch boundary.
    """
    torch.manual_seed(seed)
    start = time.perf_counter()
    method.to(device)
    if validator is not None:
        validator = dataclasses.replace(validator, queries=validator.queries.to(device),
                                        retrieval=validator.retrieval.to(device))
    if method.closed_form:
        history = _fit_closed_form(method, train.to(device), validator)
    else:
        history = _fit_by_gradient(method, train, seed=seed, device=device, progress=progress, validator=validator,
                                   epochs=method.cfg.epochs if epochs is None else epochs, checkpoints=checkpoints,
                                   stop_at=stop_at, start=start)
    history.seconds += time.perf_counter() - start
    return history


def _fit_closed_form(method: HashingMethod, train: FeatureBatch, validator: Validator | None) -> TrainHistory:
    """One ``fit`` on the whole split; settings its paper leaves open are chosen on validation."""
    history = TrainHistory()
    score = None if validator is None else (lambda: validator(method, 0)["mean"])
    history.selection = method.fit(train, score=score) or {}
    if validator is not None:
        history.validation.append(validator(method, 0))
    return history


def _fit_by_gradient(method: HashingMethod, train: FeatureBatch, *, seed: int, device: str | torch.device,
                     progress: bool, validator: Validator | None, epochs: int, checkpoints: Checkpoints | None,
                     stop_at: float | None, start: float) -> TrainHistory:
    """``epochs`` passes over the training split in a seeded order; the optimiser owns the weighted sum."""
    history = TrainHistory()
    optimizer = make_optimizer(method)
    generator = torch.Generator().manual_seed(seed)
    train_dev = train.to(device)
    first = 0
    saved = checkpoints.load() if checkpoints is not None else None
    if saved is not None:
        first = _resume(saved, method, optimizer, generator, history, epochs)
        if first:
            log.info("%s %db: resumed from epoch %d of %d", method.name, method.bits, first, epochs)
    bar = None
    if progress:
        from pipeline.ground.progress import progress_bar

        bar = progress_bar(total=epochs, description=f"train {method.name} {method.bits}b", unit="epoch")
        if first:
            bar.resume(first, postfix=f"resumed from epoch {first}")
    try:
        for epoch in range(first, epochs):
            record = _epoch(method, optimizer, train_dev, generator, epoch, device)
            history.epochs.append(record)
            if validator is not None and validator.due(epoch, epochs):
                _validate(method, validator, epoch, epochs, history)
            if bar is not None:
                bar.update(1, postfix=f"loss {record.get('total', math.nan):.4f}")
            if epoch == 0 or (epoch + 1) % max(1, epochs // 5) == 0 or epoch == epochs - 1:
                log.info("epoch %d/%d %s", epoch + 1, epochs, " ".join(f"{k}={v:.4f}" for k, v in record.items()))
            if checkpoints is None:
                continue
            pause = stop_at is not None and time.time() >= stop_at and epoch + 1 < epochs
            if pause or checkpoints.due(epoch + 1, epochs):
                t_save = time.perf_counter()
                checkpoints.save(_state(method, optimizer, generator, epoch + 1, history,
                                        history.seconds + t_save - start))
                history.checkpoints += 1
                history.checkpoint_s += time.perf_counter() - t_save
            if pause:
                raise TrainingPaused(epoch + 1, epochs)
    finally:
        if bar is not None:
            bar.close()
    return history


def _state(method: HashingMethod, optimizer: torch.optim.Optimizer, generator: torch.Generator, epochs_done: int,
           history: TrainHistory, seconds: float) -> dict[str, Any]:
    """Everything the next epoch depends on, at an epoch boundary."""
    return {
        "epoch": epochs_done,
        "model": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "order": generator.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None},
        "history": {"epochs": history.epochs, "validation": history.validation, "seconds": seconds,
                    "validation_s": history.validation_s, "checkpoints": history.checkpoints,
                    "checkpoint_s": history.checkpoint_s},
    }


def _resume(state: Mapping[str, Any], method: HashingMethod, optimizer: torch.optim.Optimizer,
            generator: torch.Generator, history: TrainHistory, epochs: int) -> int:
    """``_restore`` a checkpoint of this run; 0, with everything as it was before, when its state cannot be put
    back (a field missing or of another shape, weights that do not fit, an epoch outside 0..``epochs``, which
    would end the run untrained or loop on a negative epoch): training then starts over, as for a damaged file."""
    done = state.get("epoch") if isinstance(state, Mapping) else None
    problem = None
    if not isinstance(done, int) or isinstance(done, bool) or not 0 <= done <= epochs:
        problem = f"its epoch {done!r} is not one of 0..{epochs}"
    else:
        before = (copy.deepcopy(method.state_dict()), copy.deepcopy(optimizer.state_dict()), torch.get_rng_state(),
                  np.random.get_state(), random.getstate(), generator.get_state(),
                  torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)
        try:
            return _restore(state, method, optimizer, generator, history)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
            problem = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:100]}"
            method.load_state_dict(before[0])
            optimizer.load_state_dict(before[1])
            torch.set_rng_state(before[2])
            np.random.set_state(before[3])
            random.setstate(before[4])
            generator.set_state(before[5])
            if before[6] is not None:
                torch.cuda.set_rng_state_all(before[6])
            for f in dataclasses.fields(TrainHistory):  # as a fresh run's
                setattr(history, f.name, getattr(TrainHistory(), f.name))
    log.warning("%s %db: the checkpoint cannot be resumed (%s); training starts over from epoch 0", method.name,
                method.bits, problem)
    return 0


def _restore(state: Mapping[str, Any], method: HashingMethod, optimizer: torch.optim.Optimizer,
             generator: torch.Generator, history: TrainHistory) -> int:
    """Put a saved state back; returns the number of epochs it had done."""
    method.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    generator.set_state(rng["order"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    saved = state["history"]
    history.epochs = list(saved["epochs"])
    history.validation = list(saved["validation"])
    history.seconds = float(saved["seconds"])
    history.validation_s = float(saved["validation_s"])
    history.checkpoints, history.checkpoint_s = int(saved["checkpoints"]), float(saved["checkpoint_s"])
    history.resumed_from = int(state["epoch"])
    return int(state["epoch"])


def _epoch(method: HashingMethod, optimizer: torch.optim.Optimizer, train: FeatureBatch, generator: torch.Generator,
           epoch: int, device: str | torch.device) -> dict[str, float]:
    """One pass in the order ``generator`` draws; the mean of each weighted term and of their sum."""
    cfg = method.cfg
    n = train.image.shape[0]
    m = min(cfg.batch_size, n)
    weights = dict(cfg.weights)
    method.train()
    method.on_epoch_start(epoch, train)
    order = torch.randperm(n, generator=generator).to(device)
    stop = n - (n % m) if (cfg.drop_last and n >= m) else n
    sums: dict[str, Tensor] = {}  # on the device: no host sync inside the epoch
    steps = 0
    for s in range(0, stop, m):
        batch = _slice(train, order[s:s + m])
        terms = method.loss_terms(batch, epoch)
        total = None
        for name, value in terms.items():
            w = weights.get(name, 1.0)
            if w == 0:
                continue
            contrib = w * value
            total = contrib if total is None else total + contrib
            _accumulate(sums, name, contrib)
        if total is None:
            raise ValueError(f"every loss term of {method.name or method} has weight 0")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        _accumulate(sums, "total", total)
        steps += 1
    record = {k: float(v) / max(1, steps) for k, v in sums.items()}  # the epoch's one sync
    bad = [k for k, v in record.items() if k != "total" and not math.isfinite(v)]
    if bad:
        raise NonFiniteLoss(f"loss term {bad[0]!r} became non-finite during epoch {epoch + 1}; lower the learning "
                            f"rate (--set lr=...) or check the input features, then train again")
    return record


def _validate(method: HashingMethod, validator: Validator, epoch: int, epochs: int, history: TrainHistory) -> None:
    t_val = time.perf_counter()
    point = validator(method, epoch)
    history.validation.append(point)
    history.validation_s += time.perf_counter() - t_val
    log.info("epoch %d/%d validation mAP@%d i2t %.4f t2i %.4f", epoch + 1, epochs, validator.k,
             point["i2t"], point["t2i"])


def _accumulate(sums: dict[str, Tensor], name: str, value: Tensor) -> None:
    """Add a detached scalar to a float64 running sum on its device (float64: the sums of a long epoch
    keep the precision the per-step Python floats had)."""
    value = value.detach().to(torch.float64)
    if name in sums:
        sums[name] += value
    else:
        sums[name] = value.clone()


@torch.no_grad()
def encode_split(method: HashingMethod, features: FeatureBatch, modality: str, batch_size: int = 1024,
                 paired: bool = False) -> Tensor:
    """Relaxed codes (n, bits) of every row, in order; never drops rows.

    ``paired=True`` uses the method's ``encode_paired`` (the labelled reference mode of UCMFH-style methods).
    """
    method.eval()
    # closed-form methods hold only buffers, so look at both
    device = next((t.device for t in itertools.chain(method.parameters(), method.buffers())), torch.device("cpu"))
    n = features.image.shape[0]
    out = []
    for s in range(0, n, batch_size):
        batch = _slice(features, torch.arange(s, min(n, s + batch_size))).to(device)
        codes = method.encode_paired(batch, modality) if paired else method.encode(batch, modality)
        out.append(codes.float().cpu())
    return torch.cat(out) if out else torch.zeros(0, method.bits)
