"""CCAH on a small real MIRFlickr sample and on random data: the reference batch graph in training, a
fixed set of anchor texts at encode time."""
from __future__ import annotations

import pytest
import torch

from pipeline.ground.errors import ConfigError
from stages.train.base import resolve_config
from stages.train.loop import encode_split
from tests.train.helpers import (assert_all_terms_finite, assert_batch_independent, assert_binary_codes,
                                 assert_loss_falls, build, codes, random_batch, random_dims,
                                 real_mirflickr_features, subset, train, weighted_loss)

TINY = {"image_hidden": 32, "gat_hidden": 16, "gat_heads": 2, "image_decoder_width": 16, "anchors": 12,
        "epochs": 4, "batch_size": 16}
TERMS = {"text_text", "image_text", "image_image", "image_alignment", "text_alignment", "diagonal",
         "reconstruction_image", "reconstruction_text", "symmetry"}


def _brute_force_links(method, rows, others) -> torch.Tensor:
    """Tag graph written out pair by pair: i–j iff some tag column is non-zero in both."""
    out = torch.zeros(len(rows), len(others), dtype=torch.bool)
    for i, a in enumerate(rows):
        for j, b in enumerate(others):
            out[i, j] = any(a[c] > 0 and b[c] > 0 for c in range(a.shape[0]))
    return out


def test_trains_on_real_mirflickr_with_batch_independent_codes():
    batch, dims = real_mirflickr_features(160)
    untrained = build("ccah", dims, 16, overrides=TINY)
    before = weighted_loss(untrained, batch)
    # a larger step and less dropout than the reference, so 4 epochs show a clear fall
    method, history = train("ccah", batch, dims, 16, overrides={**TINY, "lr": 0.05, "gat_dropout": 0.2})
    assert_loss_falls(history)
    assert weighted_loss(method, batch) < 0.9 * before
    assert_binary_codes(method, batch)
    assert_batch_independent(method, batch)
    assert bool(method.anchors_drawn) and method.anchor_text.shape == (12, dims.text)
    # the anchors are training texts
    assert all(any(torch.equal(a, t) for t in batch.text) for a in method.anchor_text)


def test_reference_graph_mode_encodes_in_fixed_batches_of_16():
    # graph="batch" is the reference: a text's code depends on the 15 texts of its fixed-order batch of 16,
    # not on how many rows the caller hands over at once
    batch, dims = real_mirflickr_features(160)
    method, _ = train("ccah", batch, dims, 16, overrides={**TINY, "graph": "batch", "epochs": 1})
    whole, chunks_of_32 = (encode_split(method, batch, "text", batch_size=s) for s in (1024, 32))
    torch.testing.assert_close(whole, chunks_of_32, atol=1e-5, rtol=0)
    by_hand = torch.cat([torch.tanh(method.text_encoder(t, method.batch_graph(t))) for t in batch.text.split(16)])
    torch.testing.assert_close(whole, by_hand, atol=1e-5, rtol=0)
    shifted = encode_split(method, subset(batch, slice(8, None)), "text")  # other batch mates for every row
    assert not torch.allclose(whole[8:], shifted, atol=1e-4)


def test_graph_construction_equals_brute_force():
    dims = random_dims(text=12)
    batch = random_batch(dims, 40, seed=5)
    method = build("ccah", dims, 16, overrides={**TINY, "anchors": 6})
    method.on_epoch_start(0, batch)
    text = batch.text[:9].clone()
    text[3] = 0.0  # a text without tags
    anchors = method.anchor_text.clone()
    anchors[1] = 0.0  # an anchor without tags
    method.anchor_text.copy_(anchors)

    torch.testing.assert_close(method.batch_graph(text), _brute_force_links(method, text, text))

    b, m = 6, 9
    expected = torch.zeros(b + m, b + m, dtype=torch.bool)
    nodes = torch.cat([anchors, text])
    for i in range(b + m):
        tagless = not bool((nodes[i] > 0).any())
        for j in range(b):  # every node may look at an anchor that shares a tag (all anchors if it has none)
            expected[i, j] = tagless or bool(((nodes[i] > 0) & (anchors[j] > 0)).any())
        if i >= b:
            expected[i, i] = True  # a text sees itself and no other text
    torch.testing.assert_close(method.anchor_graph(text), expected)


def test_neighbour_graph_for_dense_text_features():
    dims = random_dims(text=10, text_is_bow=False)
    batch = random_batch(dims, 30, seed=2)
    method = build("ccah", dims, 16, overrides={**TINY, "neighbours": 3})
    text = batch.text[:7]
    cos = torch.nn.functional.normalize(text, dim=1) @ torch.nn.functional.normalize(text, dim=1).T
    expected = torch.zeros(7, 7, dtype=torch.bool)
    for i in range(7):
        for j in sorted(range(7), key=lambda j: -float(cos[i, j]))[:3]:
            expected[i, j] = True
        expected[i, i] = True
    torch.testing.assert_close(method.batch_graph(text), expected)


def test_encode_time_graph_does_not_change_training():
    dims = random_dims()
    batch = random_batch(dims, 48)
    runs = [train("ccah", batch, dims, 8, seed=4, overrides={**TINY, "epochs": 2, **o})[0]
            for o in ({"graph": "batch"}, {"anchors": 0}, {"anchors": 20})]
    for other in runs[1:]:
        assert torch.equal(codes(runs[0], batch, "image"), codes(other, batch, "image"))
    alone = runs[1]  # anchors = 0 (the default): each text's graph is the text itself
    assert_batch_independent(alone, batch)
    by_hand = torch.cat([torch.tanh(alone.text_encoder(t[None], torch.ones(1, 1, dtype=torch.bool)))
                         for t in batch.text])
    torch.testing.assert_close(encode_split(alone, batch, "text"), by_hand, atol=1e-5, rtol=0)


def test_anchors_are_saved_with_the_weights():
    dims = random_dims()
    batch = random_batch(dims, 48)
    fitted = train("ccah", batch, dims, 16, overrides={**TINY, "epochs": 1})[0]
    fresh = build("ccah", dims, 16, overrides=TINY)
    with pytest.raises(ConfigError, match="anchors were never drawn"):
        fresh.encode(batch, "text")
    fresh.load_state_dict(fitted.state_dict())
    assert torch.equal(codes(fitted, batch, "text"), codes(fresh, batch, "text"))


@pytest.mark.parametrize("text_is_bow", [True, False])
def test_terms_finite_for_tag_and_neighbour_graphs(text_is_bow):
    dims = random_dims(text_is_bow=text_is_bow)
    batch = random_batch(dims, 40)
    method = build("ccah", dims, 16, overrides={**TINY, "anchors": 6})
    terms = assert_all_terms_finite(method, subset(batch, slice(0, 9)))  # draws the anchors from 9 rows
    assert set(terms) == TERMS
    method.on_epoch_start(0, batch)  # anchors drawn from all 40 rows
    assert_batch_independent(method, batch)


def test_text_without_tags_gets_a_finite_code():
    dims = random_dims()
    batch = random_batch(dims, 30)
    method = build("ccah", dims, 16, overrides=TINY)
    method.on_epoch_start(0, batch)
    method.eval()
    one = subset(batch, slice(0, 1))
    one.text = torch.zeros(1, dims.text)
    assert torch.isfinite(method.encode(one, "text")).all()


def test_bad_settings_are_rejected_and_weights_follow_train_py():
    with pytest.raises(ConfigError, match="graph"):
        build("ccah", random_dims(), 16, overrides={"graph": "bank"})
    with pytest.raises(ConfigError, match="anchors must be >= 0"):
        build("ccah", random_dims(), 16, overrides={"anchors": -1})
    dims = random_dims()
    with pytest.raises(ConfigError, match="at most 10"):
        build("ccah", dims, 16, overrides={**TINY, "anchors": 11}).on_epoch_start(0, random_batch(dims, 10))
    cfg = resolve_config("ccah", "mirflickr")
    assert (cfg.batch_size, cfg.lr, cfg.momentum, cfg.nesterov, cfg.epochs) == (16, 0.005, 0.7, True, 200)
    assert cfg.weights["symmetry"] == 2.0 and cfg.weights["image_alignment"] == 0.1
    assert (cfg.graph, cfg.anchors) == ("anchors", 0)
