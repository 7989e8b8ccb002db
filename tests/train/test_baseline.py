"""The no-learning baseline: seeded random projections, closed form."""
from __future__ import annotations

import pytest
import torch

from pipeline.ground.errors import ConfigError
from tests.train.helpers import (assert_batch_independent, assert_binary_codes, build, codes, random_batch,
                                 random_dims, real_mirflickr_features, train)


def test_fits_on_real_mirflickr_and_encodes_each_modality_alone():
    batch, dims = real_mirflickr_features(128)
    method, history = train("baseline", batch, dims, 32)
    assert method.closed_form and history.epochs == []
    assert_binary_codes(method, batch)
    assert_batch_independent(method, batch)
    # centred on the training mean: each bit is balanced-ish rather than constant
    bits_on = (codes(method, batch, "text") > 0).float().mean(dim=0)
    assert ((bits_on > 0.05) & (bits_on < 0.95)).float().mean() > 0.5


def test_projection_follows_the_run_seed_unless_the_config_pins_one():
    dims = random_dims()
    batch = random_batch(dims, 40)
    a = train("baseline", batch, dims, 16, seed=1)[0]
    again = train("baseline", batch, dims, 16, seed=1)[0]
    b = train("baseline", batch, dims, 16, seed=99)[0]  # another run seed: another projection (a spread)
    assert torch.equal(codes(a, batch, "image"), codes(again, batch, "image"))
    assert not torch.equal(codes(a, batch, "image"), codes(b, batch, "image"))
    c, d = (train("baseline", batch, dims, 16, seed=s, overrides={"seed": 7})[0] for s in (1, 99))
    assert torch.equal(codes(c, batch, "image"), codes(d, batch, "image"))  # pinned: the run seed does not matter


def test_state_dict_restores_the_projection():
    dims = random_dims()
    batch = random_batch(dims, 40)
    fitted = train("baseline", batch, dims, 16)[0]
    fresh = build("baseline", dims, 16)
    fresh.load_state_dict(fitted.state_dict())
    assert torch.equal(codes(fitted, batch, "text"), codes(fresh, batch, "text"))


def test_encode_before_fit_is_an_error():
    dims = random_dims()
    with pytest.raises(ConfigError, match="before fit"):
        build("baseline", dims, 16).encode(random_batch(dims, 3), "image")
