"""The generated demo set: deterministic, idempotent, label-correlated but not trivial."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.prepare.datasets import get_dataset
from stages.prepare.datasets.demo import _SYNONYMS, MARKER
from pipeline.ground.errors import ConfigError

demo = get_dataset("demo").builder
SMALL = {"n_items": 120, "size": 64}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_files_and_skip_when_marker_matches(tmp_path):
    a = demo(tmp_path / "a", seed=3, **SMALL)
    demo(tmp_path / "b", seed=3, **SMALL)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert len(a) == 120 and a.labels.shape == (120, 8) and a.text_kind == "tags"
    first = tmp_path / "a" / "images" / "demo_00000.jpg"
    stamp = first.stat().st_mtime_ns
    again = demo(tmp_path / "a", seed=3, **SMALL)  # marker matches: nothing rewritten
    assert first.stat().st_mtime_ns == stamp and again.fingerprint() == a.fingerprint()
    other = demo(tmp_path / "a", seed=4, **SMALL)  # other parameters: regenerated
    assert other.fingerprint() != a.fingerprint()
    assert '"seed": 4' in (tmp_path / "a" / MARKER).read_text()


def test_item_does_not_depend_on_n_items_and_stale_files_go(tmp_path):
    big = demo(tmp_path / "d", seed=0, n_items=30, size=64)
    small = demo(tmp_path / "d", seed=0, n_items=20, size=64)
    assert small.texts == big.texts[:20] and np.array_equal(small.labels, big.labels[:20])
    assert len(list((tmp_path / "d" / "images").iterdir())) == 20


def test_image_size_and_every_item_labelled_and_tagged(tmp_path):
    table = demo(tmp_path, seed=1, **SMALL)
    assert Image.open(table.image[0]).size == (64, 64)
    assert table.labels.sum(1).min() >= 1 and min(len(t) for t in table.texts) >= 1
    assert table.labels.sum(0).min() > 0  # every label occurs
    assert not (table.labels[:, 3] & table.labels[:, 4]).any()  # sun and night exclude each other


def _knn_precision(features: np.ndarray, relevant: np.ndarray, k: int = 5) -> float:
    d = ((features[:, None] - features[None]) ** 2).sum(-1)  # (n, n)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1, kind="stable")[:, :k]
    return float(relevant[np.arange(len(d))[:, None], nn].mean())


def test_both_modalities_carry_the_labels_imperfectly(tmp_path):
    table = demo(tmp_path, seed=0, n_items=200, size=64)
    labels = table.labels.astype(np.int64)
    relevant = (labels @ labels.T) > 0  # share a label
    n = len(labels)
    base = (relevant.sum() - n) / (n * n - n)  # what random codes would retrieve
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((8, 8), Image.BILINEAR), np.float32).ravel()
                       for p in table.image])  # (n, 192)
    vocab = sorted({w for tags in table.texts for w in tags})
    bow = np.zeros((n, len(vocab)), np.float32)
    for i, tags in enumerate(table.texts):
        bow[i, [vocab.index(w) for w in tags]] = 1
    p_image, p_text = _knn_precision(pixels, relevant), _knn_precision(bow, relevant)
    assert 0.3 < base < 0.7
    assert p_image > base + 0.15 and p_text > base + 0.15  # learnable
    assert p_image < 0.98 and p_text < 0.98  # not trivial
    untagged = sum(1 for i in range(n) for j in np.flatnonzero(labels[i])
                   if not set(_SYNONYMS[table.label_names[j]]) & set(table.texts[i]))
    assert untagged / labels.sum() > 0.05  # some labels leave no trace in the tags


def test_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="size"):
        demo(tmp_path, size=8)
    with pytest.raises(ConfigError, match="n_items"):
        demo(tmp_path, n_items=3)
    with pytest.raises(ConfigError, match="image_format"):
        demo(tmp_path, image_format="gif")
