"""Dataset source: a small synthetic multi-label image–tag set, generated on the spot (no download).

Each item gets 1–4 of 8 labels (``sky sea tree sun night animal building person``; ``sun`` and
``night`` exclude each other). Its image is a ``size``-pixel scene drawn with PIL where every label
has its own element (a blue top band for sky, waves for sea, a green triangle for tree, ...), with
jittered positions and colours, distractor shapes, pixel noise, a 10% chance per label of not being
drawn and a 3% chance per absent label of being drawn anyway. Its tags come from the labels' synonyms
(some shared between labels, e.g. ``blue``), with dropped tags (15% of labels leave none),
camera/Flickr noise tags and occasional wrong tags. So both modalities carry the labels, imperfectly:
learning should beat random codes without being trivial.

Deterministic: item ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so the same seed
gives byte-identical files, and item ``i`` does not depend on ``n_items``. The files are written in
the ``pairs`` format (``pairs.jsonl`` + ``images/``) and read back by that source; a marker file
with the parameters makes a second call with the same parameters skip generation.
"""
from __future__ import annotations

import json
import logging
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from stages.prepare.datasets.base import ItemTable, register_dataset
from stages.prepare.datasets.pairs import read_pairs_file
from pipeline.ground.errors import ConfigError, DataError
from pipeline.ground.paths import expand_home
from pipeline.ground.settings import DEFAULT_CACHE_ROOT
from pipeline.ground.store.parquet import write_bytes_atomic

log = logging.getLogger(__name__)

#: Default folder (absolute: generated data lives in the cache, not in the read-only data root).
DEFAULT_DIR = str(DEFAULT_CACHE_ROOT / "demo-data")
MARKER = ".demo-complete.json"
GENERATOR_VERSION = 1  # bump when the drawing or tag rules change, so old folders are regenerated

LABELS = ("sky", "sea", "tree", "sun", "night", "animal", "building", "person")
_POPULARITY = np.array([0.22, 0.12, 0.14, 0.09, 0.09, 0.11, 0.13, 0.10])  # label draw weights
_SYNONYMS = {
    "sky": ("sky", "clouds", "blue", "heaven", "skyline"),
    "sea": ("sea", "ocean", "water", "beach", "waves", "blue"),
    "tree": ("tree", "forest", "green", "nature", "leaves"),
    "sun": ("sun", "sunny", "sunshine", "summer", "light"),
    "night": ("night", "dark", "evening", "stars", "moon"),
    "animal": ("animal", "dog", "cat", "pet", "wildlife", "nature"),
    "building": ("building", "city", "architecture", "urban", "house"),
    "person": ("person", "people", "portrait", "me", "friends", "family"),
}
_NOISE_TAGS = ("nikon", "canon", "2008", "explore", "flickr", "photo", "travel", "vacation", "art", "color",
               "holiday", "square", "iphone", "d80", "film", "light")
_P_UNDRAWN = 0.10  # a present label's element is left out of the image
_P_DECOY = 0.03  # an absent label's element is drawn anyway (per absent label)
_P_UNTAGGED = 0.15  # a present label gets no tag
_P_WRONG_TAG = 0.08  # one tag from an absent label is added
_PIXEL_NOISE = 12.0  # std of the Gaussian pixel noise, in 0..255 units


@register_dataset("demo", aliases=("synthetic", "toy"), default_dir=DEFAULT_DIR, default_root="cache")
def demo(
    data_dir: Path,
    *,
    seed: int = 0,
    n_items: int = 600,
    size: int = 96,
    image_format: str = "jpg",
) -> ItemTable:
    """A synthetic multi-label image–tag set (600 items, 8 labels) drawn with PIL; generated, no download.

    Options: ``seed``, ``n_items``, ``size`` (image side in pixels, 32..512), ``image_format``
    (``jpg`` or ``png``). ``data_dir`` is created when missing; generation is skipped when it already
    holds a complete set made with the same options.
    """
    if n_items < 10:
        raise ConfigError(f"demo option n_items={n_items}: use at least 10 items")
    if not 32 <= size <= 512:
        raise ConfigError(f"demo option size={size}: use an image side between 32 and 512 pixels")
    if image_format not in ("jpg", "png"):
        raise ConfigError(f"demo option image_format={image_format!r}: use 'jpg' or 'png'")
    root = expand_home(data_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"demo: {root} is a file; give DATA_DIR=<folder> for the generated images")
    params = {"version": GENERATOR_VERSION, "seed": int(seed), "n_items": int(n_items), "size": int(size),
              "image_format": image_format}
    if _marker_matches(root, params):
        log.info("demo: %s already holds the set for %s; not regenerating", root, params)
    else:
        generate(root, **{k: v for k, v in params.items() if k != "version"})
    table = read_pairs_file(root.resolve() / "pairs.jsonl", dataset="demo", text_kind="tags", label_names=list(LABELS))
    table.notes.append(f"demo: generated with {params}")
    return table.validate()


def _marker_matches(root: Path, params: dict) -> bool:
    marker = root / MARKER
    if not (marker.is_file() and (root / "pairs.jsonl").is_file()):
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")) == params
    except json.JSONDecodeError:
        return False


def generate(root: Path, *, seed: int, n_items: int, size: int, image_format: str) -> None:
    """Write ``images/``, ``pairs.jsonl``, ``labels.txt`` and, last, the marker file under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).unlink(missing_ok=True)  # an interrupted run must not look complete
    images = root / "images"
    images.mkdir(exist_ok=True)
    log.info("demo: generating %d items (seed %d, %d px) in %s", n_items, seed, size, root)
    lines = []
    names = set()
    for i in range(n_items):
        rng = np.random.default_rng([seed, i])
        present = _draw_labels(rng)
        pixels = _draw_image(rng, present, size)  # (size, size, 3) uint8
        tags = _draw_tags(rng, present)
        name = f"demo_{i:05d}.{image_format}"
        names.add(name)
        _save(Image.fromarray(pixels), images / name, image_format)
        lines.append(json.dumps({"id": i, "image": f"images/{name}", "text": tags,
                                 "labels": [LABELS[j] for j in present]}))
    for stale in images.glob("demo_*.*"):  # items of an earlier, larger or other-format set
        if stale.name not in names:
            stale.unlink()
    _write_text(root / "pairs.jsonl", "\n".join(lines) + "\n")
    _write_text(root / "labels.txt", "\n".join(LABELS) + "\n")
    params = {"version": GENERATOR_VERSION, "seed": seed, "n_items": n_items, "size": size,
              "image_format": image_format}
    _write_text(root / MARKER, json.dumps(params, sort_keys=True))


def _draw_labels(rng: np.random.Generator) -> list[int]:
    """1–4 distinct label indices, sorted; sun and night never together."""
    k = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.4, 0.25, 0.05]))
    weights = _POPULARITY.copy()
    chosen: list[int] = []
    for _ in range(k):
        j = int(rng.choice(len(LABELS), p=weights / weights.sum()))
        chosen.append(j)
        weights[j] = 0.0
        if LABELS[j] in ("sun", "night"):
            weights[LABELS.index("night" if LABELS[j] == "sun" else "sun")] = 0.0
    return sorted(chosen)


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int = 25) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)  # type: ignore[return-value]


def _draw_image(rng: np.random.Generator, present: list[int], s: int) -> np.ndarray:
    """A ``(s, s, 3)`` uint8 scene: one element per drawn label, distractors, pixel noise."""
    has = {LABELS[j] for j in range(len(LABELS)) if rng.random() < (1.0 - _P_UNDRAWN if j in present else _P_DECOY)}
    night = "night" in has
    bg = (25, 25, 55) if night else (200, 200, 195)
    img = Image.new("RGB", (s, s), _jitter(rng, bg, 20))
    d = ImageDraw.Draw(img)

    def u(lo: float, hi: float) -> int:  # a random coordinate in [lo, hi) of the side
        return int(s * rng.uniform(lo, hi))

    if "sky" in has:
        d.rectangle([0, 0, s, u(0.25, 0.4)], fill=_jitter(rng, (20, 30, 90) if night else (120, 180, 240)))
    if "sea" in has:
        top = u(0.65, 0.75)
        d.rectangle([0, top, s, s], fill=_jitter(rng, (20, 90, 140)))
        for y in range(top + 3, s, max(4, s // 16)):
            d.line([(0, y), (s, y + int(rng.integers(-2, 3)))], fill=_jitter(rng, (200, 230, 250)), width=1)
    if "sun" in has:
        cx, cy, r = u(0.6, 0.85), u(0.1, 0.3), u(0.07, 0.12)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_jitter(rng, (250, 210, 40)))
    if night:
        cx, cy, r = u(0.65, 0.85), u(0.1, 0.25), u(0.04, 0.07)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_jitter(rng, (235, 235, 210)))
        for _ in range(int(rng.integers(3, 9))):
            x, y = u(0.0, 1.0), u(0.0, 0.4)
            d.point((x, y), fill=(255, 255, 230))
    if "building" in has:
        x0, w, h = u(0.05, 0.45), u(0.15, 0.3), u(0.3, 0.55)
        d.rectangle([x0, s - h - u(0.0, 0.1), x0 + w, s], fill=_jitter(rng, (120, 120, 125)))
        for wy in range(s - h, s - 4, max(5, s // 12)):
            d.rectangle([x0 + 3, wy, x0 + 6, wy + 3], fill=(250, 240, 150) if night else (60, 70, 90))
    if "tree" in has:
        tx, ty, tw = u(0.1, 0.5), u(0.3, 0.5), u(0.12, 0.2)
        d.rectangle([tx - 2, ty + tw, tx + 2, ty + 2 * tw + 6], fill=_jitter(rng, (110, 70, 30)))
        d.polygon([(tx, ty - tw), (tx - tw, ty + tw), (tx + tw, ty + tw)], fill=_jitter(rng, (30, 140, 40)))
    if "animal" in has:
        ax, ay, aw = u(0.35, 0.7), u(0.6, 0.8), u(0.1, 0.16)
        d.ellipse([ax - aw, ay - aw // 2, ax + aw, ay + aw // 2], fill=_jitter(rng, (170, 100, 40)))
        d.ellipse([ax + aw - 3, ay - aw, ax + aw + aw // 2, ay - aw // 4], fill=_jitter(rng, (150, 85, 35)))
    if "person" in has:
        px, py, ph = u(0.55, 0.85), u(0.45, 0.6), u(0.2, 0.3)
        hr = max(2, ph // 5)
        d.ellipse([px - hr, py - hr, px + hr, py + hr], fill=_jitter(rng, (240, 190, 160)))
        d.line([(px, py + hr), (px, py + ph)], fill=_jitter(rng, (200, 40, 60)), width=max(2, s // 32))
        d.line([(px - hr * 2, py + ph // 3), (px + hr * 2, py + ph // 3)], fill=_jitter(rng, (200, 40, 60)), width=2)
    for _ in range(int(rng.integers(0, 3))):  # distractors: random small shapes in random colours
        x, y, r = u(0.0, 1.0), u(0.0, 1.0), u(0.03, 0.08)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x - r, y - r, x + r, y + r], fill=colour)
    pixels = np.asarray(img, dtype=np.float32) + rng.normal(0.0, _PIXEL_NOISE, (s, s, 3))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _draw_tags(rng: np.random.Generator, present: list[int]) -> list[str]:
    """Tags: 1–3 synonyms per present label (some labels untagged), noise tags, rarely a wrong tag."""
    tags: list[str] = []
    for j in present:
        if rng.random() < _P_UNTAGGED:
            continue
        words = _SYNONYMS[LABELS[j]]
        for w in rng.choice(len(words), size=int(rng.integers(1, 4)), replace=False):
            tags.append(words[int(w)])
    for w in rng.choice(len(_NOISE_TAGS), size=min(int(rng.poisson(1.0)), 4), replace=False):
        tags.append(_NOISE_TAGS[int(w)])
    absent = [j for j in range(len(LABELS)) if j not in present]
    if absent and rng.random() < _P_WRONG_TAG:
        words = _SYNONYMS[LABELS[int(rng.choice(absent))]]
        tags.append(words[int(rng.integers(len(words)))])
    if not tags:  # never an empty text: fall back to one noise tag, like an untagged Flickr upload's camera tag
        tags.append(_NOISE_TAGS[int(rng.integers(len(_NOISE_TAGS)))])
    return list(dict.fromkeys(tags))  # unique, first-seen order


def _save(img: Image.Image, path: Path, image_format: str) -> None:
    """The image written atomically (a failed write leaves neither a half file nor a .partial one)."""
    buf = io.BytesIO()
    if image_format == "jpg":
        img.save(buf, format="JPEG", quality=92)
    else:
        img.save(buf, format="PNG", optimize=False)
    write_bytes_atomic(buf.getvalue(), path)


def _write_text(path: Path, text: str) -> None:
    write_bytes_atomic(text.encode("utf-8"), path)
