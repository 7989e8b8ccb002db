"""The method interface, its registry and factory.

A method is a ``HashingMethod`` built from its frozen config dataclass and the feature widths it
finds in the cache. It exposes named, unweighted loss terms; the single loop in ``loop.py`` owns the
optimiser, the weighting and everything else. Closed-form methods (the baselines) implement ``fit``
instead of ``loss_terms``.
"""
from __future__ import annotations

import abc
import dataclasses
import functools
import json
import logging
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.ground.config import merge_config
from pipeline.ground.errors import CacheError, ConfigError
from pipeline.ground.registry import Registry
from pipeline.ground.store.aligned import AlignedFeatures
from stages.train.checks import CLOSED_FORM_IGNORED, check_optimisation

log = logging.getLogger(__name__)

Modality = str  # "image" | "text"


@dataclass(frozen=True)
class FeatureDims:
    """Input widths, read from the feature store schema."""

    image: int  # width of the concatenated image features
    text: int
    labels: int
    image_parts: Mapping[str, int] = field(default_factory=dict)  # "encoder:column" -> width, in order
    text_parts: Mapping[str, int] = field(default_factory=dict)
    #: True when every text feature is non-negative counts/indicators (a bag of words); CCAH's tag graph needs it.
    text_is_bow: bool = False

    @classmethod
    def from_features(cls, features: AlignedFeatures) -> "FeatureDims":
        """The widths of a split's features (the training split's, for a new model)."""
        text = features.text_matrix
        return cls(
            image=sum(v.shape[1] for v in features.image.values()),
            text=text.shape[1],
            labels=features.labels.shape[1],
            image_parts={k: v.shape[1] for k, v in features.image.items()},
            text_parts={k: v.shape[1] for k, v in features.text.items()},
            text_is_bow=bool((text >= 0).all() and np.array_equal(text, np.round(text))),
        )


@dataclass
class FeatureBatch:
    """m aligned items. ``image``/``text`` are the concatenated features; ``*_parts`` the branches."""

    image: Tensor  # (m, d_i) float32
    text: Tensor  # (m, d_t) float32
    labels: Tensor  # (m, L) float32 multi-hot; only supervised methods may read it
    index: Tensor  # (m,) int64 row positions in the training split
    image_parts: dict[str, Tensor] = field(default_factory=dict)
    text_parts: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def from_features(cls, features: AlignedFeatures, dims: FeatureDims | None = None) -> "FeatureBatch":
        """Aligned features as tensors (no copy where numpy allows); the one place a batch is built.

        With ``dims`` (a trained model's widths) the parts follow the model's order, and a modality the
        features lack (a typed query has one) is zeros of the model's width: methods code each modality
        from its own features, so the other one is never read.
        """
        n = len(features)
        image = {k: features.image[k] for k in (dims.image_parts if dims else features.image) if k in features.image}
        text = {k: features.text[k] for k in (dims.text_parts if dims else features.text) if k in features.text}
        labels = features.labels if features.labels.shape[1] or dims is None else np.zeros((n, dims.labels), np.uint8)
        return cls(
            image=torch.from_numpy(_matrix(image, n, dims.image if dims else 0)),
            text=torch.from_numpy(_matrix(text, n, dims.text if dims else 0)),
            labels=torch.from_numpy(labels.astype(np.float32)),
            index=torch.arange(n),
            image_parts={k: torch.from_numpy(v) for k, v in image.items()},
            text_parts={k: torch.from_numpy(v) for k, v in text.items()},
        )

    def to(self, device: torch.device | str) -> "FeatureBatch":
        return FeatureBatch(
            self.image.to(device), self.text.to(device), self.labels.to(device), self.index.to(device),
            {k: v.to(device) for k, v in self.image_parts.items()},
            {k: v.to(device) for k, v in self.text_parts.items()},
        )


def _matrix(parts: Mapping[str, np.ndarray], n: int, width: int) -> np.ndarray:
    """The parts side by side, (n, sum of widths); zeros (n, width) when there are none."""
    if not parts:
        return np.zeros((n, width), np.float32)
    return np.concatenate(list(parts.values()), axis=1)


@dataclass(frozen=True)
class MethodConfig:
    """Optimisation settings every deep method has; subclasses override the defaults with their sources."""

    epochs: int = 50
    batch_size: int = 32
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.005
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    #: Drop the last incomplete training batch (only training; evaluation never drops rows).
    drop_last: bool = True
    #: Loss weights keyed by term name; a term with weight 0 is skipped (the ablation switch).
    weights: Mapping[str, float] = field(default_factory=dict)


class HashingMethod(nn.Module, metaclass=abc.ABCMeta):
    """Base class. Subclasses set ``supervised``/``closed_form`` and implement the hooks below;
    ``encode_image`` and ``encode_text`` are required."""

    #: The registry id (``create_method`` sets it on the instance).
    name: str = ""
    supervised: bool = False
    #: True for methods with the labelled "paired" evaluation mode (UCMFH-style fusion): they implement
    #: ``paired_codes``, which codes each item from both its halves.
    supports_paired: bool = False
    #: Closed-form methods implement ``fit`` and are not run through the gradient loop.
    closed_form: bool = False
    #: Feature specs used when the user names none (``IMAGE=``/``TEXT=`` unset). AlexNet's pooled conv5 is the
    #: stand-in for the fc7 feature the DJSRH family reads; a method that needs other inputs overrides these.
    default_image_features: str = "alexnet:pool"
    default_text_features: str = "bow"

    def __init__(self, cfg: Any, dims: FeatureDims, bits: int) -> None:
        super().__init__()
        self.cfg, self.dims, self.bits = cfg, dims, bits

    def param_groups(self) -> list[dict[str, Any]]:
        """Per-part learning rates; the default is one group at ``cfg.lr``."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": self.cfg.lr}]

    def loss_terms(self, batch: FeatureBatch, epoch: int) -> dict[str, Tensor]:
        """Named, unweighted scalar loss terms for one batch."""
        raise NotImplementedError

    def encode(self, features: FeatureBatch, modality: Modality) -> Tensor:
        """Relaxed codes (m, bits) of one modality, computed from that modality's features alone."""
        if modality == "image":
            return self.encode_image(features)
        if modality == "text":
            return self.encode_text(features)
        raise ValueError(f"unknown modality {modality!r}; use 'image' or 'text'")

    @abc.abstractmethod
    def encode_image(self, features: FeatureBatch) -> Tensor:
        """Relaxed image codes (m, bits) from ``features.image`` (and its parts) alone."""

    @abc.abstractmethod
    def encode_text(self, features: FeatureBatch) -> Tensor:
        """Relaxed text codes (m, bits) from ``features.text`` (and its parts) alone."""

    def encode_paired(self, features: FeatureBatch, modality: Modality) -> Tensor:
        """Relaxed codes of one modality computed from both halves of each item (the labelled "paired"
        mode; ``supports_paired`` methods only)."""
        if modality not in ("image", "text"):
            raise ValueError(f"unknown modality {modality!r}; use 'image' or 'text'")
        image, text = self.paired_codes(features)
        return image if modality == "image" else text

    def paired_codes(self, features: FeatureBatch) -> tuple[Tensor, Tensor]:
        """(image codes, text codes), each item coded from its image and its text together."""
        raise ConfigError(f"{self.name or type(self).__name__} has no paired evaluation mode; "
                          f"it is for UCMFH-style fusion methods (--eval-mode single)")

    def fit(self, train: FeatureBatch, score: Callable[[], float] | None = None) -> dict[str, Any] | None:
        """Closed-form training on the whole training split (closed_form methods only).

        ``score()``, when given, returns the current model's validation score (higher is better); a
        method that has settings its paper leaves open chooses them with it and returns
        ``{"grid": [{setting..., "score": s}, ...], "chosen": {setting...}}``. It never sees query data.
        """
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, train: FeatureBatch) -> None:
        """Optional hook (e.g. refresh a memory bank); must not touch query or database data."""


METHODS: Registry = Registry("method", "cmh list methods")


def register_method(name: str, *, config: type, dataset_presets: Mapping[str, Mapping[str, Any]] | None = None,
                    aliases: tuple[str, ...] = ()):
    """Register a method. ``dataset_presets`` maps a dataset to the overrides its paper used there."""
    return METHODS.register(name, config=config, dataset_presets=dataset_presets, aliases=aliases)


def resolve_config(name: str, dataset: str | None = None, overrides: Mapping[str, Any] | None = None) -> Any:
    """dataclass defaults < dataset preset < overrides (``None`` values dropped, as timm does)."""
    entry = METHODS.get(name)
    cfg_cls = entry.config
    preset_key = dataset.split("-")[0] if dataset is not None else None
    preset = entry.dataset_presets.get(preset_key, {}) if preset_key else {}
    given = dict(overrides or {})
    if entry.builder.closed_form:  # said ignored below, and kept out of the config: the run id is the config's
        # hash, so `--epochs 2` (a table's dry run) made a second baseline run, with the same codes as the first
        given = {k: v for k, v in given.items() if k not in CLOSED_FORM_IGNORED}
    cfg = merge_config(entry.name, cfg_cls, (f"dataset preset {preset_key}", preset), ("--set", given))
    merged = {**preset, **{k: v for k, v in given.items() if v is not None}}
    weights = getattr(cfg, "weights", None)
    if weights is not None and "weights" in merged:
        defaults = cfg_cls().weights
        bad = set(merged["weights"]) - set(defaults)
        if bad:
            raise ConfigError(f"{entry.name} has no loss term(s) {sorted(bad)}; terms: {', '.join(defaults)}")
        cfg = dataclasses.replace(cfg, weights={**defaults, **merged["weights"]})
    for note in check_optimisation(entry.name, cfg, overrides or {}, cfg_cls(), entry.builder.closed_form):
        _say_once(note)
    return cfg


@functools.lru_cache(maxsize=None)
def _say_once(note: str) -> None:
    """A warning about the settings, once per process (a config is resolved several times per run)."""
    log.warning("%s", note)


def create_method(name: str, *, dims: FeatureDims, bits: int, dataset: str | None = None,
                  overrides: Mapping[str, Any] | None = None) -> HashingMethod:
    entry = METHODS.get(name)
    cfg = resolve_config(entry.name, dataset, overrides)
    method = entry.builder(cfg, dims, bits)
    method.name = entry.name
    return method


def save_method(method: HashingMethod, path: Path | BinaryIO, *, run_id: str | None = None) -> None:
    """Write a trained method to ``path`` (or an open binary file): weights, resolved config (JSON form),
    dims, name and bits, and the id of the run it was trained for (the seed is in the id, not the config)."""
    config = json.loads(json.dumps(dataclasses.asdict(method.cfg), default=str))
    saved = {"state_dict": method.state_dict(), "config": config, "dims": dataclasses.asdict(method.dims),
             "method": method.name, "bits": method.bits}
    torch.save({**saved, "run_id": run_id} if run_id is not None else saved, path)


def load_method(path: Path, *, method: str | None = None, bits: int | None = None,
                run_id: str | None = None) -> HashingMethod:
    """The method saved at ``path`` by :func:`save_method`, weights loaded, in eval mode.

    Every method registers its buffers (closed-form projections, anchors, means) in ``__init__`` with
    their final shapes, so the saved state loads strictly. ``method`` and ``bits``: what the run's config
    says it trained; a model of another method or code length (a ``model.pt`` copied from another run)
    is refused, since its codes would be compared with database codes it did not make. ``run_id``: the
    same for a model of another seed or config, when the file names its run (models saved before it did
    are taken as they are)."""
    fix = "train the run again with `cmh train ... --force`"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise CacheError(f"{path} cannot be loaded ({type(exc).__name__}); {fix}") from None
    fields = ("state_dict", "config", "dims", "method", "bits")
    if not isinstance(saved, dict) or any(f not in saved for f in fields):
        what = (f"no {', '.join(f for f in fields if f not in saved)}" if isinstance(saved, dict)
                else f"a {type(saved).__name__}")
        raise CacheError(f"{path} is not a model saved by `cmh train` ({what}); {fix}")
    try:
        entry = METHODS.get(saved["method"])
        tuples = {f.name for f in dataclasses.fields(entry.config) if isinstance(f.default, tuple)}
        # JSON turned tuples (betas) into lists; the config dataclass wants them back
        config = {k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in saved["config"].items()}
        model = create_method(entry.name, dims=FeatureDims(**saved["dims"]), bits=int(saved["bits"]),
                              overrides=config)
        model.load_state_dict(saved["state_dict"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        detail = (str(exc.args[0]) if exc.args else type(exc).__name__).splitlines()[0][:120]
        raise CacheError(f"{path} holds a model cmh cannot rebuild ({type(exc).__name__}: {detail}); {fix}") from None
    if (method is not None and entry.name != METHODS.resolve(method)) or (bits is not None and model.bits != bits):
        raise CacheError(f"{path} holds a {entry.name} model of {model.bits} bits, but its run trained {method} at "
                         f"{bits} bits (a model.pt copied from another run?); {fix}")
    if run_id is not None and saved.get("run_id") not in (None, run_id):
        raise CacheError(f"{path} holds the model of run {saved['run_id']}, not of run {run_id} (a model.pt "
                         f"copied from another run?); {fix}")
    return model.eval()
