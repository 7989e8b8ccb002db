"""CCAH on a small real MIRFlickr sample (tag graph over a saved anchor bank) and random data."""
from __future__ import annotations

import pytest
import torch

from pipeline.errors import ConfigError
from stages.train.base import resolve_config
from stages.train.loop import encode_split
from tests.train.helpers import (assert_all_terms_finite, assert_batch_independent, assert_binary_codes,
                                 assert_loss_falls, build, codes, random_batch, random_dims,
                                 real_mirflickr_features, subset, train, weighted_loss)

TINY = {"image_hidden": 32, "gat_hidden": 16, "gat_heads": 2, "image_decoder_width": 16, "bank_size": 24,
        "epochs": 4, "batch_size": 16}
TERMS = {"text_text", "image_text", "image_image", "image_alignment", "text_alignment", "diagonal",
         "reconstruction_image", "reconstruction_text", "symmetry"}


def test_trains_on_real_mirflickr_with_batch_independent_codes():
    batch, dims = real_mirflickr_features(160)
    untrained = build("ccah", dims, 16, overrides=TINY)
    untrained.on_epoch_start(0, batch)
    before = weighted_loss(untrained, batch)
    # a larger step and less dropout than the reference, so 4 epochs show a clear fall
    method, history = train("ccah", batch, dims, 16, overrides={**TINY, "lr": 0.05, "gat_dropout": 0.2})
    assert_loss_falls(history)
    assert weighted_loss(method, batch) < 0.9 * before
    assert_binary_codes(method, batch)
    assert_batch_independent(method, batch)
    assert int(method.bank_valid.sum()) == 24


def test_reference_batch_graph_makes_text_codes_depend_on_the_batch():
    # documents why "bank" is the default: with graph="batch" a text's code changes with its batch mates
    batch, dims = real_mirflickr_features(160)
    method, _ = train("ccah", batch, dims, 16, overrides={**TINY, "graph": "batch", "epochs": 1})
    small, large = (encode_split(method, batch, "text", batch_size=s) for s in (7, 1024))
    assert not torch.allclose(small, large, atol=1e-4)


def test_anchor_bank_is_saved_with_the_weights():
    dims = random_dims()
    batch = random_batch(dims, 48)
    fitted = train("ccah", batch, dims, 16, overrides={**TINY, "epochs": 1})[0]
    fresh = build("ccah", dims, 16, overrides=TINY)
    with pytest.raises(ConfigError, match="anchor bank is empty"):
        fresh.encode(batch, "text")
    fresh.load_state_dict(fitted.state_dict())
    assert torch.equal(codes(fitted, batch, "text"), codes(fresh, batch, "text"))


def test_same_seed_same_codes():
    dims = random_dims()
    batch = random_batch(dims, 48)
    runs = [train("ccah", batch, dims, 8, seed=3, overrides={**TINY, "epochs": 2})[0] for _ in range(2)]
    for modality in ("image", "text"):
        assert torch.equal(codes(runs[0], batch, modality), codes(runs[1], batch, modality))


@pytest.mark.parametrize("text_is_bow", [True, False])
def test_terms_finite_for_tag_and_neighbour_graphs(text_is_bow):
    dims = random_dims(text_is_bow=text_is_bow)
    batch = random_batch(dims, 40)
    method = build("ccah", dims, 16, overrides=TINY)
    terms = assert_all_terms_finite(method, subset(batch, slice(0, 9)))
    assert set(terms) == TERMS
    method.on_epoch_start(0, batch)  # bank drawn from all 40 rows
    assert_batch_independent(method, batch)


def test_text_without_tags_attends_only_to_itself():
    dims = random_dims()
    batch = random_batch(dims, 30)
    method = build("ccah", dims, 16, overrides=TINY)
    method.on_epoch_start(0, batch)
    method.eval()
    empty = torch.zeros(1, dims.text)
    links = method._links(empty, method.bank_text[method.bank_valid], exclude_diagonal=False)
    assert not links.any()
    one = subset(batch, slice(0, 1))
    one.text = empty
    code = method.encode(one, "text")
    assert torch.isfinite(code).all()


def test_bad_graph_mode_is_rejected_and_weights_follow_train_py():
    with pytest.raises(ConfigError, match="graph"):
        build("ccah", random_dims(), 16, overrides={"graph": "global"})
    cfg = resolve_config("ccah", "mirflickr")
    assert (cfg.batch_size, cfg.lr, cfg.momentum, cfg.nesterov, cfg.epochs) == (16, 0.005, 0.7, True, 200)
    assert cfg.weights["symmetry"] == 2.0 and cfg.weights["image_alignment"] == 0.1
