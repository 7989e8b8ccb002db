"""Checks on a training request that run before any feature is loaded, so a bad value costs nothing.

Each failure is a one-line ConfigError naming the value and the fix; without these, ``--bits 0``
fails after training, ``--epochs 0`` writes a run that trained nothing, and ``--set lr=fast`` or
``--device cuda`` on a CPU machine end in a traceback.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from pipeline.ground.errors import ConfigError

#: Longest code accepted. The papers evaluate 16-128 bits (a few go to 256); 4,096 bits (64 uint64
#: words per code) is 32 times the longest published length, and already 10 MB per modality for a
#: 20,015-item database. A 100,000-bit run trained for 48 s and its codes would take 250 MB per
#: modality: such lengths are typos (an extra digit), not experiments.
MAX_BITS = 4096


def check_bits(bits: Sequence[int]) -> None:
    if not bits:
        raise ConfigError("no code length given: pass BITS= (--bits) as a comma list, e.g. 16,32,64,128")
    for b in bits:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BITS:
            raise ConfigError(f"code length {b!r} bits: each of BITS= (--bits) must be a whole number from 1 to "
                              f"{MAX_BITS}, e.g. 16,32,64,128")


def resolved_device(device: str | None) -> str:
    """The device a run trains on: the one asked for, else CUDA where there is a GPU, else the CPU."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_kind(device: str | None) -> str:
    """``cpu`` or ``cuda`` (``cuda:1`` is a CUDA device too); rows written before the device was recorded were
    all trained on the CPU."""
    return "cpu" if not device else str(device).split(":", 1)[0]


def check_device(device: str | None) -> None:
    """ConfigError for a device that is not a torch device, or CUDA asked for where there is none."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {device!r} is not a device: use cpu or cuda (cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}: use cpu or cuda")


def check_training_length(name: str, cfg: Any, closed_form: bool) -> None:
    """Refuse a deep method that would train nothing (epochs < 1) or could not form a batch."""
    if closed_form:
        return
    for key in ("epochs", "batch_size"):
        value = getattr(cfg, key, None)
        if value is not None and value < 1:
            raise ConfigError(f"{name}: {key}={value} trains nothing; give {key} >= 1 (EPOCHS=/--epochs, "
                              f"or --set {key}=N)")
    lr = getattr(cfg, "lr", None)
    if lr is not None and not lr > 0:
        raise ConfigError(f"{name}: lr={lr} never moves the weights; give a learning rate > 0")


#: The settings each optimiser reads (``stages.train.loop.make_optimizer`` builds it from them).
OPTIMIZER_SETTINGS: dict[str, tuple[str, ...]] = {"sgd": ("lr", "momentum", "nesterov", "weight_decay"),
                                                  "adam": ("lr", "betas", "weight_decay")}
#: Settings of the gradient loop; a closed-form method (fit once, no optimiser) reads none of them.
LOOP_SETTINGS = ("batch_size", "optimizer", "lr", "momentum", "nesterov", "weight_decay", "betas", "drop_last",
                 "weights")
#: What a closed-form method never reads: said ignored when given, and left out of its config (and run id).
CLOSED_FORM_IGNORED = ("epochs", *LOOP_SETTINGS)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_optimisation(name: str, cfg: Any, given: Mapping[str, Any], defaults: Any,
                       closed_form: bool) -> list[str]:
    """ConfigError for an optimisation setting the loop cannot use (found mid-training otherwise, after a
    run folder was started); returns a note for each setting in ``given`` (``--set``) that will be ignored."""
    notes = []
    changed = [k for k, v in given.items() if hasattr(defaults, k) and v is not None and v != getattr(defaults, k)]
    if closed_form:
        ignored = [k for k in changed if k in CLOSED_FORM_IGNORED]
        if ignored:
            notes.append(f"{name} is fitted in closed form, without an optimiser: its setting(s) "
                         f"{', '.join(ignored)} are ignored (the run is the one trained without them)")
        return notes
    optimizer = getattr(cfg, "optimizer", None)
    if optimizer is None:
        return notes
    if optimizer not in OPTIMIZER_SETTINGS:
        raise ConfigError(f"{name}: optimizer={optimizer!r} is not one cmh trains with; use "
                          f"{' or '.join(OPTIMIZER_SETTINGS)} (--set optimizer=adam)")
    for key in ("lr", "weight_decay", "momentum"):
        value = getattr(cfg, key, None)
        if value is not None and not (_number(value) and value >= 0):
            raise ConfigError(f"{name}: {key}={value!r}: give a finite number >= 0")
    if optimizer == "sgd" and getattr(cfg, "nesterov", False) and not getattr(cfg, "momentum", 0) > 0:
        raise ConfigError(f"{name}: nesterov=true needs momentum > 0 (momentum={cfg.momentum}); set --set "
                          f"momentum=0.9, or nesterov=false")
    betas = getattr(cfg, "betas", None)
    if betas is not None and not (len(betas) == 2 and all(_number(b) and 0 <= b < 1 for b in betas)):
        raise ConfigError(f"{name}: betas={list(betas)!r}: give two numbers in [0, 1), e.g. --set betas=[0.9,0.999]")
    weights = getattr(cfg, "weights", None) or {}
    bad = {k: v for k, v in weights.items() if not (_number(v) and v >= 0)}
    if bad:
        term, value = next(iter(bad.items()))
        raise ConfigError(f"{name}: loss weight {term}={value!r}: give a number >= 0 (0 switches the term off), "
                          f"e.g. --set 'weights={{\"{term}\": 0.5}}'")
    if weights and not any(weights.values()):
        raise ConfigError(f"{name}: every loss weight is 0, so nothing would be trained; keep at least one term > 0")
    ignored = [k for k in changed if k in LOOP_SETTINGS and k not in OPTIMIZER_SETTINGS[optimizer]
               and k in ("momentum", "nesterov", "betas")]
    if ignored:
        notes.append(f"{name}: optimizer {optimizer} does not read {', '.join(ignored)} "
                     f"(it reads {', '.join(OPTIMIZER_SETTINGS[optimizer])}): --set {', '.join(ignored)} is ignored")
    return notes
