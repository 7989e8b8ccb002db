"""save_method / load_method: every registered method reloads strictly and encodes exactly as before."""
from __future__ import annotations

import pytest
import torch

from pipeline.errors import CacheError
from stages.train.base import METHODS, load_method, save_method
from tests.train.helpers import codes, random_batch, random_dims, train


#: Settings a method needs on toy data (CCA-ITQ otherwise chooses them on a validation split); saved
#: with the model, so the reload must carry them.
OVERRIDES = {"cca-itq": {"pca_dim": 16, "reg": 1e-4}}


#: The project's methods (tests may register toy ones in the same registry).
PROJECT_METHODS = [n for n in METHODS.names() if METHODS.get(n).builder.__module__.startswith("stages.train.methods.")]


@pytest.mark.parametrize("name", PROJECT_METHODS)
def test_reloaded_method_gives_the_same_codes(name, tmp_path):
    # three named AlexNet-like branches: DSPRH reads them separately, the others read their concatenation
    dims = random_dims(image_parts={"alexnet:sp_cov": 8, "alexnet:cov": 8, "alexnet:pool": 8})
    batch = random_batch(dims, n=48)
    method, _ = train(name, batch, dims, 16, seed=3, epochs=1, overrides=OVERRIDES.get(name))
    method.eval()
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
