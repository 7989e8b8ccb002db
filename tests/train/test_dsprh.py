"""DSPRH: three-branch fusion, semantic-preserving reconstruction loss, training on real MIRFlickr pairs."""
from __future__ import annotations

import pytest
import torch

import stages.train.methods  # noqa: F401  (registers every method)
from pipeline.ground.errors import ConfigError
from stages.train import losses
from stages.train.base import FeatureBatch, FeatureDims, resolve_config
from stages.train.loop import fit_method
from stages.train.methods.dsprh import find_branches
from tests.train.helpers import (with_branches, 
    assert_all_terms_finite,
    assert_batch_independent,
    assert_binary_codes,
    assert_loss_falls,
    build,
    random_batch,
    random_dims,
    real_mirflickr_features,
    train,
)

SMALL = {"fusion_width": 64, "text_hidden": (64,)}
TERMS = ("text_text", "image_text", "image_image", "diagonal", "reconstruction_image", "reconstruction_text",
         "symmetry", "image_alignment", "text_alignment", "triplet", "pairwise")
ENC = "alexnet.imagenet"


def toy(n: int = 40) -> tuple[FeatureBatch, FeatureDims]:
    dims = random_dims(image=30, text=40)
    return with_branches(random_batch(dims, n=n), dims)


def test_missing_branches_raise_config_error_naming_the_fix():
    with pytest.raises(ConfigError, match="IMAGE=alexnet") as err:
        build("dsprh", random_dims(), 16)
    assert "toy:image" in str(err.value) and "sp_cov" in str(err.value)


def test_ambiguous_branch_raises():
    parts = {f"{ENC}:sp_cov": 8, f"{ENC}:cov": 8, f"{ENC}:pool": 4, "other.tag:pool": 4}
    with pytest.raises(ConfigError, match="ambiguous"):
        find_branches(parts, ("sp_cov", "cov", "pool"))
    assert find_branches(parts, ("sp_cov", "cov")) == [f"{ENC}:sp_cov", f"{ENC}:cov"]


def test_encode_without_branches_raises():
    batch, dims = toy()
    method = build("dsprh", dims, 16, overrides=SMALL)
    plain = FeatureBatch(image=batch.image, text=batch.text, labels=batch.labels, index=batch.index)
    with pytest.raises(ConfigError, match="trained on"):
        method.encode(plain, "image")
    assert method.encode(plain, "text").shape == (40, 16)  # text needs no image branch


def test_presets_and_bad_settings():
    assert resolve_config("dsprh", "mirflickr").branch_weights == (0.25, 0.25, 0.5)
    assert resolve_config("dsprh", "nuswide-n500").branch_weights == (0.125, 0.125, 0.75)
    _, dims = toy()
    with pytest.raises(ConfigError, match="relaxed"):
        build("dsprh", dims, 16, overrides={**SMALL, "decode_from": "binary"})
    with pytest.raises(ConfigError, match="similarity_branch"):
        build("dsprh", dims, 16, overrides={**SMALL, "similarity_branch": "fc7"})


def test_fusion_is_the_weighted_sum_of_branches():
    batch, dims = toy(n=6)
    method = build("dsprh", dims, 16, overrides={**SMALL, "branch_weights": (0.2, 0.3, 0.5)})
    parts = [batch.image_parts[k] for k in method.branch_keys]
    expected = sum(w * torch.relu(fc(x)) for w, fc, x in zip((0.2, 0.3, 0.5), method.fusion.maps, parts))
    torch.testing.assert_close(method.fusion(parts), expected)
    assert method.branch_keys == [f"{ENC}:sp_cov", f"{ENC}:cov", f"{ENC}:pool"]
    assert method.text_decoder.out_features == dims.image_parts[f"{ENC}:pool"]  # decodes into the S_I space


def test_terms_shapes_codes_and_batch_independence():
    batch, dims = toy()
    method = build("dsprh", dims, 16, overrides=SMALL)
    terms = assert_all_terms_finite(method, batch, epoch=2)
    assert set(terms) == set(TERMS)
    assert_binary_codes(method, batch)
    assert_batch_independent(method, batch)


def test_triplet_and_pairwise_follow_the_fused_similarity():
    """Negatives are the lowest-S̃ batch mates; the likelihood targets are 1[S̃ > 0] (S_I from the pool branch)."""
    batch, dims = toy(n=12)
    method = build("dsprh", dims, 16, overrides={**SMALL, "margin": 0.3})
    terms = method.loss_terms(batch, epoch=0)  # epoch 0: α = 1
    c_i, c_t = method.image_codes(batch), method.text_codes(batch)
    s_tilde = 0.9 * losses.feature_similarity(batch.image_parts[f"{ENC}:pool"]) \
        + 0.1 * losses.feature_similarity(batch.text)
    neg = s_tilde.fill_diagonal_(float("inf")).argmin(dim=1)
    expected = losses.cosine_triplet(c_i, c_t, c_t[neg], 0.3) + losses.cosine_triplet(c_t, c_i, c_i[neg], 0.3)
    torch.testing.assert_close(terms["triplet"], expected)
    s_tilde.fill_diagonal_(1.0)
    theta = 0.5 * c_i @ c_t.T
    expected_p = (torch.nn.functional.softplus(theta) - (s_tilde > 0).float() * theta).mean()
    torch.testing.assert_close(terms["pairwise"], expected_p)


@pytest.mark.parametrize("decode_from, reaches", [("relaxed", True), ("sign", False)])
def test_reconstruction_gradient_reaches_the_encoders_only_from_the_relaxed_code(decode_from, reaches):
    batch, dims = toy()
    method = build("dsprh", dims, 16, overrides={**SMALL, "decode_from": decode_from})
    terms = method.loss_terms(batch, epoch=0)
    (terms["reconstruction_image"] + terms["reconstruction_text"]).backward()
    grad = method.text_hash.linear.weight.grad
    assert (grad is not None and grad.abs().sum() > 0) == reaches
    assert method.text_decoder.weight.grad.abs().sum() > 0  # the decoders learn either way


def test_loss_falls_on_real_data():
    raw, raw_dims = real_mirflickr_features(512)
    batch, dims = with_branches(raw, raw_dims)
    method, history = train("dsprh", batch, dims, 16, overrides={"fusion_width": 256, "text_hidden": (512,)},
                            epochs=8)
    assert_loss_falls(history)
    assert_loss_falls(history, "image_text")
    assert_loss_falls(history, "pairwise")
    assert_binary_codes(method, batch)
    assert_batch_independent(method, batch)


@pytest.mark.parametrize("term", TERMS)
def test_weight_zero_removes_the_term(term):
    """One full-batch step: the ablated total is the full total minus exactly that term's contribution."""
    batch, dims = toy(n=32)
    overrides = {**SMALL, "batch_size": 32}
    full = fit_method(build("dsprh", dims, 16, overrides=overrides), batch, seed=0, epochs=1).epochs[0]
    weights = {**resolve_config("dsprh").weights, term: 0.0}
    ablated = fit_method(build("dsprh", dims, 16, overrides={**overrides, "weights": weights}), batch,
                         seed=0, epochs=1).epochs[0]
    assert term not in ablated and term in full
    assert full[term] != 0
    assert ablated["total"] == pytest.approx(full["total"] - full[term], rel=1e-5)
