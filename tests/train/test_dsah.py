"""DSAH specifics: the decoder switch and the weights (the shared contract is in test_method_contract.py)."""
from __future__ import annotations

import pytest

from pipeline.ground.errors import ConfigError
from stages.train.base import resolve_config
from tests.train.helpers import build, random_batch, random_dims

TINY = {"image_hidden": (64,), "text_hidden": 64, "epochs": 5, "batch_size": 32}
TERMS = {"text_text", "image_text", "image_image", "image_alignment", "text_alignment", "diagonal",
         "reconstruction_image", "reconstruction_text", "symmetry"}


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
