"""DJSRH specifics (the shared contract is in test_method_contract.py)."""
from __future__ import annotations

from stages.train.base import resolve_config
from tests.train.helpers import build, random_dims

TINY = {"image_hidden": (64,), "text_hidden": 64, "epochs": 5, "batch_size": 32}


def test_two_param_groups_with_the_reference_learning_rates():
    groups = build("djsrh", random_dims(), 16, overrides=TINY).param_groups()
    assert [g["lr"] for g in groups] == [0.001, 0.01]


def test_presets_follow_settings_py():
    assert resolve_config("djsrh", "mirflickr").beta == 0.9
    assert resolve_config("djsrh", "nuswide").beta == 0.6
    assert dict(resolve_config("djsrh").weights) == {"image_image": 0.1, "image_text": 1.0, "text_text": 0.1}
