"""The contract every registered method keeps, checked once per method (parametrised over the registry).

- its loss terms are finite scalars named exactly as its configured weights;
- its loss falls when trained on real MIRFlickr pairs (skipped with the reason without the data);
- the same seed gives identical codes;
- each modality is encoded from its own features alone: changing the other modality (and the labels)
  leaves the codes unchanged;
- saved and loaded again (``save_method``/``load_method``), it gives the same codes.

Method-specific behaviour stays in ``test_<method>.py``.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import pytest
import torch

from pipeline.ground.errors import CacheError
from stages.train.base import METHODS, FeatureBatch, FeatureDims, load_method, save_method
from tests.train.helpers import (with_branches, assert_all_terms_finite, assert_batch_independent, assert_binary_codes,
                                 assert_loss_falls, build, codes, random_batch, random_dims,
                                 real_mirflickr_features, train)

ENC = "alexnet.imagenet"

#: The project's methods (tests may register toy ones in the same registry).
PROJECT = [n for n in METHODS.names() if METHODS.get(n).builder.__module__.startswith("stages.train.methods.")]
DEEP = [n for n in PROJECT if not METHODS.get(n).builder.closed_form]


class RealRun(NamedTuple):
    """How much real data and training shows a method's loss falling (small widths keep it quick)."""

    n: int
    overrides: Mapping[str, Any]
    epochs: int | None = None


REAL = {
    "djsrh": RealRun(192, {"image_hidden": (64,), "text_hidden": 64, "epochs": 5, "batch_size": 32}),
    "dsah": RealRun(192, {"image_hidden": (64,), "text_hidden": 64, "epochs": 5, "batch_size": 32}),
    "ccah": RealRun(160, {"image_hidden": 32, "gat_hidden": 16, "gat_heads": 2, "image_decoder_width": 16,
                          "anchors": 12, "epochs": 4, "batch_size": 16, "lr": 0.05, "gat_dropout": 0.2}),
    "ucmfh": RealRun(192, {"project_to": 32, "fusion_feedforward": 64, "hash_hidden": 64, "epochs": 5,
                           "batch_size": 32}),
    "cfrh": RealRun(512, {"image_hidden": (256,), "text_hidden": (512,)}, epochs=10),
    "dsprh": RealRun(512, {"fusion_width": 256, "text_hidden": (512,)}, epochs=8),
    "fjsph": RealRun(512, {"project_to": 64, "hash_hidden": 256, "fusion_feedforward": 128, "batch_size": 64,
                           "lr": 3e-3, "fusion_lr": 3e-4}, epochs=6),
}
#: Settings a method needs on toy data (CCA-ITQ otherwise chooses them on a validation split).
TOY = {"cca-itq": {"pca_dim": 16, "reg": 1e-4}}


def toy(n: int = 48, seed: int = 0) -> tuple[FeatureBatch, FeatureDims]:
    dims = random_dims(image=30, text=40)
    return with_branches(random_batch(dims, n=n, seed=seed), dims)


def test_every_method_is_covered():
    assert set(DEEP) == set(REAL), "add the new method's real-data settings to REAL"
    assert len(PROJECT) >= 9


@pytest.mark.parametrize("name", DEEP)
def test_terms_are_finite_and_named_as_configured(name):
    batch, dims = toy()
    assert_all_terms_finite(build(name, dims, 16, overrides=REAL[name].overrides), batch)


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("name", DEEP)
def test_loss_falls_on_real_data(name):
    raw, raw_dims = real_mirflickr_features(REAL[name].n)
    batch, dims = with_branches(raw, raw_dims)
    method, history = train(name, batch, dims, 16, overrides=REAL[name].overrides, epochs=REAL[name].epochs)
    assert_loss_falls(history)
    assert_binary_codes(method, batch)
    assert_batch_independent(method, batch)


@pytest.mark.parametrize("name", PROJECT)
def test_same_seed_same_codes(name):
    batch, dims = toy()
    a, b = (train(name, batch, dims, 8, seed=5, overrides=TOY.get(name), epochs=2)[0] for _ in range(2))
    for modality in ("image", "text"):
        assert torch.equal(codes(a, batch, modality), codes(b, batch, modality)), modality


@pytest.mark.parametrize("name", PROJECT)
def test_each_modality_is_encoded_alone(name):
    batch, dims = toy()
    method, _ = train(name, batch, dims, 16, seed=1, overrides=TOY.get(name), epochs=1)
    other, _ = toy(seed=9)  # different features and labels for the same rows
    other_text = FeatureBatch(batch.image, other.text, other.labels, batch.index, dict(batch.image_parts),
                              dict(other.text_parts))
    other_image = FeatureBatch(other.image, batch.text, other.labels, batch.index, dict(other.image_parts),
                               dict(batch.text_parts))
    assert torch.equal(codes(method, batch, "image"), codes(method, other_text, "image"))
    assert torch.equal(codes(method, batch, "text"), codes(method, other_image, "text"))


@pytest.mark.parametrize("name", PROJECT)
def test_a_reloaded_method_gives_the_same_codes(name, tmp_path):
    batch, dims = toy()
    method, _ = train(name, batch, dims, 16, seed=3, overrides=TOY.get(name), epochs=1)
    save_method(method, tmp_path / "model.pt")
    loaded = load_method(tmp_path / "model.pt")  # load_state_dict is strict: no buffer is patched in
    assert type(loaded) is type(method) and loaded.bits == 16
    for modality in ("image", "text"):
        assert torch.equal(codes(loaded, batch, modality), codes(method, batch, modality)), modality


def test_a_damaged_model_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a model")
    with pytest.raises(CacheError, match="cannot be loaded.*--force"):
        load_method(path)
