"""CCA-ITQ: closed-form CCA between the modalities plus an ITQ rotation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.ground.errors import ConfigError
from stages.train.base import FeatureBatch
from stages.train.loop import encode_split, fit_method
from stages.train.validation import Validator
from tests.train.helpers import (assert_batch_independent, assert_binary_codes, build, codes, random_dims,
                                 real_mirflickr_features, train)


FIXED = {"reg": 1e-4, "pca_dim": 1024}  # no validation split in these unit tests: both settings fixed


def _hamming(method, batch) -> torch.Tensor:
    b_i, b_t = codes(method, batch, "image"), codes(method, batch, "text")
    return 0.5 * (method.bits - b_i @ b_t.T)  # (n, n)


def test_fits_on_real_mirflickr_pairs_end_up_closer_than_non_pairs():
    batch, dims = real_mirflickr_features(256)
    method, _ = train("cca-itq", batch, dims, 16, overrides={"pca_dim": 16, "reg": 1e-4})
    assert_binary_codes(method, batch)
    assert_batch_independent(method, batch)
    ham = _hamming(method, batch)
    assert ham.diag().mean() < ham.mean() - 0.5  # paired image/text codes agree on more bits
    loss = method.fit_summary["itq_loss"]
    assert len(loss) == 51 and loss[-1] < loss[0]  # 50 ITQ iterations lower the quantisation loss
    corr = method.fit_summary["canonical_correlations"]
    assert corr == sorted(corr, reverse=True) and 0 < corr[-1] <= corr[0] <= 1 + 1e-6


def _planted(n: int, seed: int) -> FeatureBatch:
    """Image (30-d) and text (20-d) views of one 8-d latent, plus noise."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 8, generator=g)
    mix_i = torch.randn(8, 30, generator=torch.Generator().manual_seed(100))
    mix_t = torch.randn(8, 20, generator=torch.Generator().manual_seed(101))
    image = z @ mix_i + 0.3 * torch.randn(n, 30, generator=g)
    text = z @ mix_t + 0.3 * torch.randn(n, 20, generator=g)
    return FeatureBatch(image=image, text=text, labels=torch.zeros(n, 2), index=torch.arange(n))


def test_generalises_to_held_out_pairs_of_a_shared_latent():
    dims = random_dims(image=30, text=20, text_is_bow=False)
    method, _ = train("cca-itq", _planted(500, 0), dims, 8, overrides=FIXED)
    held_out = _planted(200, 1)
    ham = _hamming(method, held_out)
    assert ham.diag().mean() < 0.5 * ham.mean()  # far fewer differing bits for true pairs


def test_too_many_bits_for_the_cca_rank_is_a_config_error():
    dims = random_dims(image=30, text=20, text_is_bow=False)
    with pytest.raises(ConfigError, match="CCA rank"):
        train("cca-itq", _planted(100, 0), dims, 16, overrides=FIXED | {"pca_dim": 12})


def test_state_dict_restores_the_projection():
    dims = random_dims(image=30, text=20, text_is_bow=False)
    batch = _planted(100, 0)
    fitted = train("cca-itq", batch, dims, 8, overrides=FIXED)[0]
    fresh = build("cca-itq", dims, 8, overrides=FIXED)
    fresh.load_state_dict(fitted.state_dict())
    assert torch.equal(codes(fitted, batch, "text"), codes(fresh, batch, "text"))


def _validator(queries: FeatureBatch, retrieval: FeatureBatch, calls: list) -> Validator:
    """A validator whose score is the pair agreement of validation items (no query data anywhere)."""
    def agreement(q, d, q_labels, d_labels, k):
        calls.append(1)
        return float((np.sign(q) == np.sign(d[: len(q)])).mean())

    return Validator(queries, queries, map_at_k=agreement, encode=encode_split)


def test_ridge_and_pca_width_are_chosen_on_validation_and_recorded():
    dims = random_dims(image=30, text=20, text_is_bow=False)
    calls: list = []
    validator = _validator(_planted(200, 7), _planted(300, 0), calls)
    method = build("cca-itq", dims, 4, overrides={"reg_grid": [1e-3, 10.0, 1e4], "pca_grid": [2, 8, 0]})
    history = fit_method(method, _planted(300, 0), seed=0, validator=validator)
    grid = history.selection["grid"]
    assert [(p["reg"], p["pca_dim"]) for p in grid] == [(r, p) for p in (2, 8, 0) for r in (1e-3, 10.0, 1e4)]
    assert [p["score"] is None for p in grid] == [True] * 3 + [False] * 6  # 2 directions cannot give 4 bits
    scored = [p for p in grid if p["score"] is not None]
    best = max(scored, key=lambda p: p["score"])
    assert history.selection["chosen"] == {"reg": best["reg"], "pca_dim": best["pca_dim"]}
    assert best["score"] > min(p["score"] for p in scored)  # the grid matters on this data
    assert len(calls) == 2 * 6 + 2  # two tasks per scored point, plus the final validation point
    # the kept model is the chosen one: refitting with the choice fixed gives the same codes
    fixed = build("cca-itq", dims, 4, overrides=history.selection["chosen"])
    fit_method(fixed, _planted(300, 0), seed=0)
    held_out = _planted(50, 3)
    assert torch.equal(codes(method, held_out, "text"), codes(fixed, held_out, "text"))


def test_choosing_without_a_validation_split_is_a_config_error():
    dims = random_dims(image=30, text=20, text_is_bow=False)
    with pytest.raises(ConfigError, match="validation split"):
        train("cca-itq", _planted(100, 0), dims, 8)
