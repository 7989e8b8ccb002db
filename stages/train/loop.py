"""The one training loop every deep method runs through.

It owns the optimiser, the weighted sum of a method's named loss terms, per-term logging and the
non-finite guard; methods only compute terms. Model selection never looks at the query set: the
model after the last epoch is the one that is kept.
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from stages.train.base import FeatureBatch, HashingMethod

log = logging.getLogger(__name__)


@dataclass
class TrainHistory:
    epochs: list[dict[str, float]] = field(default_factory=list)  # per epoch: mean of each weighted term, "total"
    seconds: float = 0.0

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(1, len(self.epochs))


class NonFiniteLoss(RuntimeError):
    pass


def _slice(batch: FeatureBatch, idx: Tensor) -> FeatureBatch:
    return FeatureBatch(
        image=batch.image[idx], text=batch.text[idx], labels=batch.labels[idx], index=batch.index[idx],
        image_parts={k: v[idx] for k, v in batch.image_parts.items()},
        text_parts={k: v[idx] for k, v in batch.text_parts.items()},
    )


def make_optimizer(method: HashingMethod) -> torch.optim.Optimizer:
    cfg = method.cfg
    groups = method.param_groups()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use 'sgd' or 'adam'")


def fit_method(
    method: HashingMethod,
    train: FeatureBatch,
    *,
    seed: int,
    device: str | torch.device = "cpu",
    epochs: int | None = None,
    progress: bool = False,
) -> TrainHistory:
    """Train ``method`` on the whole training split ``train`` (all rows, on the CPU or ``device``)."""
    torch.manual_seed(seed)
    history = TrainHistory()
    start = time.perf_counter()
    method.to(device)
    if method.closed_form:
        method.fit(train.to(device))
        history.seconds = time.perf_counter() - start
        return history

    cfg = method.cfg
    n_epochs = cfg.epochs if epochs is None else epochs
    n = train.image.shape[0]
    m = min(cfg.batch_size, n)
    weights = dict(cfg.weights)
    optimizer = make_optimizer(method)
    generator = torch.Generator().manual_seed(seed)
    train_dev = train.to(device)

    bar = None
    if progress:
        from pipeline.progress import progress_bar

        bar = progress_bar(total=n_epochs, description=f"train {getattr(method, 'name', '')} {method.bits}b", unit="epoch")
    try:
        for epoch in range(n_epochs):
            method.train()
            method.on_epoch_start(epoch, train_dev)
            order = torch.randperm(n, generator=generator).to(device)
            stop = n - (n % m) if (cfg.drop_last and n >= m) else n
            sums: dict[str, float] = {}
            steps = 0
            for s in range(0, stop, m):
                batch = _slice(train_dev, order[s:s + m])
                terms = method.loss_terms(batch, epoch)
                total = None
                for name, value in terms.items():
                    w = weights.get(name, 1.0)
                    if w == 0:
                        continue
                    if not torch.isfinite(value):
                        raise NonFiniteLoss(f"loss term {name!r} became {value.item()} at epoch {epoch}; "
                                            f"lower the learning rate or check the input features")
                    contrib = w * value
                    total = contrib if total is None else total + contrib
                    sums[name] = sums.get(name, 0.0) + float(contrib.detach())
                if total is None:
                    raise ValueError(f"every loss term of {getattr(method, 'name', method)} has weight 0")
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                sums["total"] = sums.get("total", 0.0) + float(total.detach())
                steps += 1
            record = {k: v / max(1, steps) for k, v in sums.items()}
            history.epochs.append(record)
            if bar is not None:
                bar.update(1, postfix=f"loss {record.get('total', math.nan):.4f}")
            if epoch == 0 or (epoch + 1) % max(1, n_epochs // 5) == 0 or epoch == n_epochs - 1:
                log.info("epoch %d/%d %s", epoch + 1, n_epochs,
                         " ".join(f"{k}={v:.4f}" for k, v in record.items()))
    finally:
        if bar is not None:
            bar.close()
    history.seconds = time.perf_counter() - start
    return history


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
