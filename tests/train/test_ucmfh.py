"""UCMFH: fusion transformer + hash MLPs; single-modality encoding (default) and the paired reference mode."""
from __future__ import annotations

import pytest
import torch

from pipeline.ground.errors import ConfigError
from stages.train.base import FeatureBatch, resolve_config
from stages.train.loop import encode_split
from tests.train.helpers import (assert_all_terms_finite, assert_batch_independent, assert_binary_codes,
                                 assert_loss_falls, build, random_batch, random_dims,
                                 real_mirflickr_features, train, weighted_loss)

TINY = {"project_to": 32, "fusion_feedforward": 64, "hash_hidden": 64, "epochs": 5, "batch_size": 32}


def _with_text(batch: FeatureBatch, text: torch.Tensor) -> FeatureBatch:
    return FeatureBatch(batch.image, text, batch.labels, batch.index)


def test_trains_on_real_mirflickr_and_codes_each_modality_alone():
    batch, dims = real_mirflickr_features(192)
    before = weighted_loss(build("ucmfh", dims, 16, overrides=TINY), batch)
    method, history = train("ucmfh", batch, dims, 16, overrides=TINY)
    assert_loss_falls(history)
    assert weighted_loss(method, batch) < before
    assert_binary_codes(method, batch)
    assert_batch_independent(method, batch)
    # the image code does not depend on the text that comes with it
    shuffled = _with_text(batch, batch.text[torch.randperm(batch.text.shape[0])])
    assert torch.equal(encode_split(method, batch, "image"), encode_split(method, shuffled, "image"))


def test_paired_mode_reproduces_the_reference_leak_and_refuses_single_encoding():
    batch, dims = real_mirflickr_features(192)
    method, _ = train("ucmfh", batch, dims, 16, overrides={**TINY, "eval_mode": "paired", "epochs": 2})
    with pytest.raises(ConfigError, match="eval_mode='paired'"):
        method.encode(batch, "image")
    paired = encode_split(method, batch, "image", paired=True)
    assert paired.shape == (192, 16)
    small = encode_split(method, batch, "image", batch_size=7, paired=True)
    torch.testing.assert_close(small, paired, atol=1e-5, rtol=0)
    shuffled = _with_text(batch, batch.text[torch.randperm(batch.text.shape[0])])
    assert not torch.allclose(encode_split(method, shuffled, "image", paired=True), paired)  # the image code leaks
    assert not any(n.startswith("missing") for n, _ in method.named_parameters())  # no masking trained


@pytest.mark.parametrize("missing_token", ["learned", "zeros"])
def test_terms_finite_for_any_batch_size(missing_token):
    dims = random_dims()
    method = build("ucmfh", dims, 16, overrides={**TINY, "missing_token": missing_token})
    for m in (1, 5, 33):
        terms = assert_all_terms_finite(method, random_batch(dims, m))
        assert set(terms) == {"fusion", "hash"}


def test_every_sample_masked_still_trains_the_missing_token():
    dims = random_dims()
    method = build("ucmfh", dims, 16, overrides={**TINY, "mask_probability": 1.0})
    method.train()
    sum(method.loss_terms(random_batch(dims, 16), 0).values()).backward()
    assert method.missing_text.grad.abs().sum() > 0 and method.missing_image.grad.abs().sum() > 0


def test_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="project_to"):
        build("ucmfh", random_dims(image=24, text=40), 16, overrides={"project_to": 0})  # unequal halves
    assert build("ucmfh", random_dims(image=24, text=40), 16).widths == (512, 512)  # "auto" projects them
    with pytest.raises(ConfigError, match="project_to"):
        build("ucmfh", random_dims(image=31, text=31), 16, overrides={"project_to": 0})  # 62 values do not split over 4 heads
    with pytest.raises(ConfigError, match="mask_probability"):
        build("ucmfh", random_dims(), 16, overrides={"mask_probability": 0.0})
    with pytest.raises(ConfigError, match="eval_mode"):
        build("ucmfh", random_dims(), 16, overrides={"eval_mode": "both"})


def test_reference_optimisation_settings():
    cfg = resolve_config("ucmfh", "mirflickr")
    assert (cfg.optimizer, tuple(cfg.betas), cfg.lr, cfg.fusion_lr, cfg.batch_size, cfg.epochs) == \
        ("adam", (0.5, 0.999), 1e-3, 1e-4, 128, 100)
    assert dict(cfg.weights) == {"fusion": 1.0, "hash": 0.5}
    assert resolve_config("ucmfh", "nuswide").epochs == 150 and resolve_config("ucmfh", "coco").epochs == 500
    groups = build("ucmfh", random_dims(), 16, overrides=TINY).param_groups()
    assert [g["lr"] for g in groups] == [1e-4, 1e-3]
    n_params = sum(p.numel() for g in groups for p in g["params"])
    assert n_params == sum(p.numel() for p in build("ucmfh", random_dims(), 16, overrides=TINY).parameters())
