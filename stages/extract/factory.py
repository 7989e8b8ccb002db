"""The encoder factory: kinds and preset ids -> configured encoders (open_clip's ``factory`` in small).

The kinds register themselves in ``base.ENCODERS`` when their module is imported; this module imports
them on first use, so ``cmh --help`` never loads torch or open_clip.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from pipeline.ground.config import merge_config
from pipeline.ground.errors import ConfigError
from pipeline.ground.registry import Entry, normalise_name
from stages.extract.base import ENCODERS, Encoder


def load_encoders() -> None:
    """Register every encoder kind (explicit imports, so listing is complete without scanning the disk)."""
    from stages.extract import alexnet, bow, clip  # noqa: F401


def _find(name: str) -> tuple[Entry, Mapping[str, Any]]:
    """(kind entry, preset options) for a kind name, alias or preset id."""
    load_encoders()
    key = normalise_name(name)
    for entry in ENCODERS.entries():
        if key in entry.variants:
            return entry, entry.variants[key]
    try:
        return ENCODERS.get(name), {}
    except KeyError as exc:
        ids = list_encoders()
        raise ConfigError(f"{exc.args[0]}; encoder ids: {', '.join(ids)}") from None


def spec_encoder_name(name: str) -> str:
    """How a run's identity (its id, config hash and report rows) names the encoder ``name`` of a feature spec:
    a preset id whose options are all its kind's defaults (``alexnet.imagenet``: tag imagenet) by the kind
    (``alexnet``), the spelling the published runs use, so that both spellings train one run; any other name
    as given (``clip-vit-b-32.openai`` is not ``clip``, whose weights default to $CLIP_WEIGHTS)."""
    load_encoders()
    for entry in ENCODERS.entries():
        options = entry.variants.get(name)
        if options is not None and dataclasses.is_dataclass(entry.config):
            defaults = {f.name: f.default for f in dataclasses.fields(entry.config)}
            return entry.name if all(k in defaults and defaults[k] == v for k, v in options.items()) else name
    return name


def list_encoders(pattern: str = "*") -> list[str]:
    """Kind names and preset ids, naturally sorted."""
    import fnmatch

    from pipeline.ground.registry import _natural_key

    load_encoders()
    names = set(ENCODERS.names())
    for entry in ENCODERS.entries():
        names.update(entry.variants)
    return sorted((n for n in names if fnmatch.fnmatch(n, pattern)), key=_natural_key)


def create_encoder(name: str, **options: Any) -> Encoder:
    """Build an encoder from a kind (``clip``), alias or preset id (``clip-vit-b-32.openai``).

    Resolution order: config dataclass defaults < variant < ``options`` (``None`` values dropped).
    """
    entry, variant = _find(name)
    cfg = merge_config(f"encoder {entry.name!r}", entry.config, (f"variant {name}", variant), ("option", options))
    return entry.builder(cfg)
