"""merge_config: one resolution for every registry (defaults < layers; typed; JSON round trip)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import pytest

from pipeline.ground.config import merge_config
from pipeline.ground.errors import ConfigError


@dataclass(frozen=True)
class Toy:
    lr: float = 0.1
    epochs: int = 3
    hidden: tuple[int, ...] = (8,)
    name: str | None = None
    weights: Mapping[str, float] = field(default_factory=dict)
    anything: Any = None


def test_later_layers_win_and_none_keeps_the_default():
    cfg = merge_config("toy", Toy, ("preset", {"lr": 0.5, "epochs": 7}), ("--set", {"lr": 2, "epochs": None}))
    assert (cfg.lr, cfg.epochs, cfg.hidden) == (2, 7, (8,))


@pytest.mark.parametrize("values, message", [
    ({"lr": "fast"}, "toy setting lr='fast': expected a number, e.g. --set lr=0.1"),
    ({"epochs": 2.5}, "epochs=2.5: expected an integer"),
    ({"epochs": True}, "expected an integer"),
    ({"hidden": 8}, "expected a JSON list"),
    ({"weights": [1]}, "expected a JSON object"),
    ({"lrr": 1.0}, r"toy has no setting\(s\) \['lrr'\] \(--set\); valid settings: anything, epochs"),
])
def test_bad_values_are_one_line_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        merge_config("toy", Toy, ("--set", values))


def test_a_value_json_cannot_hold_is_refused():
    with pytest.raises(ConfigError, match="cannot be stored as JSON"):
        merge_config("toy", Toy, ("--set", {"anything": object()}))
    with pytest.raises(ConfigError, match="does not survive JSON"):
        merge_config("toy", Toy, ("--set", {"anything": {1: "a"}}))  # an int key comes back as "1"


def test_every_registry_resolves_through_merge_config():
    from stages.extract import create_encoder
    from stages.train import methods  # noqa: F401  (registers every method: the test must not rely on others)
    from stages.train.base import resolve_config

    with pytest.raises(ConfigError, match="lr='fast': expected a number"):
        resolve_config("djsrh", "mirflickr", {"lr": "fast"})
    with pytest.raises(ConfigError, match=r"encoder 'bow' setting .*expected"):
        create_encoder("bow", top_n="3")
