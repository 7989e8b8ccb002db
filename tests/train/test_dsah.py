"""DSAH on a small real MIRFlickr sample (and random data for shapes and the decoder switch)."""
from __future__ import annotations

import pytest
import torch

from pipeline.errors import ConfigError
from stages.train.base import resolve_config
from tests.train.helpers import (assert_all_terms_finite, assert_batch_independent, assert_binary_codes,
                                 assert_loss_falls, build, codes, random_batch, random_dims,
                                 real_mirflickr_features, train)

TINY = {"image_hidden": (64,), "text_hidden": 64, "epochs": 5, "batch_size": 32}
TERMS = {"text_text", "image_text", "image_image", "image_alignment", "text_alignment", "diagonal",
         "reconstruction_image", "reconstruction_text", "symmetry"}


def test_trains_on_real_mirflickr_and_encodes_each_modality_alone():
    batch, dims = real_mirflickr_features(192)
    method, history = train("dsah", batch, dims, 16, overrides=TINY)
    assert_loss_falls(history)
    assert_binary_codes(method, batch)
    assert_batch_independent(method, batch)


def test_same_seed_same_codes():
    dims = random_dims()
    batch = random_batch(dims, 64)
    runs = [train("dsah", batch, dims, 8, seed=2, overrides={**TINY, "epochs": 2})[0] for _ in range(2)]
    for modality in ("image", "text"):
        assert torch.equal(codes(runs[0], batch, modality), codes(runs[1], batch, modality))


def test_terms_are_finite_and_named_as_configured():
    dims = random_dims()
    terms = assert_all_terms_finite(build("dsah", dims, 16, overrides=TINY), random_batch(dims, 9))
    assert set(terms) == TERMS


@pytest.mark.parametrize("decode_from, reaches_encoder", [("sign", False), ("relaxed", True)])
def test_decode_from_sign_blocks_the_reconstruction_gradient(decode_from, reaches_encoder):
    dims = random_dims()
    method = build("dsah", dims, 16, overrides={**TINY, "decode_from": decode_from})
    method.loss_terms(random_batch(dims, 16), epoch=0)["reconstruction_image"].backward()
    grad = method.text_hash.linear.weight.grad
    assert (grad is not None and grad.abs().sum() > 0) == reaches_encoder
    assert method.text_decoder.weight.grad.abs().sum() > 0  # the decoder always learns


def test_unknown_decode_from_is_rejected():
    with pytest.raises(ConfigError, match="decode_from"):
        build("dsah", random_dims(), 16, overrides={"decode_from": "binary"})


def test_weights_follow_train_py():
    w = resolve_config("dsah", "mirflickr").weights
    assert w["symmetry"] == 2.0 and w["image_alignment"] == w["text_alignment"] == 0.1
    assert set(w) == TERMS
