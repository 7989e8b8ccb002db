"""DJSRH on a small real MIRFlickr sample (and random data for shapes)."""
from __future__ import annotations

import torch

from stages.train.base import resolve_config
from tests.train.helpers import (assert_all_terms_finite, assert_batch_independent, assert_binary_codes,
                                 assert_loss_falls, build, codes, random_batch, random_dims,
                                 real_mirflickr_features, train)

TINY = {"image_hidden": (64,), "text_hidden": 64, "epochs": 5, "batch_size": 32}


def test_trains_on_real_mirflickr_and_encodes_each_modality_alone():
    batch, dims = real_mirflickr_features(192)
    method, history = train("djsrh", batch, dims, 16, overrides=TINY)
    assert_loss_falls(history)
    assert_binary_codes(method, batch)
    assert_batch_independent(method, batch)


def test_same_seed_same_codes():
    dims = random_dims()
    batch = random_batch(dims, 64)
    runs = [train("djsrh", batch, dims, 8, seed=5, overrides={**TINY, "epochs": 2})[0] for _ in range(2)]
    for modality in ("image", "text"):
        assert torch.equal(codes(runs[0], batch, modality), codes(runs[1], batch, modality))


def test_terms_are_finite_and_named_as_configured():
    dims = random_dims()
    terms = assert_all_terms_finite(build("djsrh", dims, 16, overrides=TINY), random_batch(dims, 9))
    assert set(terms) == {"image_image", "image_text", "text_text"}


def test_two_param_groups_with_the_reference_learning_rates():
    groups = build("djsrh", random_dims(), 16, overrides=TINY).param_groups()
    assert [g["lr"] for g in groups] == [0.001, 0.01]


def test_presets_follow_settings_py():
    assert resolve_config("djsrh", "mirflickr").beta == 0.9
    assert resolve_config("djsrh", "nuswide").beta == 0.6
    assert dict(resolve_config("djsrh").weights) == {"image_image": 0.1, "image_text": 1.0, "text_text": 0.1}
