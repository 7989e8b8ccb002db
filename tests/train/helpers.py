"""Shared fixtures for the method tests: tiny feature batches and the checks every method must pass.

Two sources of features:

- :func:`random_batch` / :func:`random_dims`: synthetic data for shape tests (no files needed);
- :func:`real_mirflickr_features`: the first n real MIRFlickr-25K pairs from the shared data folder:
  the real 1386-d tag bag (``mirflickr25k-yall.mat``) as text, the real 24 concept labels, and as
  image features a cheap deterministic stand-in computed from the real images (8×8 RGB thumbnails of
  the 128-px JPEGs, flattened to 192 values in [0, 1]) so no extractor is needed. It calls
  ``pytest.skip`` with the reason when the data folder is absent.

And the checks (:func:`train`, :func:`assert_binary_codes`, :func:`assert_loss_falls`,
:func:`assert_batch_independent`, :func:`assert_all_terms_finite`) used by ``test_<method>.py``.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytest
import torch

import stages.train.methods  # noqa: F401  (registers every method)
from pipeline.ground.settings import data_root
from stages.train.base import FeatureBatch, FeatureDims, HashingMethod, create_method
from stages.train.loop import TrainHistory, encode_split, fit_method
from stages.train.losses import sign_plus

MIR_FOLDER = "mirflickr25k_real20015"
THUMB = 8  # thumbnail side: 8×8×3 = 192 image values


def random_dims(image: int = 24, text: int = 40, labels: int = 5, *, text_is_bow: bool = True,
                image_parts: Mapping[str, int] | None = None) -> FeatureDims:
    """Tiny widths. ``image_parts`` (name -> width, in order) splits the image features into branches,
    e.g. ``{"alexnet:fc7": 16, "alexnet:cov": 8}``; ``image`` is then their sum."""
    parts = dict(image_parts) if image_parts else {"toy:image": image}
    return FeatureDims(image=sum(parts.values()), text=text, labels=labels, image_parts=parts,
                       text_parts={"toy:text": text}, text_is_bow=text_is_bow)


def random_batch(dims: FeatureDims, n: int = 64, *, seed: int = 0) -> FeatureBatch:
    """n synthetic items: non-negative image features (like fc7/ReLU), a binary bag of words with at
    least one word per item when ``dims.text_is_bow`` (else Gaussian text), and random multi-hot labels
    with at least one label per item. ``image_parts`` are consecutive column blocks of ``image``."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, dims.image, generator=g)
    if dims.text_is_bow:
        text = (torch.rand(n, dims.text, generator=g) < 0.1).float()
        text[torch.arange(n), torch.randint(0, dims.text, (n,), generator=g)] = 1.0
    else:
        text = torch.randn(n, dims.text, generator=g)
    labels = (torch.rand(n, dims.labels, generator=g) < 0.3).float()
    labels[torch.arange(n), torch.randint(0, dims.labels, (n,), generator=g)] = 1.0
    image_parts, start = {}, 0
    for name, width in (dims.image_parts or {"image": dims.image}).items():
        image_parts[name] = image[:, start:start + width]
        start += width
    if start != dims.image:
        raise ValueError(f"image_parts widths sum to {start}, not the image width {dims.image}")
    return FeatureBatch(image=image, text=text, labels=labels, index=torch.arange(n), image_parts=image_parts,
                        text_parts={k: text for k in dims.text_parts})


@functools.lru_cache(maxsize=4)
def _load_mirflickr(root: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import scipy.io
    from PIL import Image

    folder = Path(root) / MIR_FOLDER
    cleaned = folder / "cleaned20015"
    with open(cleaned / "all_imgs.txt") as fh:
        names = [next(fh).strip().rsplit("/", 1)[-1] for _ in range(n)]  # row order of YAll / LAll
    with open(cleaned / "all_labels.txt") as fh:
        labels = np.array([[float(v) for v in next(fh).split()] for _ in range(n)], dtype=np.float32)
    text = scipy.io.loadmat(cleaned / "mirflickr25k-yall.mat")["YAll"][:n].astype(np.float32)  # (n, 1386)
    image = np.empty((n, THUMB * THUMB * 3), dtype=np.float32)
    for i, name in enumerate(names):
        with Image.open(folder / "images" / name) as im:
            im.draft("RGB", (2 * THUMB, 2 * THUMB))  # let the JPEG decoder downscale first
            thumb = im.convert("RGB").resize((THUMB, THUMB), Image.BILINEAR)
        image[i] = np.asarray(thumb, dtype=np.float32).reshape(-1) / 255.0
    return image, text, labels


def real_mirflickr_features(n: int = 256) -> tuple[FeatureBatch, FeatureDims]:
    """The first n real MIRFlickr pairs (see the module docstring); skips the test when the data is absent."""
    root = data_root()
    if not (root / MIR_FOLDER / "cleaned20015" / "mirflickr25k-yall.mat").exists():
        pytest.skip(f"real data not found at {root / MIR_FOLDER} (set CMH_DATA_ROOT to the shared data folder)")
    image, text, labels = _load_mirflickr(str(root), n)
    dims = FeatureDims(image=image.shape[1], text=text.shape[1], labels=labels.shape[1],
                       image_parts={"thumb8:image": image.shape[1]}, text_parts={"bow:text": text.shape[1]},
                       text_is_bow=True)
    img, txt = torch.from_numpy(image.copy()), torch.from_numpy(text.copy())
    batch = FeatureBatch(image=img, text=txt, labels=torch.from_numpy(labels.copy()), index=torch.arange(n),
                         image_parts={"thumb8:image": img}, text_parts={"bow:text": txt})
    return batch, dims


def subset(batch: FeatureBatch, rows: torch.Tensor | slice) -> FeatureBatch:
    """The rows ``rows`` of every tensor in ``batch`` (parts included)."""
    return FeatureBatch(batch.image[rows], batch.text[rows], batch.labels[rows], batch.index[rows],
                        {k: v[rows] for k, v in batch.image_parts.items()},
                        {k: v[rows] for k, v in batch.text_parts.items()})


def build(name: str, dims: FeatureDims, bits: int, *, seed: int = 0, overrides: Mapping[str, Any] | None = None,
          dataset: str | None = None) -> HashingMethod:
    """Create a method with the global seed set first, as the runner does."""
    torch.manual_seed(seed)
    return create_method(name, dims=dims, bits=bits, dataset=dataset, overrides=overrides)


def train(name: str, batch: FeatureBatch, dims: FeatureDims, bits: int, *, seed: int = 0,
          overrides: Mapping[str, Any] | None = None, epochs: int | None = None) -> tuple[HashingMethod, TrainHistory]:
    method = build(name, dims, bits, seed=seed, overrides=overrides)
    history = fit_method(method, batch, seed=seed, epochs=epochs)
    return method, history


def codes(method: HashingMethod, batch: FeatureBatch, modality: str, batch_size: int = 1024) -> torch.Tensor:
    """±1 codes (n, bits) with sign(0) = +1."""
    return sign_plus(encode_split(method, batch, modality, batch_size=batch_size))


def assert_binary_codes(method: HashingMethod, batch: FeatureBatch) -> None:
    n = batch.image.shape[0]
    for modality in ("image", "text"):
        relaxed = encode_split(method, batch, modality)
        assert relaxed.shape == (n, method.bits), (modality, tuple(relaxed.shape))
        assert torch.isfinite(relaxed).all(), modality
        b = sign_plus(relaxed)
        assert set(b.unique().tolist()) <= {-1.0, 1.0}
        assert (b == 1).any() and (b == -1).any(), f"{modality} codes are constant"


def assert_loss_falls(history: TrainHistory, term: str = "total") -> None:
    first, last = history.epochs[0][term], history.epochs[-1][term]
    assert last < first, f"{term} did not fall: first epoch {first:.5f}, last epoch {last:.5f}"


def assert_batch_independent(method: HashingMethod, batch: FeatureBatch, atol: float = 1e-5) -> None:
    """Encoding in batches of 7 and of 1024 gives the same codes: no item sees its batch mates."""
    for modality in ("image", "text"):
        small = encode_split(method, batch, modality, batch_size=7)
        large = encode_split(method, batch, modality, batch_size=1024)
        torch.testing.assert_close(small, large, atol=atol, rtol=0)
        assert torch.equal(sign_plus(small), sign_plus(large)), modality


def assert_all_terms_finite(method: HashingMethod, batch: FeatureBatch, epoch: int = 0) -> dict[str, float]:
    method.train()
    method.on_epoch_start(epoch, batch)
    terms = method.loss_terms(batch, epoch)
    assert terms, "no loss terms"
    weights = dict(method.cfg.weights)
    assert set(terms) == set(weights), f"terms {sorted(terms)} vs configured weights {sorted(weights)}"
    for name, value in terms.items():
        assert value.ndim == 0, f"{name} is not a scalar"
        assert torch.isfinite(value), f"{name} = {value.item()}"
    return {k: float(v.detach()) for k, v in terms.items()}


@torch.no_grad()
def weighted_loss(method: HashingMethod, batch: FeatureBatch, epoch: int = 0) -> float:
    """Σ weights·terms on ``batch`` in eval mode (no dropout) at a fixed epoch: a before/after-training
    measure that, unlike per-epoch means, does not move with the α schedule or dropout noise."""
    method.eval()
    terms = method.loss_terms(batch, epoch)
    return float(sum(method.cfg.weights.get(k, 1.0) * v for k, v in terms.items()))


BRANCH_ENCODER = "alexnet.imagenet"


def with_branches(batch: FeatureBatch, dims: FeatureDims) -> tuple[FeatureBatch, FeatureDims]:
    """Three stand-in AlexNet branches derived from a batch's image features, named like the alexnet encoder's:
    sp_cov = the first 2/3 of the columns, cov = the last 2/3, pool = the squared features (a different view)."""
    img = batch.image
    d = img.shape[1]
    parts = {f"{BRANCH_ENCODER}:sp_cov": img[:, : 2 * d // 3], f"{BRANCH_ENCODER}:cov": img[:, d // 3:], f"{BRANCH_ENCODER}:pool": img.pow(2)}
    new_dims = FeatureDims(image=sum(v.shape[1] for v in parts.values()), text=dims.text, labels=dims.labels,
                           image_parts={k: v.shape[1] for k, v in parts.items()}, text_parts=dict(dims.text_parts),
                           text_is_bow=dims.text_is_bow)
    new_batch = FeatureBatch(image=torch.cat(list(parts.values()), dim=1), text=batch.text, labels=batch.labels,
                             index=batch.index, image_parts=parts, text_parts=dict(batch.text_parts))
    return new_batch, new_dims
