"""FJSPH: supervised fusion hashing (masked fusion, label-similarity terms), training on real MIRFlickr pairs."""
from __future__ import annotations

import math

import pytest
import torch

import stages.train.methods  # noqa: F401  (registers every method)
from pipeline.ground.errors import ConfigError
from stages.train.base import FeatureBatch, resolve_config
from stages.train.loop import encode_split, fit_method
from stages.train.methods.fjsph import cluster_divergence, label_similarity
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

SMALL = {"project_to": 16, "hash_hidden": 32, "fusion_feedforward": 32, "batch_size": 32}
REAL = {"project_to": 64, "hash_hidden": 256, "fusion_feedforward": 128, "batch_size": 64,
        "lr": 3e-3, "fusion_lr": 3e-4}  # 3x the default LRs so 6 epochs on 512 items show the effect
TERMS = ("fusion", "hash", "sample", "cluster", "quantization")


def test_label_similarity_hand_values():
    y = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    cos = label_similarity(y, "cosine")
    assert float(cos[0, 1]) == pytest.approx(1 / math.sqrt(2))
    assert float(cos[0, 2]) == 0.0 and float(cos[3, 3]) == 0.0  # no labels: similar to nothing
    binary = label_similarity(y, "binary")
    assert binary[0, 1] == 1.0 and binary[1, 2] == 0.0 and binary[3, 3] == 0.0
    with pytest.raises(ConfigError, match="cosine"):
        label_similarity(y, "jaccard")


def test_cluster_divergence_hand_value():
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # (c=2, k=2)
    codes_ = torch.tensor([[2.0, 0.0], [0.5, 0.5]])  # cosines: (1, 0) and (1/√2, 1/√2)
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # the second item has no label: left out
    q0 = torch.softmax(torch.tensor([1.0, 0.0]) / 0.5, dim=0)
    expected = -math.log(float(q0[0]))  # KL(one-hot ‖ q) = −log q_label
    assert float(cluster_divergence(codes_, prototypes, labels, 0.5)) == pytest.approx(expected, rel=1e-5)
    none = cluster_divergence(codes_.requires_grad_(), prototypes, torch.zeros(2, 2), 0.5)
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_is_supervised_and_has_paired_mode():
    method = build("fjsph", random_dims(), 16, overrides=SMALL)
    assert method.supervised is True and method.supports_paired is True
    assert "FLIP" in method.cfg.paper_features


def test_presets_and_bad_settings():
    assert resolve_config("fjsph", "nuswide").epochs == 150
    assert resolve_config("fjsph", "coco-n500").epochs == 500
    with pytest.raises(ConfigError, match="mask_probability"):
        build("fjsph", random_dims(), 16, overrides={**SMALL, "mask_probability": 1.5})
    with pytest.raises(ConfigError, match="project_to"):
        build("fjsph", random_dims(image=25, text=40), 16, overrides={**SMALL, "project_to": 0})


def test_masked_fusion_matches_single_and_paired_paths():
    dims = random_dims()
    batch = random_batch(dims, n=10)
    method = build("fjsph", dims, 16, overrides=SMALL).eval()  # eval: no dropout, so passes are comparable
    fusion = method.fusion
    with torch.no_grad():
        solo = torch.tensor([True, False] * 5)
        z_i, z_t = fusion.masked(batch.image, batch.text, solo)
        p_i, p_t = fusion.paired(batch.image, batch.text)
        torch.testing.assert_close(z_i[~solo], p_i[~solo])
        torch.testing.assert_close(z_t[~solo], p_t[~solo])
        torch.testing.assert_close(z_i[solo], fusion.image_alone(batch.image)[solo])
        torch.testing.assert_close(z_t[solo], fusion.text_alone(batch.text)[solo])


def test_single_mode_codes_ignore_the_other_modality_and_the_labels():
    dims = random_dims()
    batch = random_batch(dims, n=20)
    method = build("fjsph", dims, 16, overrides=SMALL)
    other = random_batch(dims, n=20, seed=9)
    swapped = FeatureBatch(image=batch.image, text=other.text, labels=other.labels, index=batch.index)
    torch.testing.assert_close(encode_split(method, batch, "image"), encode_split(method, swapped, "image"))
    paired_a = encode_split(method, batch, "image", paired=True)
    paired_b = encode_split(method, swapped, "image", paired=True)
    assert not torch.allclose(paired_a, paired_b)  # the labelled reference mode does see the paired text


def test_labels_drive_the_supervised_terms():
    dims = random_dims()
    batch = random_batch(dims, n=32)
    method = build("fjsph", dims, 16, overrides={**SMALL, "mask_probability": 0.0})
    method.eval()  # no dropout, no masking randomness: only the labels differ below
    with torch.no_grad():
        terms = method.loss_terms(batch, 0)
        flipped = FeatureBatch(image=batch.image, text=batch.text, labels=1.0 - batch.labels, index=batch.index)
        other = method.loss_terms(flipped, 0)
    for name in ("sample", "cluster"):
        assert float(terms[name]) != pytest.approx(float(other[name]))
    for name in ("fusion", "hash", "quantization"):
        assert float(terms[name]) == pytest.approx(float(other[name]))


def test_terms_shapes_codes_and_batch_independence():
    dims = random_dims()
    batch = random_batch(dims, n=40)
    method = build("fjsph", dims, 16, overrides=SMALL)
    terms = assert_all_terms_finite(method, batch, epoch=1)
    assert set(terms) == set(TERMS)
    assert_binary_codes(method, batch)
    assert_batch_independent(method, batch)


def test_mask_probability_zero_refuses_single_encoding():
    dims = random_dims()
    method = build("fjsph", dims, 16, overrides={**SMALL, "mask_probability": 0.0})
    with pytest.raises(ConfigError, match="paired"):
        method.encode(random_batch(dims, n=4), "image")


def _label_gap(method, batch) -> float:
    """Mean cross-modal bit agreement of label-sharing pairs minus that of the other pairs."""
    b_i, b_t = codes(method, batch, "image"), codes(method, batch, "text")
    agree = (b_i @ b_t.T) / method.bits  # (n, n) in [−1, 1]
    shares = (batch.labels @ batch.labels.T) > 0
    return float(agree[shares].mean() - agree[~shares].mean())


def test_loss_falls_and_labels_shape_the_codes_on_real_data():
    batch, dims = real_mirflickr_features(512)
    method, history = train("fjsph", batch, dims, 16, overrides=REAL, epochs=6)
    assert_loss_falls(history)
    for term in ("sample", "cluster"):
        assert_loss_falls(history, term)
    assert_binary_codes(method, batch)
    assert_batch_independent(method, batch)
    # the supervised terms are what pulls label-sharing pairs together in Hamming space
    # (measured: gap 0.072-0.080 with them, 0.010-0.038 without, seeds 0-2)
    weights = {**resolve_config("fjsph").weights, "sample": 0.0, "cluster": 0.0}
    unsupervised, _ = train("fjsph", batch, dims, 16, overrides={**REAL, "weights": weights}, epochs=6)
    gap, gap_unsup = _label_gap(method, batch), _label_gap(unsupervised, batch)
    assert gap > 0.05 and gap > gap_unsup + 0.02, f"gap {gap:.3f} with labels vs {gap_unsup:.3f} without"


@pytest.mark.parametrize("term", TERMS)
def test_weight_zero_removes_the_term(term):
    """One full-batch step: the ablated total is the full total minus exactly that term's contribution."""
    dims = random_dims()
    batch = random_batch(dims, n=32)
    full = fit_method(build("fjsph", dims, 16, overrides=SMALL), batch, seed=0, epochs=1).epochs[0]
    weights = {**resolve_config("fjsph").weights, term: 0.0}
    ablated = fit_method(build("fjsph", dims, 16, overrides={**SMALL, "weights": weights}), batch,
                         seed=0, epochs=1).epochs[0]
    assert term not in ablated and term in full
    assert full[term] > 0
    assert ablated["total"] == pytest.approx(full["total"] - full[term], rel=1e-5)
