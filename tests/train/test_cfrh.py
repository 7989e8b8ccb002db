"""CFRH: fused complementary affinity, autoencoder terms, training on real MIRFlickr pairs."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import stages.train.methods  # noqa: F401  (registers every method)
from pipeline.ground.errors import ConfigError
from stages.train.base import resolve_config
from stages.train.loop import fit_method
from stages.train.methods.cfrh import cross_affinity, reconstruction_error
from tests.train.helpers import (
    assert_all_terms_finite,
    assert_batch_independent,
    assert_binary_codes,
    assert_loss_falls,
    build,
    codes,
    random_batch,
    random_dims,
    real_mirflickr_features,
    train,
)

SMALL = {"image_hidden": (32,), "text_hidden": (64,)}
TERMS = ("image_text", "image_image", "text_text", "reconstruction_image", "reconstruction_text")


def test_cross_affinity_hand_values():
    s_i = torch.tensor([[1.0, -0.5], [-0.5, 1.0]])
    s_t = torch.tensor([[1.0, 0.2], [0.2, 1.0]])
    torch.testing.assert_close(cross_affinity(s_i, s_t, "hadamard"), torch.tensor([[1.0, -0.1], [-0.1, 1.0]]))
    # jdsh-high: cosines between rows of S_I and rows of S_T, symmetrised
    r = torch.tensor([1.0, -0.5]) / 1.25 ** 0.5
    q = torch.tensor([1.0, 0.2]) / 1.04 ** 0.5
    c00 = float(r @ q)
    c01 = float(r @ q.flip(0))
    c10 = float(r.flip(0) @ q)
    expected = torch.tensor([[c00, 0.5 * (c01 + c10)], [0.5 * (c01 + c10), c00]])
    torch.testing.assert_close(cross_affinity(s_i, s_t, "jdsh-high"), expected)
    with pytest.raises(ConfigError, match="hadamard"):
        cross_affinity(s_i, s_t, "product")


def test_affinity_is_the_fused_formula():
    dims = random_dims()
    batch = random_batch(dims, n=8)
    method = build("cfrh", dims, 16, overrides={**SMALL, "beta": 0.3, "gamma": 0.2, "eta": 0.5, "mu": 2.0})
    s_i = 2 * torch.nn.functional.normalize(batch.image) @ torch.nn.functional.normalize(batch.image).T - 1
    s_t = 2 * torch.nn.functional.normalize(batch.text) @ torch.nn.functional.normalize(batch.text).T - 1
    expected = 2.0 * (0.3 * s_i + 0.2 * s_t + 0.5 * s_i * s_t)
    torch.testing.assert_close(method.affinity(batch), expected)


def test_reconstruction_error_hand_value():
    features = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # unit rows: (0.6, 0.8), (0, 1)
    decoded = torch.tensor([[0.6, 0.8], [1.0, 1.0]])  # errors 0 and 1
    assert float(reconstruction_error(decoded, features)) == pytest.approx(0.5)


def test_unknown_cross_and_presets():
    with pytest.raises(ConfigError, match="jdsh-high"):
        build("cfrh", random_dims(), 16, overrides={"cross": "matrix"})
    nus = resolve_config("cfrh", "nuswide")
    assert (nus.beta, nus.gamma, nus.eta) == (0.4, 0.3, 0.3)
    assert set(nus.weights) == set(TERMS)


def test_terms_shapes_codes_and_batch_independence():
    dims = random_dims()
    batch = random_batch(dims, n=40)
    method = build("cfrh", dims, 16, overrides=SMALL)
    terms = assert_all_terms_finite(method, batch, epoch=3)
    assert set(terms) == set(TERMS)
    assert_binary_codes(method, batch)
    assert_batch_independent(method, batch)


def test_loss_falls_on_real_data():
    batch, dims = real_mirflickr_features(512)
    method, history = train("cfrh", batch, dims, 16, overrides={"image_hidden": (256,), "text_hidden": (512,)},
                            epochs=10)
    assert_loss_falls(history)
    assert_loss_falls(history, "image_text")
    assert_binary_codes(method, batch)
    assert_batch_independent(method, batch)
    for modality in ("image", "text"):  # not collapsed onto a few codes (seen with 32/64-wide layers)
        distinct = len(set(map(tuple, codes(method, batch, modality).tolist())))
        assert distinct > 200, f"{modality}: only {distinct} distinct codes for 512 items"


@pytest.mark.parametrize("term", TERMS)
def test_weight_zero_removes_the_term(term):
    """One full-batch step: the ablated total is the full total minus exactly that term's contribution."""
    dims = random_dims()
    batch = random_batch(dims, n=32)
    overrides = {**SMALL, "batch_size": 32}
    full = fit_method(build("cfrh", dims, 16, overrides=overrides), batch, seed=0, epochs=1).epochs[0]
    weights = {**resolve_config("cfrh").weights, term: 0.0}
    method = build("cfrh", dims, 16, overrides={**overrides, "weights": weights})
    ablated = fit_method(method, batch, seed=0, epochs=1).epochs[0]
    assert term not in ablated and term in full
    assert full[term] > 0
    assert ablated["total"] == pytest.approx(full["total"] - full[term], rel=1e-5)


def test_weights_reach_the_config():
    cfg = resolve_config("cfrh", overrides={"weights": {"reconstruction_text": 0.0}})
    assert cfg.weights["reconstruction_text"] == 0.0 and cfg.weights["image_text"] == 1.0
    assert dataclasses.is_dataclass(cfg)
