"""Config resolution, one function for every registry: defaults < named layers < overrides.

A registered entry (a method, an encoder kind) owns a frozen config dataclass. ``merge_config`` lays
the given layers over the dataclass defaults, refuses a key the dataclass lacks and a value of
another type than the field declares (``--set lr=fast``), each as a one-line ConfigError naming the
fix, and checks that the result survives a JSON round trip: the config is hashed into run ids and
cache manifests and stored beside every artifact as JSON.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from pipeline.ground.errors import ConfigError

#: Annotation (as written, ``| None`` removed) -> (accepts the value, what to say). Unions such as
#: ``int | str`` are not checked here: the owner validates its own special values.
_KINDS: dict[str, tuple[Any, str]] = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
}


def _kind(annotation: Any) -> tuple[Any, str] | None:
    text = str(annotation).replace(" | None", "").replace("Optional[", "").strip()
    if text in _KINDS:
        return _KINDS[text]
    if text.startswith("tuple"):
        return (lambda v: isinstance(v, (list, tuple)), "a JSON list")
    if text.startswith(("Mapping", "dict")):
        return (lambda v: isinstance(v, Mapping), "a JSON object")
    return None


def check_setting_types(owner: str, cfg_cls: type, values: Mapping[str, Any]) -> None:
    """ConfigError when a value has another type than its field declares (``lr=fast``, ``epochs=2.5``)."""
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    for key, value in values.items():
        f = fields.get(key)
        kind = _kind(f.type) if f is not None else None
        if kind is None or value is None or kind[0](value):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        example = f", e.g. --set {key}={json.dumps(default)}" if default is not None else ""
        raise ConfigError(f"{owner} setting {key}={value!r}: expected {kind[1]}{example}")


def merge_config(owner: str, cfg_cls: type, *layers: tuple[str, Mapping[str, Any] | None]) -> Any:
    """``cfg_cls`` built from its defaults and ``layers`` ((what, values), later wins; None values dropped).

    ``what`` names the layer in errors (``"--set"``, ``"preset mirflickr"``, ``"option"``)."""
    valid = {f.name for f in dataclasses.fields(cfg_cls)}
    merged: dict[str, Any] = {}
    for what, values in layers:
        given = {k: v for k, v in (values or {}).items() if v is not None}
        unknown = sorted(set(given) - valid)
        if unknown:
            raise ConfigError(f"{owner} has no setting(s) {unknown} ({what}); valid settings: "
                              f"{', '.join(sorted(valid))}")
        merged.update(given)
    check_setting_types(owner, cfg_cls, merged)
    cfg = cfg_cls(**merged)
    check_json_round_trip(owner, cfg)
    return cfg


def config_json(cfg: Any) -> dict[str, Any]:
    """The JSON form of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def check_json_round_trip(owner: str, cfg: Any) -> None:
    """ConfigError when a config does not survive JSON (a value JSON cannot hold, or one it changes)."""
    try:
        back = config_json(cfg)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{owner} config cannot be stored as JSON ({exc}); give plain numbers, strings, "
                          f"lists and objects") from None
    for key, value in dataclasses.asdict(cfg).items():
        same = list(value) == back[key] if isinstance(value, tuple) else value == back[key]
        if not same:
            raise ConfigError(f"{owner} setting {key}={value!r} does not survive JSON (reads back as "
                              f"{back[key]!r}); give a plain JSON value")
