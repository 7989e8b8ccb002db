"""The shared loop and the config resolution, on a toy method defined here."""
from dataclasses import dataclass, field
from typing import Mapping

import pytest
import torch
from torch import nn

from pipeline.ground.errors import ConfigError
from stages.train.base import FeatureBatch, FeatureDims, HashingMethod, MethodConfig, METHODS, register_method, \
    resolve_config
from stages.train.loop import NonFiniteLoss, encode_split, fit_method


@dataclass(frozen=True)
class ToyConfig(MethodConfig):
    epochs: int = 5
    batch_size: int = 8
    lr: float = 0.1
    hidden: int = 4
    weights: Mapping[str, float] = field(default_factory=lambda: {"align": 1.0, "explode": 0.0})


if "toy-loop" not in METHODS:
    @register_method("toy-loop", config=ToyConfig, dataset_presets={"mirflickr": {"hidden": 7}})
    class Toy(HashingMethod):
        """A linear hash of each modality trained to agree."""

        def __init__(self, cfg, dims, bits):
            super().__init__(cfg, dims, bits)
            self.img = nn.Linear(dims.image, bits)
            self.txt = nn.Linear(dims.text, bits)

        def loss_terms(self, batch, epoch):
            bi, bt = torch.tanh(self.img(batch.image)), torch.tanh(self.txt(batch.text))
            return {"align": ((bi - bt) ** 2).mean(), "explode": torch.tensor(float("inf"))}

        def encode_image(self, features):
            return self.img(features.image)

        def encode_text(self, features):
            return self.txt(features.text)


def _batch(n=40):
    g = torch.Generator().manual_seed(0)
    return FeatureBatch(torch.randn(n, 6, generator=g), torch.randn(n, 5, generator=g), torch.zeros(n, 2),
                        torch.arange(n))


def _method(**over):
    from stages.train.base import create_method

    return create_method("toy-loop", dims=FeatureDims(6, 5, 2), bits=8, overrides=over)


def test_loss_falls_and_is_deterministic():
    torch.manual_seed(3)  # the runner seeds before building the model, as here
    h1 = fit_method(m1 := _method(), _batch(), seed=3)
    torch.manual_seed(3)
    fit_method(m2 := _method(), _batch(), seed=3)
    assert h1.epochs[-1]["total"] < h1.epochs[0]["total"]
    assert "explode" not in h1.epochs[0]  # weight 0: skipped, never evaluated into the sum
    assert torch.equal(encode_split(m1, _batch(), "image"), encode_split(m2, _batch(), "image"))


def test_encoding_does_not_depend_on_batch_size():
    m = _method()
    fit_method(m, _batch(), seed=1)
    assert torch.allclose(encode_split(m, _batch(), "text", batch_size=7), encode_split(m, _batch(), "text"))


def test_non_finite_term_is_named():
    with pytest.raises(NonFiniteLoss, match="explode"):
        fit_method(_method(weights={"explode": 1.0}), _batch(), seed=1)


def test_config_resolution_order_and_errors():
    assert resolve_config("toy-loop").hidden == 4
    assert resolve_config("toy-loop", "mirflickr").hidden == 7  # preset
    assert resolve_config("toy-loop", "mirflickr-n500").hidden == 7  # LIMIT caches share the preset
    assert resolve_config("toy-loop", "mirflickr", {"hidden": 9, "lr": None}).hidden == 9  # None dropped
    assert resolve_config("toy-loop", None, {"weights": {"align": 2.0}}).weights == {"align": 2.0, "explode": 0.0}
    with pytest.raises(ConfigError, match="valid settings"):
        resolve_config("toy-loop", None, {"hiden": 3})
    with pytest.raises(ConfigError, match="no loss term"):
        resolve_config("toy-loop", None, {"weights": {"nope": 1.0}})


def _toy_validator(every: int, seen: list) -> "Validator":
    from stages.train.validation import Validator

    def score(q, d, q_labels, d_labels, k):  # a stand-in metric: records what it was given
        seen.append((q.shape, d.shape, k))
        return float((q > 0).mean())

    return Validator(_batch(12), _batch(40), map_at_k=score, encode=encode_split, every=every)


def test_validation_curve_points_and_the_kept_model_is_the_last_epoch():
    seen: list = []
    torch.manual_seed(3)
    with_val = fit_method(m1 := _method(epochs=7), _batch(), seed=3, validator=_toy_validator(3, seen))
    assert [p["epoch"] for p in with_val.validation] == [3, 6, 7]  # every 3rd epoch and the last
    assert all(set(p) == {"epoch", "i2t", "t2i", "mean"} for p in with_val.validation)
    assert seen[0] == ((12, 8), (40, 8), 50)  # validation queries against the training split, mAP@50
    torch.manual_seed(3)
    without = fit_method(m2 := _method(epochs=7), _batch(), seed=3)
    # scoring validation changes nothing: same losses, same codes as a run without it
    assert with_val.epochs == without.epochs
    assert torch.equal(encode_split(m1, _batch(), "image"), encode_split(m2, _batch(), "image"))
    assert without.validation == []


def test_default_validation_every_gives_about_ten_points():
    from stages.train.validation import default_every

    assert [default_every(e) for e in (1, 5, 80, 200)] == [1, 1, 8, 20]
