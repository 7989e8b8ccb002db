"""Checks on a training request that run before any feature is loaded, so a bad value costs nothing.

Each failure is a one-line ConfigError naming the value and the fix; without these, ``--bits 0``
fails after training, ``--epochs 0`` writes a run that trained nothing, and ``--set lr=fast`` or
``--device cuda`` on a CPU machine end in a traceback.
"""
from __future__ import annotations

from typing import Any, Sequence

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
